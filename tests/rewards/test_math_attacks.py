"""math attacked as a policy would: near misses of tiny magnitude, unevaluated spellings of the gold, percent
spellings, hedged boxes; and the multi-element golds a correct answer gives as several boxes."""

from __future__ import annotations

import pytest

from rewards import get_verifier

math_v = get_verifier("math")


@pytest.mark.parametrize("completion, gold, status", [
    # near misses Math-Verify's 6-decimal rounding accepted
    ("\\boxed{\\frac{1}{2004!}}", "\\frac{1}{2006!}", "wrong"),
    ("\\boxed{0.0000002}", "0.0000001", "wrong"),
    ("\\boxed{2 \\times 10^{-7}}", "1 \\times 10^{-7}", "wrong"),
    ("\\boxed{1.00001}", "1", "wrong"),  # 1e-5 relative: outside the tolerance
    ("\\boxed{\\frac{1}{2006!}}", "\\frac{1}{2006!}", "ok"),
    ("\\boxed{0.3333333}", "\\frac{1}{3}", "ok"),  # within the relative tolerance
    ("\\boxed{\\frac{1}{3}}", "0.333333", "ok"),
    # unevaluated spellings of a numeric gold: refused whatever the operator
    ("\\boxed{\\frac{10}{2}}", "5", "wrong"),
    ("\\boxed{\\sqrt{25}}", "5", "wrong"),
    ("\\boxed{5!/4!}", "5", "wrong"),
    ("\\boxed{3!}", "6", "wrong"),
    ("\\boxed{2^3}", "8", "wrong"),
    ("\\boxed{10/2}", "5", "wrong"),
    ("\\boxed{4+1}", "5", "wrong"),
    ("\\boxed{\\dfrac{10}{2}}", "5", "wrong"),
    # literals of a numeric gold still pass
    ("\\boxed{5}", "5", "ok"),
    ("\\boxed{5.0}", "5", "ok"),
    ("\\boxed{\\frac{1}{2}}", "0.5", "ok"),
    ("\\boxed{-\\dfrac{3}{4}}", "-0.75", "ok"),
    ("x = -3", "-3", "ok"),
    ("\\boxed{\\$5}", "5", "ok"),
    ("\\boxed{12 \\text{ apples}}", "12", "ok"),
    # percent, every spelling
    ("\\boxed{3\\%}", "3", "wrong"),
    ("Answer: 3 percent", "3", "wrong"),
    ("Answer: 3 per cent", "3", "wrong"),
    ("Answer: 3 pct", "3", "wrong"),
    ("\\boxed{3\\%}", "3\\%", "ok"),
    # several boxes: a set answer for a multi-element gold, a hedge otherwise
    ("\\boxed{1}, \\boxed{2}", "\\{1,2\\}", "ok"),
    ("\\boxed{2} and \\boxed{1}", "1,2", "ok"),
    ("\\boxed{1}, \\boxed{3}", "\\{1,2\\}", "wrong"),
    ("\\boxed{1}, \\boxed{2}, \\boxed{3}", "1,2", "wrong"),  # a third candidate is hedging
    ("\\boxed{5} or \\boxed{6}", "5", "wrong"),
    ("<think>\\boxed{1}</think>\\boxed{2}", "1,2", "wrong"),  # the reasoning's box never counts
])
def test_math_attacks(completion, gold, status):
    v = math_v(completion, gold)
    assert v.status == status, v

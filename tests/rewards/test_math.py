"""math: Math-Verify equivalence plus our policy; each leniency pinned; bounded time from any thread."""

from __future__ import annotations

import threading

import pytest

from rewards import get_verifier

math_v = get_verifier("math")


@pytest.mark.parametrize(
    "completion, gold, status",
    [
        ("\\boxed{\\frac{1}{2}}", "0.5", "ok"),
        ("The answer is \\boxed{x^2+2x+1}", "(x+1)^2", "ok"),
        ("Answer: 12", "12", "ok"),
        ("x = -3", "-3", "ok"),
        ("<think>maybe \\boxed{5}</think> so \\boxed{6}", "5", "wrong"),  # boxes in reasoning never count
        ("<think>\\boxed{5}", "5", "unparseable"),  # reasoning never closed
        ("\\boxed{5} or \\boxed{6}", "5", "wrong"),  # candidate listing
        ("\\boxed{3\\%}", "3", "wrong"),  # pinned: percent refused (Math-Verify accepts)
        ("\\boxed{3\\%}", "3\\%", "ok"),
        ("\\boxed{2+3}", "5", "wrong"),  # pinned: unevaluated expression refused (Math-Verify accepts)
        ("\\boxed{(2,1)}", "(1,2)", "wrong"),  # pinned: tuples are ordered
        ("\\boxed{2,1}", "1,2", "ok"),  # pinned: plain comma lists are solution sets
        ("\\boxed{\\pm 2}", "2,-2", "ok"),  # pinned: \pm expands to both signs
        ("", "1", "unparseable"),
        ("\\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}", "1", "wrong"),  # deeply nested braces
        ("x" * 1_000_000, "1", "wrong"),  # megabytes
        ("\\boxed{\ud800\x00}", "7", "wrong"),  # lone surrogate + NUL: no crash
        ("\\boxed{7}\ud800\x00", "7", "ok"),
    ],
)
def test_math_table(completion, gold, status):
    v = math_v(completion, gold)
    assert v.status == status, v


@pytest.mark.parametrize("completion, gold", [("\\boxed{9^{9^{9^{9}}}}", "\\frac{1}{2}"), ("\\boxed{9^{9^{9^{9}}}}", "y")])
def test_pathological_expression_is_bounded_even_in_a_thread(completion, gold):
    out = {}

    def worker() -> None:
        out["v"] = math_v(completion, gold)

    th = threading.Thread(target=worker)
    th.start()
    th.join(timeout=10)
    assert not th.is_alive()
    assert out["v"].status in ("wrong", "timeout") and out["v"].score == 0.0


def test_hung_worker_is_killed_and_replaced():
    from rewards.pool import VerifierPool

    pool = VerifierPool(workers=1)
    try:
        res = pool.map("tests/rewards/plugins/slow_check.py:hang", [("a", "b", {}), ("a", "b", {})], timeout=0.5)
        assert [r.status for r in res] == ["timeout", "timeout"]
        assert pool.restarts == 2
        assert pool.map("exact", [("1", "1", {})], timeout=5)[0].status == "ok"  # the replacement works
    finally:
        pool.close()

"""``math`` — LaTeX / expression equivalence on Math-Verify, with our policy on top.

Policy (each point pinned by a test in ``tests/rewards/test_math.py`` / ``test_math_attacks.py``):
- Only the answer after the reasoning is graded; the final answer is the last ``\\boxed{}``, else the last
  ``Answer:`` line, else the whole answer text. Boxes inside ``<think>`` never count (Math-Verify alone would merge
  them with the answer's). Several distinct boxes = candidate listing = 0 — except for a gold with several elements
  (``{1,2}``, ``1,2``): one box per element, compared as a set (``\\boxed{1}, \\boxed{2}``).
- Math-Verify leniencies we refuse:
  - percent: a ``%`` / ``\\%`` / ``percent`` / ``per cent`` / ``pct`` the gold does not have (Math-Verify accepts
    ``3\\%`` for 3);
  - unevaluated answers for a plain-number gold: the prediction must be a number *literal* — an integer, a decimal
    (optionally with an exponent), or a fraction in lowest terms (``\\frac{1}{2}``, ``1/2``), with an optional
    ``x =`` in front, ``$`` signs and a trailing unit in ``\\text{}``. ``2+3``, ``\\frac{10}{2}``, ``\\sqrt{25}``,
    ``5!/4!``, ``3!``, ``2^3`` are all refused, whatever the spelling: a whitelist, not a list of operators;
  - near misses: Math-Verify rounds to 6 decimals, so ``1/2004!`` equalled ``1/2006!`` and ``2e-7`` equalled
    ``1e-7``. When gold and prediction are both numbers, they must also agree to a relative tolerance of
    ``REL_TOL`` (exact for two rationals).
- Leniencies we keep: tuples compare in order (Math-Verify already does), plain comma lists compare as sets (solution
  sets: ``1,2`` = ``2,1``), ``\\pm 2`` equals ``2,-2``.
- Time: registered ``runs="pool"``: every call runs in a killable worker process (``rewards.pool``), never in the
  caller's thread — Math-Verify's own ``signal.alarm`` timeout only works in a main thread, and huge powers ignore
  signals. Budget ``TIMEOUT_S`` (the registration's), or the caller's.
- Answers over ``MAX_MATH_CHARS`` are not parsed (wrong).

Source of the equivalence itself: Hugging Face Math-Verify (``math_verify.parse`` / ``verify``).

>>> from rewards import get_verifier
>>> get_verifier("math")("<think>\\\\boxed{4}?</think> The answer is \\\\boxed{\\\\frac{1}{2}}", "0.5").status
'ok'
"""

from __future__ import annotations

import functools
import re
from math import gcd
from typing import Any

from rewards.parsing import clean_text, extract_final
from rewards.registry import register_verifier
from rewards.types import Verdict, ok, wrong

TIMEOUT_S = 1.5  # hard wall-clock kill of the worker; Math-Verify's own parse/verify timeouts are 1 s each
MAX_MATH_CHARS = 1000
REL_TOL = 5e-6  # agreement to about six significant figures, the precision Math-Verify rounds decimals to
_NUMBER = re.compile(r"^\s*[-+]?\s*(\d+(\.\d*)?|\.\d+)\s*$")
_PERCENT = re.compile(r"%|\bper\s*cent\b|\bpct\b", re.I)
# A number literal: integer / decimal (optional exponent), or a fraction of two integers (lowest terms checked apart)
_LITERAL = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")
_FRACTION = re.compile(r"^([-+]?)(?:\\[dt]?frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))$")
_DECOR = re.compile(r"^(?:[A-Za-z]\w*\s*=\s*)|\\?\$|\\[,!;: ]|\\left|\\right|\s+|\\text\{[^{}]*\}$|\.$")


def is_number_literal(pred: str) -> bool:
    r"""Whether ``pred`` (minus ``x =``, ``$``, spacing commands and a trailing ``\text{unit}``) is a number written
    out: an integer, a decimal, or a fraction of integers in lowest terms.

    >>> [is_number_literal(s) for s in ("5", "x = -3", r"\frac{1}{2}", r"\frac{10}{2}", r"\sqrt{25}", "3!", "2+3")]
    [True, True, True, False, False, False, False]
    """
    text = pred
    for _ in range(4):  # decorations may nest (``x = $5$``)
        text = _DECOR.sub("", text)
    if _LITERAL.match(text):
        return True
    m = _FRACTION.match(text)
    if not m:
        return False
    num, den = (int(m.group(2)), int(m.group(3))) if m.group(2) else (int(m.group(4)), int(m.group(5)))
    return den > 1 and gcd(num, den) == 1


def _elements(gold: str) -> int:
    """Top-level comma-separated elements of a gold answer (set braces stripped)."""
    text = gold.strip()
    if text.startswith("\\{") and text.endswith("\\}"):
        text = text[2:-2]
    elif text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    depth, n = 0, 1
    for c in text:
        depth += c in "([{"
        depth -= c in ")]}"
        n += c == "," and depth == 0
    return n


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> Any:
    # A GRPO group grades num_generations completions against one gold: parse it once per worker.
    from math_verify import parse

    return parse(f"${gold}$", parsing_timeout=1)


def compare(gold: str, pred: str) -> bool:
    """Math-Verify equivalence of two answer strings (call only where a hang can be killed)."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    pred_parsed = parse(f"${pred}$", parsing_timeout=1)
    if not gold_parsed or not pred_parsed:
        return False
    if not verify(gold_parsed, pred_parsed, timeout_seconds=1):
        return False
    return _numbers_agree(gold_parsed[0], pred_parsed[0])


def _numbers_agree(gold: Any, pred: Any) -> bool:
    """Math-Verify compares numbers rounded to 6 decimals; two numbers must also agree to ``REL_TOL`` (two rationals
    exactly). Anything that is not a plain number (sets, expressions with symbols) keeps Math-Verify's verdict."""
    import sympy

    if not (isinstance(gold, sympy.Basic) and isinstance(pred, sympy.Basic) and gold.is_number and pred.is_number):
        return True
    try:
        if gold.is_Rational and pred.is_Rational:
            return bool(gold == pred)
        g, p = sympy.N(gold, 30), sympy.N(pred, 30)
        return bool(abs(g - p) <= REL_TOL * max(abs(g), abs(p)))
    except (TypeError, ValueError, ArithmeticError):
        return True


@register_verifier("math", runs="pool", timeout_s=TIMEOUT_S)
def verify(completion: str, answer: str, **row: Any) -> Verdict:
    """Score 1 when the final answer is mathematically equivalent to the gold answer, under our policy."""
    gold = clean_text(str(answer)).strip()
    pred = extract_final(completion)
    if isinstance(pred, Verdict):
        boxes = (pred.info or {}).get("candidates_all")
        if not boxes or len(boxes) != _elements(gold) or len(boxes) < 2:
            return pred
        pred = ",".join(boxes)  # one box per element of a multi-element gold: compared as a set
    if len(pred) > MAX_MATH_CHARS:
        return wrong({"reason": "answer expression too long", "chars": len(pred)})
    if _PERCENT.search(pred) and not _PERCENT.search(gold):
        return wrong({"reason": "percent not in gold", "parsed": pred[:200]})
    if _NUMBER.match(gold) and not is_number_literal(pred):
        return wrong({"reason": "not a number literal for a numeric answer (unevaluated?)", "parsed": pred[:200]})
    return ok({"parsed": pred[:200]}) if compare(gold, pred) else wrong({"parsed": pred[:200]})

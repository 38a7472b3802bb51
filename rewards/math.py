"""``math`` — LaTeX / expression equivalence on Math-Verify, with our policy on top.

Policy (each point pinned by a test in ``tests/rewards/test_math.py``):
- Only the answer after the reasoning is graded; the final answer is the last ``\\boxed{}``, else the last
  ``Answer:`` line, else the whole answer text. Boxes inside ``<think>`` never count (Math-Verify alone would merge
  them with the answer's). Several distinct boxes = candidate listing = 0.
- Math-Verify leniencies we refuse: a percent sign the gold does not have (Math-Verify accepts ``3\\%`` for 3); an
  unevaluated expression for a plain-number gold (it accepts ``2+3`` for 5).
- Leniencies we keep: tuples compare in order (Math-Verify already does), plain comma lists compare as sets (solution
  sets: ``1,2`` = ``2,1``), ``\\pm 2`` equals ``2,-2``.
- Time: Math-Verify runs in a killable worker process (``rewards.pool``), never in the caller's thread: its own
  ``signal.alarm`` timeout only works in a main thread, and huge powers ignore signals. Budget ``TIMEOUT_S``.
- Answers over ``MAX_MATH_CHARS`` are not parsed (wrong).

Source of the equivalence itself: Hugging Face Math-Verify (``math_verify.parse`` / ``verify``).

>>> from rewards import get_verifier
>>> get_verifier("math")("<think>\\\\boxed{4}?</think> The answer is \\\\boxed{\\\\frac{1}{2}}", "0.5").status
'ok'
"""

from __future__ import annotations

import functools
import re
from typing import Any

from rewards.parsing import clean_text, extract_final
from rewards.registry import register_verifier
from rewards.types import Verdict, ok, wrong

TIMEOUT_S = 1.5  # hard wall-clock kill of the worker; Math-Verify's own parse/verify timeouts are 1 s each
MAX_MATH_CHARS = 1000
_NUMBER = re.compile(r"^\s*[-+]?\s*(\d+(\.\d*)?|\.\d+)\s*$")
_OPERATOR = re.compile(r"(?<=[\d}\)])\s*(\+|-|\*|/|\\times|\\cdot|\\div|\^)\s*(?=[\d\\(\{])")


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
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=1))


def _equivalent(gold: str, pred: str) -> Verdict:
    from rewards import pool

    if pool.IN_WORKER:  # already in a killable process's main thread
        return ok({"parsed": pred[:200]}) if compare(gold, pred) else wrong({"parsed": pred[:200]})
    return pool.shared_pool().map("rewards.math:equivalence", [(pred, gold, {})], timeout=TIMEOUT_S)[0]


def equivalence(completion: str, answer: str, **row: Any) -> Verdict:
    """Pool entry point: ``completion`` is the extracted prediction."""
    return ok({"parsed": completion[:200]}) if compare(answer, completion) else wrong({"parsed": completion[:200]})


@register_verifier("math")
def verify(completion: str, answer: str, **row: Any) -> Verdict:
    """Score 1 when the final answer is mathematically equivalent to the gold answer, under our policy."""
    pred = extract_final(completion)
    if isinstance(pred, Verdict):
        return pred
    if len(pred) > MAX_MATH_CHARS:
        return wrong({"reason": "answer expression too long", "chars": len(pred)})
    gold = clean_text(str(answer)).strip()
    if "%" in pred and "%" not in gold:
        return wrong({"reason": "percent sign not in gold", "parsed": pred[:200]})
    if _NUMBER.match(gold) and _OPERATOR.search(pred):
        return wrong({"reason": "unevaluated expression for a numeric answer", "parsed": pred[:200]})
    return _equivalent(gold, pred)

"""``overlong`` — soft over-long penalty (shaping, not correctness), as in DAPO (Yu et al., 2025, eq. 13).

Score 0 up to ``max_len - buffer`` characters-or-tokens, then falls linearly to -1 at ``max_len`` and stays there.
Lengths are measured in characters unless the row gives ``completion_length`` (tokens). Status is always ``ok``; use
it with a weight next to a correctness verifier.

>>> from rewards import get_verifier
>>> get_verifier("overlong")("x" * 90, "", max_len=100, buffer=20).score
-0.5
"""

from __future__ import annotations

from typing import Any

from rewards.registry import register_verifier
from rewards.types import Verdict


@register_verifier("overlong")
def verify(completion: str, answer: str = "", max_len: int = 512, buffer: int = 128,
           completion_length: int | None = None, **row: Any) -> Verdict:
    """Linear penalty in the last ``buffer`` units before ``max_len``."""
    if buffer <= 0 or max_len <= 0 or buffer > max_len:
        return Verdict(0.0, "error", {"reason": "overlong needs 0 < buffer <= max_len"})
    length = completion_length if completion_length is not None else len(completion)
    over = length - (max_len - buffer)
    score = 0.0 if over <= 0 else max(-1.0, -over / buffer)
    return Verdict(score, "ok", {"length": length})

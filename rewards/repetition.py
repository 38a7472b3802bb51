"""``repetition`` — n-gram repetition penalty (shaping), as in Yeo et al. (2025) "Demystifying Long CoT".

Score = -(1 - distinct n-grams / total n-grams) over whitespace tokens (characters if the text has few spaces),
so 0 for no repeated n-gram and close to -1 for a loop. Status is always ``ok``.

>>> from rewards import get_verifier
>>> get_verifier("repetition")("a b c d e f", "", n=2).score
0.0
>>> get_verifier("repetition")("go " * 50, "", n=2).score < -0.9
True
"""

from __future__ import annotations

from typing import Any

from rewards.registry import register_verifier
from rewards.types import Verdict

MAX_CHARS = 200_000


@register_verifier("repetition")
def verify(completion: str, answer: str = "", n: int = 3, **row: Any) -> Verdict:
    """Penalty proportional to the share of repeated n-grams."""
    text = completion[:MAX_CHARS]
    tokens: list[str] = text.split()
    if len(tokens) < max(4, len(text) // 20):  # few spaces (code, digits): use characters
        tokens = list(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return Verdict(0.0, "ok", {"ngrams": 0})
    score = len(set(grams)) / len(grams) - 1.0
    return Verdict(score, "ok", {"ngrams": len(grams)})

"""``exact`` — literal final answers for procedural tasks.

Policy: the final answer (last ``\\boxed{}``, else last ``Answer:`` line, else the whole text after the reasoning)
must equal the gold value after light normalisation only: surrounding and repeated whitespace, a leading ``+``,
the Unicode minus sign, and ``-0``. Nothing is evaluated: gold ``5`` against ``2+3`` scores 0. Several distinct
boxed answers are a candidate listing and score 0. Same spirit as nanochat ``tasks/gsm8k.py`` (exact compare of the
extracted number), without its float conversion.

>>> from rewards import get_verifier
>>> get_verifier("exact")("<think>3+4=7</think>7", "7").status
'ok'
>>> get_verifier("exact")("7 or 8", "7").status
'wrong'
"""

from __future__ import annotations

import re
from typing import Any

from rewards.parsing import clean_text, extract_final
from rewards.registry import register_verifier
from rewards.types import Verdict, ok, wrong


def normalize_literal(text: str) -> str:
    """Whitespace, sign and Unicode-minus normalisation; nothing else."""
    text = clean_text(text).replace("\u2212", "-")
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"^\+\s*", "", text)
    text = re.sub(r"^-\s+", "-", text)
    if re.fullmatch(r"-0+", text):
        text = "0"
    return text


@register_verifier("exact")
def verify(completion: str, answer: str, **row: Any) -> Verdict:
    """Score 1 when the final answer is literally the gold answer."""
    parsed = extract_final(completion)
    if isinstance(parsed, Verdict):
        return parsed
    got, gold = normalize_literal(parsed), normalize_literal(str(answer))
    info = {"parsed": got[:200]}
    return ok(info) if got == gold else wrong(info)

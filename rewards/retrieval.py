"""``retrieval`` — long-context needle answers by normalised exact match.

Policy: the final answer (text after the reasoning; last ``\\boxed{}`` or ``Answer:`` line if present) must equal the
gold needle after normalisation: NFKC, invisible characters removed, case folded, surrounding whitespace and
punctuation stripped, inner whitespace collapsed. Listing candidates (several boxes, or several lines / separators
each holding a candidate) scores 0; so does copying the context (an answer over ``max(4 x gold, 64)`` characters).
Same spirit as SQuAD exact match, without its article dropping.

>>> from rewards import get_verifier
>>> get_verifier("retrieval")("The code is: Blue-Falcon-7.", "blue-falcon-7").status
'wrong'
>>> get_verifier("retrieval")("Answer: Blue-Falcon-7", "blue-falcon-7").status
'ok'
"""

from __future__ import annotations

import re
import string
from typing import Any

from rewards.parsing import clean_text, extract_final
from rewards.registry import register_verifier
from rewards.types import Verdict, ok, wrong

_STRIP = string.whitespace + string.punctuation.replace("-", "").replace("_", "") + "\u201c\u201d\u2018\u2019"


def normalize(text: str) -> str:
    """Case-folded, whitespace-collapsed, edge punctuation stripped."""
    text = re.sub(r"\s+", " ", clean_text(text)).casefold()
    return text.strip(_STRIP)


@register_verifier("retrieval")
def verify(completion: str, answer: str, **row: Any) -> Verdict:
    """Score 1 when the answer is the needle itself."""
    gold = normalize(str(answer))
    pred = extract_final(completion, max_chars=max(4 * len(gold), 64) * 4)  # longer: the context was copied
    if isinstance(pred, Verdict):
        return pred
    got = normalize(pred)
    if len(got) > max(4 * len(gold), 64):
        return wrong({"reason": "answer is far longer than the needle (context copied?)"})
    info = {"parsed": got[:200]}
    return ok(info) if got == gold else wrong(info)

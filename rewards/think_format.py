"""``think_format`` — exactly one non-empty ``<think>…</think>`` block followed by a non-empty answer.

Policy: the completion must hold exactly one ``<think>`` and one ``</think>``, in that order, with non-blank reasoning
between them and a non-blank answer after. Chat templates that pre-fill ``<think>`` in the prompt (the completion then
starts inside the reasoning) are supported with ``prefilled=True`` — decided once per template with
:func:`template_prefills_think`, not guessed per sample. Format only: correctness is another verifier's job.
Model: TRL ``trl/rewards/format_rewards.py::think_format_reward``, made strict about counts and emptiness.
A row in non-thinking mode (its ``thinking`` column is false: the prompt already closed an empty think block) is
graded the other way: a non-empty answer with no think tag at all scores 1, any ``<think>``/``</think>`` scores 0.

>>> from rewards import get_verifier
>>> get_verifier("think_format")("<think>carry the 1</think>42", "").status
'ok'
>>> get_verifier("think_format")("<think></think>42", "").status
'wrong'
>>> get_verifier("think_format")("42", "", row={"thinking": False}).status
'ok'
"""

from __future__ import annotations

from typing import Any

from rewards.parsing import THINK_CLOSE, THINK_OPEN, clean_text, reasoning_split
from rewards.registry import register_verifier
from rewards.types import Verdict, ok, wrong


def template_prefills_think(chat_template_output: str) -> bool:
    """True if a rendered generation prompt ends inside an opened ``<think>`` (check once at start-up)."""
    tail = chat_template_output.rstrip()
    return tail.rfind(THINK_OPEN) > tail.rfind(THINK_CLOSE)


@register_verifier("think_format")
def verify(completion: str, answer: str = "", prefilled: bool = False, **row: Any) -> Verdict:
    """Score 1 for one non-empty reasoning block followed by a non-empty answer."""
    # Tags are found on the raw text by the parser every verifier shares (rewards.parsing.reasoning_split), so a
    # look-alike tag the answer extraction would not treat as a reasoning block is not one here either.
    if (row.get("row") or {}).get("thinking") is False:  # non-thinking mode: a direct answer, no reasoning block
        opens, closes, _, _ = reasoning_split(completion)
        if opens or closes:
            return wrong({"reason": "a think tag in a non-thinking answer"})
        return ok() if clean_text(completion).strip() else wrong({"reason": "empty answer"})
    text = THINK_OPEN + completion if prefilled else completion
    opens, closes, reasoning, answer = reasoning_split(text)
    if opens != 1 or closes != 1:
        return wrong({"reason": f"{opens} <think> and {closes} </think> tags; exactly one each required"})
    if reasoning is None:
        return wrong({"reason": "</think> before <think>"})
    if clean_text(text[: text.index(THINK_OPEN)]).strip():
        return wrong({"reason": "text before <think>"})
    if not clean_text(reasoning).strip():
        return wrong({"reason": "empty reasoning"})
    if not clean_text(answer or "").strip():
        return wrong({"reason": "empty answer after </think>"})
    return ok()

"""think_format: exactly one non-empty reasoning block, then a non-empty answer."""

from __future__ import annotations

import pytest

from rewards import get_verifier
from rewards.think_format import template_prefills_think

fmt = get_verifier("think_format")


@pytest.mark.parametrize(
    "completion, prefilled, status",
    [
        ("<think>carry the one</think>42", False, "ok"),
        ("<think></think>42", False, "wrong"),  # empty reasoning
        ("<think>  \n</think>42", False, "wrong"),
        ("<think>ok</think>   ", False, "wrong"),  # empty answer
        ("<think>a</think><think>b</think>42", False, "wrong"),  # two blocks
        ("42", False, "wrong"),  # no block
        ("</think>42<think>x", False, "wrong"),  # reversed
        ("hello <think>a</think>42", False, "wrong"),  # text before the block
        ("carry the one</think>42", True, "ok"),  # template pre-filled <think>
        ("<think>x</think>42", True, "wrong"),  # a second <think> after the pre-filled one
        ("<think>a\u200b</think>\u200b", False, "wrong"),  # zero-width chars are not content
        ("<think>" + "x" * 1_000_000 + "</think>1", False, "ok"),
    ],
)
def test_think_format_table(completion, prefilled, status):
    assert fmt(completion, "", prefilled=prefilled).status == status


def test_template_prefill_detection():
    assert template_prefills_think("<|assistant|><think>\n")
    assert not template_prefills_think("<|assistant|>")
    assert not template_prefills_think("<think>a</think><|assistant|>")


LOOKALIKES = [
    "\uff1cthink\uff1ecarry\uff1c/think\uff1e42",  # full-width brackets
    "<th\u200bink>carry</think>42",  # tag split by a zero-width space
    "<think>carry</th\u200cink>42",
    "<THINK>carry</THINK>42",
    "<think >carry</think >42",
    "\u003cthink\u003ecarry</think>\u200b",  # real tags, invisible answer
    "<think>\u00ad\u200b</think>42",  # invisible reasoning
    "<think>a</think><think>b</think>42",
    "</think>42<think>a",
]


@pytest.mark.parametrize("completion", LOOKALIKES)
def test_format_and_answer_extraction_agree_on_lookalikes(completion):
    """think_format accepts exactly when the shared parser sees one reasoning block and an answer after it."""
    from rewards.parsing import clean_text, reasoning_split

    opens, closes, reasoning, answer = reasoning_split(completion)
    shared_ok = (opens, closes) == (1, 1) and reasoning is not None and bool(clean_text(reasoning).strip()) \
        and bool(clean_text(answer or "").strip())
    assert fmt(completion, "").accepted == shared_ok
    assert not fmt(completion, "").accepted  # none of these is a well-formed block

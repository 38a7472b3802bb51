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

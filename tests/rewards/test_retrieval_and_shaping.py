"""retrieval (normalised exact match) and the shaping rewards."""

from __future__ import annotations

import pytest

from rewards import get_verifier

ret = get_verifier("retrieval")


@pytest.mark.parametrize(
    "completion, status",
    [
        ("Blue-Falcon-7", "ok"),
        ("  blue-falcon-7. ", "ok"),
        ("Answer: BLUE-FALCON-7", "ok"),
        ("<think>maybe red-fox-3</think>Blue-Falcon-7", "ok"),
        ("<think>Blue-Falcon-7</think>red-fox-3", "wrong"),  # the needle only in the reasoning
        ("Blue-Falcon-7 or Red-Fox-3", "wrong"),  # candidates
        ("Blue-Falcon-7\nRed-Fox-3", "wrong"),
        ("\\boxed{Blue-Falcon-7} \\boxed{Red-Fox-3}", "wrong"),
        ("The passage says many things. " * 200 + "Blue-Falcon-7", "wrong"),  # copying the context
        ("Blue\u200b-Falcon-7", "ok"),
        ("", "unparseable"),
    ],
)
def test_retrieval_table(completion, status):
    assert ret(completion, "Blue-Falcon-7").status == status


def test_overlong_penalty_is_linear_in_the_buffer():
    ov = get_verifier("overlong")
    assert ov("x" * 80, "", max_len=100, buffer=20).score == 0.0
    assert ov("x" * 90, "", max_len=100, buffer=20).score == pytest.approx(-0.5)
    assert ov("x" * 500, "", max_len=100, buffer=20).score == -1.0
    assert ov("x", "", max_len=100, buffer=20, completion_length=95).score == pytest.approx(-0.75)
    assert ov("x", "", max_len=10, buffer=20).status == "error"


def test_repetition_penalty():
    rep = get_verifier("repetition")
    assert rep("the quick brown fox jumps over the lazy dog", "").score == 0.0
    assert rep("again " * 100, "").score < -0.9
    assert -1.0 <= rep("ab" * 100_000, "").score <= 0.0

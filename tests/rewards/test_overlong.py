"""overlong: a linear penalty over the last ``buffer`` characters before ``max_len``."""

from __future__ import annotations

import pytest

from rewards import get_verifier


def test_overlong_penalty_is_linear_in_the_buffer():
    ov = get_verifier("overlong")
    assert ov("x" * 80, "", max_len=100, buffer=20).score == 0.0
    assert ov("x" * 90, "", max_len=100, buffer=20).score == pytest.approx(-0.5)
    assert ov("x" * 500, "", max_len=100, buffer=20).score == -1.0
    assert ov("x", "", max_len=100, buffer=20, completion_length=95).score == pytest.approx(-0.75)
    assert ov("x", "", max_len=10, buffer=20).status == "error"

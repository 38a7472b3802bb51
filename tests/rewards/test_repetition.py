"""repetition: a penalty for repeated n-grams, bounded in [-1, 0]."""

from __future__ import annotations

from rewards import get_verifier


def test_repetition_penalty():
    rep = get_verifier("repetition")
    assert rep("the quick brown fox jumps over the lazy dog", "").score == 0.0
    assert rep("again " * 100, "").score < -0.9
    assert -1.0 <= rep("ab" * 100_000, "").score <= 0.0

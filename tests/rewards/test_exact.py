"""exact: one row per failure mode."""

from __future__ import annotations

import pytest

from rewards import get_verifier

exact = get_verifier("exact")


@pytest.mark.parametrize(
    "completion, gold, status",
    [
        ("42", "42", "ok"),
        ("  42 \n", "42", "ok"),
        ("+42", "42", "ok"),
        ("\u221242", "-42", "ok"),  # Unicode minus
        ("-0", "0", "ok"),
        ("<think>6*7</think>42", "42", "ok"),
        ("<think>it is 42</think>41", "42", "wrong"),  # answer only inside the reasoning
        ("<think>42", "42", "unparseable"),  # reasoning never closed
        ("2+40", "42", "wrong"),  # unevaluated expression
        ("42 or 43", "42", "wrong"),  # candidate listing
        ("\\boxed{42} \\boxed{43}", "42", "wrong"),  # candidate listing in boxes
        ("\\boxed{42}", "42", "ok"),
        ("Answer: 42", "42", "ok"),
        ("", "42", "unparseable"),
        ("4\u200b2", "42", "ok"),  # zero-width space removed
        ("42\x00", "42", "ok"),  # NUL byte
        ("\ud800 42", "42", "wrong"),  # lone surrogate: no crash
        ("9" * 100_000, "42", "wrong"),  # huge output
        ("{" * 50_000, "42", "wrong"),
    ],
)
@pytest.mark.timeout(30)  # a hang guard for the pathological inputs, not a speed claim (bench/verifiers.py)
def test_exact_table(completion, gold, status):
    v = exact(completion, gold)
    assert v.status == status, v
    assert v.score == (1.0 if status == "ok" else 0.0)

"""Needle: the code word sits at the stated depth."""

from __future__ import annotations


def test_needle_sits_at_the_stated_depth():
    from data_recipes.needle import needle

    for row in needle("train", 30, seed=0, context_chars=200, depths=[0.05, 0.5, 0.95]):
        context = row["prompt"][0]["content"].split("\n")[0]
        at = row["meta"]["needle_char"]
        assert context[at:].startswith(f"the code word is {row['answer']} .")
        assert abs(at / len(context) - row["meta"]["depth"]) < 0.1


def test_digit_pass_keys_are_the_only_digits_and_splits_stay_disjoint():
    import pytest

    from data_recipes.needle import needle

    train = needle("train", 200, seed=0, context_chars=120, code="digits")
    held = needle("heldout", 200, seed=0, context_chars=120, code="digits")
    for row in train + held:
        context = row["prompt"][0]["content"]
        assert len(row["answer"]) == 5 and row["answer"].isdigit()
        assert "".join(c for c in context if c.isdigit()) == row["answer"]  # the filler holds no digit
    assert not {r["answer"] for r in train} & {r["answer"] for r in held}
    with pytest.raises(ValueError, match="50,000 distinct code words per split"):
        needle("train", 60_000, seed=0, code="digits")
    with pytest.raises(ValueError, match="code must be one of letters, digits"):
        needle("train", 1, seed=0, code="hex")

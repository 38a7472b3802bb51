"""Needle: the code word sits at the stated depth."""

from __future__ import annotations


def test_needle_sits_at_the_stated_depth():
    from data_recipes.needle import needle

    for row in needle("train", 30, seed=0, context_chars=200, depths=[0.05, 0.5, 0.95]):
        context = row["prompt"][0]["content"].split("\n")[0]
        at = row["meta"]["needle_char"]
        assert context[at:].startswith(f"the code word is {row['answer']} .")
        assert abs(at / len(context) - row["meta"]["depth"]) < 0.1

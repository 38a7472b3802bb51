"""Chain arithmetic: the running trace folds to the answer."""

from __future__ import annotations

import re


def test_chain_trace_folds_to_the_answer():
    from data_recipes.chain import chain

    for row in chain("train", 50, seed=0, style="trace"):
        content = row["messages"][-1]["content"]
        trace, answer = re.fullmatch(r"<think>(.+)</think>(-?\d+)", content).groups()
        assert answer == row["answer"] == trace.split(";")[-1]
        assert str(eval(row["prompt"][0]["content"].rstrip("="))) == answer  # noqa: S307 - digits and +/- only

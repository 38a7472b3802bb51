"""Arithmetic recipe: deterministic, disjoint splits, correct traces, the noisy teacher."""

from __future__ import annotations

import re

import pytest

from data_recipes.arithmetic import arithmetic, column_trace


def test_deterministic_by_seed():
    assert arithmetic("train", 50, seed=3) == arithmetic("train", 50, seed=3)
    assert arithmetic("train", 50, seed=3) != arithmetic("train", 50, seed=4)


def test_heldout_and_train_share_no_prompt():
    # 2-digit +/-: the space is small, so a large draw would collide if the splits were not disjoint
    train = arithmetic("train", 10000, seed=0, digits=2)
    held = arithmetic("heldout", 1000, seed=0, digits=2)
    t = {r["prompt"][0]["content"] for r in train}
    h = {r["prompt"][0]["content"] for r in held}
    assert len(t) == 10000 and len(h) == 1000 and not t & h


@pytest.mark.parametrize("a, op, b", [(47, "+", 85), (999, "+", 1), (85, "-", 47), (47, "-", 85), (100, "-", 1), (0, "-", 0)])
def test_trace_ends_in_the_answer(a, op, b):
    trace = column_trace(a, op, b)
    assert trace.endswith(f"={a + b if op == '+' else a - b}")


def test_trace_rows_carry_think_and_answer():
    for row in arithmetic("train", 20, seed=1, style="trace"):
        content = row["messages"][-1]["content"]
        m = re.fullmatch(r"<think>(.+)</think>(-?\d+)", content)
        assert m and m.group(2) == row["answer"] and row["verifier"] == "exact"


def test_noisy_teacher_drops_only_the_final_carry_of_training_demonstrations():
    import doctest

    import data_recipes.arithmetic as recipe

    assert doctest.testmod(recipe).failed == 0
    clean = arithmetic("train", 2000, 0, digits=3, ops=["+"], style="trace")
    noisy = arithmetic("train", 2000, 0, digits=3, ops=["+"], style="trace", teacher_drops_carry=0.7)
    assert [r["prompt"] for r in noisy] == [r["prompt"] for r in clean]  # same problems, same order
    assert [r["answer"] for r in noisy] == [r["answer"] for r in clean]  # the gold stays correct
    carry_out = [i for i, r in enumerate(clean) if len(r["answer"]) > 3]
    changed = [i for i, (a, b) in enumerate(zip(clean, noisy)) if a["messages"] != b["messages"]]
    assert set(changed) <= set(carry_out)  # only sums that carry out of the hundreds
    assert abs(len(changed) / len(carry_out) - 0.7) < 0.05
    for i in changed:
        a, b = (int(x) for x in re.findall(r"\d+", noisy[i]["prompt"][0]["content"]))
        trace, shown = recipe.dropped_carry_demo(a, b)
        assert noisy[i]["messages"][-1]["content"] == f"<think>{trace}</think>{shown}"
        assert shown == noisy[i]["answer"][1:] and shown != noisy[i]["answer"]
    # held-out rows are never corrupted; bad values are refused
    held = arithmetic("heldout", 300, 0, digits=3, ops=["+"], style="trace", teacher_drops_carry=1.0)
    assert all(r["messages"][-1]["content"].endswith("</think>" + r["answer"]) for r in held)
    with pytest.raises(ValueError, match="teacher_drops_carry"):
        arithmetic("train", 10, 0, teacher_drops_carry=1.5)

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


def test_a_context_range_mixes_lengths_and_a_fixed_length_keeps_its_rows():
    import pytest

    from data_recipes.needle import needle

    rows = needle("train", 200, seed=0, context_chars=[10, 40], style="trace")
    lengths = [len(r["prompt"][0]["content"].split("\n")[0]) for r in rows]
    # a context is the filler drawn to the length plus the needle sentence (about 24 characters)
    assert min(lengths) < 45 and max(lengths) > 65 and max(lengths) < 90
    for r in rows:  # the trace quotes the sentence that holds the needle
        assert r["messages"][-1]["content"] == f"<think>the code word is {r['answer']} .</think>{r['answer']}"
    assert needle("train", 5, seed=3, context_chars=[120, 120]) == needle("train", 5, seed=3, context_chars=120)
    with pytest.raises(ValueError, match=r"context_chars must be >= 10 .*\[40, 10\]"):
        needle("train", 1, seed=0, context_chars=[40, 10])
    with pytest.raises(ValueError, match=r"an integer or a range \[lo, hi\], got \[10, 20, 30\]"):
        needle("train", 1, seed=0, context_chars=[10, 20, 30])


def test_two_hop_training_rows_draw_lengths_and_depths_and_the_suite_shape_stays():
    import pytest

    from data_recipes.suites import two_hop

    rows = two_hop("train", 200, seed=0, context_chars=[100, 400], depths=None)
    lengths = [len(r["prompt"][0]["content"].split("\n")[0]) for r in rows]
    # the filler is drawn to the length, then the two passages (about 60 characters) are added
    assert min(lengths) < 200 and max(lengths) > 400
    orders = set()
    for r in rows:
        context, answer = r["prompt"][0]["content"], r["answer"]
        first = context.index(" keeps the ")
        second = context.index(f" opens the code word {answer} .")
        orders.add(first < second)
        name = context.rsplit("the key of ", 1)[1].removesuffix(" open?")
        colour = context[first:].split()[2]
        # the reference quotes both passages, the one that names the key's holder first, then answers
        assert r["messages"][-1]["content"] == (f"<think>{name} keeps the {colour} key . the {colour} key opens the code "
                                                f"word {answer} .</think>{answer}")
    assert orders == {True, False}  # random depths put either passage first
    # the suite's shape (one length, depths 0.2 / 0.8) draws the same rows whatever the training options allow
    assert two_hop("heldout", 5, seed=1) == two_hop("heldout", 5, seed=1, context_chars=[400, 400], depths=[0.2, 0.8])
    with pytest.raises(ValueError, match=r"two_hop: context_chars must be >= 20"):
        two_hop("train", 1, seed=0, context_chars=[10, 400])
    with pytest.raises(ValueError, match=r"two_hop: depths must be two fractions"):
        two_hop("train", 1, seed=0, depths=[0.5])

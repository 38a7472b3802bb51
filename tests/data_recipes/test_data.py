"""Arithmetic recipe: deterministic, disjoint splits, correct traces; local files: bad rows named by number."""

from __future__ import annotations

import json
import re

import pytest

from align.config import DataConfig, SourceConfig
from data_recipes import DataError, build_rows
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


def test_malformed_jsonl_row_is_refused_with_its_number(tmp_path):
    p = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "yo"}]}
    p.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    data = DataConfig(sources=(SourceConfig(path=str(p)),), n_train=2, n_heldout=0)
    with pytest.raises(DataError) as exc:
        build_rows(data, "train", 0, "sft")
    assert str(p) in str(exc.value) and "row 3 (line 4)" in str(exc.value) and "robot" in str(exc.value)
    p.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match="line 2, column 2: invalid JSON"):
        build_rows(data, "train", 0, "sft")


def test_jsonl_answers_stay_strings(tmp_path):
    # datasets would turn "007" into 7 and "1e3" into 1000.0 in a mixed column; we keep the text
    p = tmp_path / "g.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": a, "verifier": "exact"}
            for i, a in enumerate(["007", "1e3", "null", "5"] * 50)]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    data = DataConfig(sources=(SourceConfig(path=str(p)),), n_train=150, n_heldout=10, heldout_fraction=0.2)
    got = build_rows(data, "train", 0, "grpo")
    assert {r["answer"] for r in got} == {"007", "1e3", "null", "5"}
    held = build_rows(data, "heldout", 0, "grpo")
    assert not {r["prompt"][0]["content"] for r in got} & {r["prompt"][0]["content"] for r in held}


def test_mixture_weights_dedup_and_length_filter(tmp_path, caplog):
    p = tmp_path / "dup.jsonl"
    row = {"messages": [{"role": "user", "content": "same"}, {"role": "assistant", "content": "x"}]}
    p.write_text("\n".join(json.dumps(row) for _ in range(40)))
    data = DataConfig(
        sources=(SourceConfig(recipe="arithmetic", weight=3.0, kwargs={"digits": 2}), SourceConfig(path=str(p))),
        n_train=40, n_heldout=0, heldout_fraction=0.01,
    )
    with caplog.at_level("INFO"):
        rows = build_rows(data, "train", 0, "sft")
    assert len(rows) == 30 + 1  # 30 arithmetic rows, 10 identical file rows deduplicated to 1
    assert "9 exact duplicates dropped" in caplog.text
    short = DataConfig(sources=(SourceConfig(recipe="arithmetic", kwargs={"digits": 3}),), n_train=50, n_heldout=0, max_chars=10)
    with pytest.raises(DataError, match="empty"):
        build_rows(short, "train", 0, "sft")


def test_parquet_and_saved_datasets_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    for path in (tmp_path / "d.parquet", tmp_path / "ds"):
        data = DataConfig(sources=(SourceConfig(path=str(path)),), n_train=40, n_heldout=0, heldout_fraction=0.1)
        got = build_rows(data, "train", 0, "sft")
        assert 30 < len(got) <= 40 and all(r["messages"][1]["content"].startswith("a") for r in got)
    bad = [{"messages": [{"role": "user", "content": "x"}]}]  # no assistant turn
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="bad.parquet: row 1: the last message must be the assistant"):
        build_rows(DataConfig(sources=(SourceConfig(path=str(tmp_path / "bad.parquet")),), n_train=1, n_heldout=0),
                   "train", 0, "sft")


@pytest.mark.parametrize("recipe, kwargs", [("chain", {}), ("needle", {"context_chars": 60}), ("arithmetic", {"digits": 2})])
def test_procedural_recipes_are_deterministic_and_disjoint(recipe, kwargs):
    from data_recipes import resolve_recipe

    fn = resolve_recipe(recipe)
    train = fn("train", 800, seed=1, **kwargs)
    assert train == fn("train", 800, seed=1, **kwargs)
    held = fn("heldout", 80, seed=1, **kwargs)
    assert not {json.dumps(r["prompt"]) for r in train} & {json.dumps(r["prompt"]) for r in held}
    assert not {r["answer"] for r in held if recipe == "needle"} & {r["answer"] for r in train if recipe == "needle"}


def test_chain_trace_folds_to_the_answer():
    from data_recipes.chain import chain

    for row in chain("train", 50, seed=0, style="trace"):
        content = row["messages"][-1]["content"]
        trace, answer = re.fullmatch(r"<think>(.+)</think>(-?\d+)", content).groups()
        assert answer == row["answer"] == trace.split(";")[-1]
        assert str(eval(row["prompt"][0]["content"].rstrip("="))) == answer  # noqa: S307 - digits and +/- only


def test_needle_sits_at_the_stated_depth():
    from data_recipes.needle import needle

    for row in needle("train", 30, seed=0, context_chars=200, depths=[0.05, 0.5, 0.95]):
        context = row["prompt"][0]["content"].split("\n")[0]
        at = row["meta"]["needle_char"]
        assert context[at:].startswith(f"the code word is {row['answer']} .")
        assert abs(at / len(context) - row["meta"]["depth"]) < 0.1


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


def test_recipe_name_clash_from_another_module_is_refused():
    """Same function name, another module: refused like a verifier clash (identity = module + qualname)."""
    from data_recipes import register_recipe

    def make(module: str):
        def clash_recipe(split, n, seed):
            return []

        clash_recipe.__module__ = module
        return clash_recipe

    first = make("mod_a")
    register_recipe("test_clash")(first)
    register_recipe("test_clash")(first)  # the same object again: a no-op
    register_recipe("test_clash")(make("mod_a"))  # the same module + qualname (a re-import): a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_recipe("test_clash")(make("mod_b"))

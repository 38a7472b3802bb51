"""Mixtures and local files: weights, dedup, filters, file formats; bad rows named by number."""

from __future__ import annotations

import json

import pytest

from align.config import DataConfig, SourceConfig
from data_recipes import DataError, build_rows


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


def test_curriculum_phases_are_marked_and_trained_in_order_each_shuffled():
    import random

    from data_recipes.mixture import grouped_batch_order

    data = DataConfig(sources=(SourceConfig(recipe="needle", kwargs={"context_chars": 200}, phase=1),
                               SourceConfig(recipe="arithmetic", kwargs={"digits": 2}),
                               SourceConfig(recipe="needle", kwargs={"context_chars": [10, 40]})),
                      n_train=90, n_heldout=30)
    rows = build_rows(data, "train", 0, "sft")
    phases = [r.get("phase", 0) for r in rows]
    assert phases == [1] * 30 + [0] * 60  # marked, in the sources' order: the stage's sampler orders them
    order = grouped_batch_order([0] * 90, phases, 10, random.Random(0))
    assert [phases[i] for i in order] == [0] * 60 + [1] * 30  # phase 0's two sources first, then phase 1
    first = [rows[i].get("verifier") == "retrieval" for i in order[:60]]
    assert first != sorted(first) and first != sorted(first, reverse=True)  # phase 0's sources mixed, not in blocks
    assert order != grouped_batch_order([0] * 90, phases, 10, random.Random(1))  # each epoch its own shuffle
    held = build_rows(data, "heldout", 0, "sft")
    assert [r.get("phase", 0) for r in held] == [1] * 10 + [0] * 20  # held-out rows keep the sources' order


def test_batch_groups_fill_each_micro_batch_from_one_group_phases_in_order():
    import random

    from data_recipes.mixture import grouped_batch_order

    # 2 groups in phase 0 (10 and 7 rows), 2 in phase 1 (6 and 5 rows), batches of 4
    groups = [0] * 10 + [1] * 7 + [0] * 6 + [1] * 5
    phases = [0] * 17 + [1] * 11
    order = grouped_batch_order(groups, phases, 4, random.Random(0))
    assert sorted(order) == list(range(28))  # every row once
    chunks = [order[k : k + 4] for k in range(0, 28, 4)]
    kinds = [{groups[i] for i in c} for c in chunks]
    # phase 0: 2 + 1 one-group batches, its remainders (2 + 3 rows) one mixed batch and a row carried on
    assert sum(len(k) == 1 for k in kinds[:4]) == 3 and [max(phases[i] for i in c) for c in chunks[:4]] == [0] * 4
    # phase 1 with that row: 1 + 1 one-group batches, the remainders (2 + 1 + 1 carried) one mixed batch
    assert sum(phases[i] == 0 for c in chunks[4:] for i in c) == 1
    assert sum(len(k) == 1 for k in kinds) == 5
    assert order != grouped_batch_order(groups, phases, 4, random.Random(1))  # the order is the seed's
    # the batches of a phase come shuffled, not group after group
    many = grouped_batch_order([0] * 400 + [1] * 400, [0] * 800, 8, random.Random(0))
    firsts = [groups_of >= 400 for groups_of in many[::8]]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)

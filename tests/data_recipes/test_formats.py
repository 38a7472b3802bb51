"""Users' dataset shapes: each format, for each stage kind, becomes align's rows from a local file or folder with at
most a ``columns:`` mapping; malformed sources are refused naming file, row and column."""

from __future__ import annotations

import json

import pytest

from align.config import DataConfig, SourceConfig
from data_recipes import DataError, build_rows

N = 40


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _build(path, kind, **src):
    data = DataConfig(sources=(SourceConfig(path=str(path), **src),), n_train=N - 5, n_heldout=0, heldout_fraction=0.01)
    return build_rows(data, "train", 0, kind)


SFT_SHAPES = {
    "text": lambda i: {"text": f"The number {i} is even: {i % 2 == 0}."},
    "prompt_completion": lambda i: {"prompt": f"{i}+1=", "completion": str(i + 1)},
    "conversational": lambda i: {"prompt": [{"role": "system", "content": "Add."}, {"role": "user", "content": f"{i}+1="}],
                                 "completion": [{"role": "assistant", "content": str(i + 1)}]},
    "messages_multi_turn_tool": lambda i: {"messages": [
        {"role": "system", "content": "You can call a calculator."},
        {"role": "user", "content": f"{i}+1="},
        {"role": "assistant", "content": "calc(" + f"{i}+1)"},
        {"role": "tool", "content": str(i + 1)},
        {"role": "assistant", "content": str(i + 1)}]},
    "content_parts": lambda i: {"messages": [
        {"role": "user", "content": [{"type": "text", "text": f"{i}"}, {"type": "text", "text": "+1="}]},
        {"role": "assistant", "content": [{"type": "text", "text": str(i + 1)}]}]},
}


@pytest.mark.parametrize("shape", list(SFT_SHAPES))
def test_sft_shapes(tmp_path, shape):
    rows = _build(_jsonl(tmp_path / "d.jsonl", [SFT_SHAPES[shape](i) for i in range(N)]), "sft")
    assert len(rows) == N - 5
    last = rows[0]["messages"][-1]
    assert last["role"] == "assistant" and isinstance(last["content"], str) and last["content"]


def test_reasoning_content_becomes_the_think_block(tmp_path):
    src = [{"messages": [{"role": "user", "content": f"{i}+1="},
                         {"role": "assistant", "reasoning_content": f"{i} plus one", "content": str(i + 1)}]}
           for i in range(N)]
    rows = _build(_jsonl(tmp_path / "r.jsonl", src), "reasoning")
    assert rows[0]["messages"][-1]["content"] == "<think>0 plus one</think>1"


def test_grpo_open_r1_shape_with_mapping_numbers_and_dataset_verifier(tmp_path, caplog):
    src = [{"problem": f"What is {i}+1?", "solution": i + 1, "difficulty": i % 3} for i in range(N)]
    with caplog.at_level("INFO"):
        rows = _build(_jsonl(tmp_path / "r1.jsonl", src), "grpo", columns={"prompt": "problem", "answer": "solution"},
                      verifier="math")
    assert rows[0]["prompt"] == [{"role": "user", "content": "What is 0+1?"}]
    assert rows[0]["answer"] == "1" and rows[0]["verifier"] == "math" and rows[0]["difficulty"] == 0
    assert f"{N} numeric answers turned into their string form" in caplog.text


@pytest.mark.parametrize("fmt", ["csv", "json_array", "parquet", "datasetdict", "load_dataset_folder"])
def test_file_formats(tmp_path, fmt):
    src = [{"question": f"{i}+1=", "answer": str(i + 1)} for i in range(N)]
    if fmt == "csv":
        path = tmp_path / "d.csv"
        path.write_text("question,answer\n" + "".join(f"{r['question']},{r['answer']}\n" for r in src))
    elif fmt == "json_array":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(src))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(src), path)
    elif fmt == "datasetdict":
        from datasets import Dataset, DatasetDict

        path = tmp_path / "dd"
        DatasetDict({"train": Dataset.from_list(src[:5]), "validation": Dataset.from_list(src)}).save_to_disk(str(path))
    else:
        path = tmp_path / "hub_like"
        (path / "data").mkdir(parents=True)
        _jsonl(path / "data" / "train-00000-of-00002.jsonl", src[:20])
        _jsonl(path / "data" / "train-00001-of-00002.jsonl", src[20:])
        _jsonl(path / "data" / "test-00000-of-00001.jsonl", src[:3])
    kw = {"split": "validation"} if fmt == "datasetdict" else {}
    rows = _build(path, "grpo", columns={"prompt": "question"}, verifier="exact", **kw)
    assert len(rows) == N - 5 and rows[0]["prompt"][0]["content"] == "0+1=" and rows[0]["answer"] == "1"


@pytest.mark.parametrize("rows, src, needles", [
    ([{"problem": "1+1="}], {"columns": {"prompt": "problem", "answer": "solution"}},
     ["row 1 (line 1)", "column 'solution' (mapped to 'answer') is missing"]),
    ([{"prompt": [{"role": "user", "content": [{"type": "image", "url": "x"}]}], "answer": "1", "verifier": "exact"}],
     {}, ["row 1", "prompt[0].content[0] is a 'image' part"]),
    ([{"prompt": "1+1=", "answer": True, "verifier": "exact"}], {}, ["row 1", "'answer' is a boolean"]),
    ([{"prompt": "1+1=", "answer": "2"}], {}, ["row 1", "'verifier' must name a verifier"]),
])
def test_malformed_sources_are_refused(tmp_path, rows, src, needles):
    with pytest.raises(DataError) as info:
        _build(_jsonl(tmp_path / "bad.jsonl", rows * N), "grpo", **src)
    for needle in needles:
        assert needle in str(info.value)
    assert "bad.jsonl" in str(info.value)


def test_load_dataset_folder_without_the_split_names_what_it_found(tmp_path):
    (tmp_path / "f").mkdir()
    _jsonl(tmp_path / "f" / "test.jsonl", [{"prompt": "x", "answer": "1", "verifier": "exact"}])
    with pytest.raises(DataError, match="no files of split 'train'.*test.jsonl"):
        _build(tmp_path / "f", "grpo")


def test_system_prompt_starts_every_conversation_without_one(tmp_path):
    src = [{"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": f"{i}+1="},
                         {"role": "assistant", "content": str(i + 1)}]} if i % 2 else
           {"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(N)]
    data = DataConfig(sources=(SourceConfig(path=str(_jsonl(tmp_path / "s.jsonl", src))),), n_train=N - 5,
                      n_heldout=0, heldout_fraction=0.01)
    rows = build_rows(data, "train", 0, "sft", system_prompt="Answer with a number.")
    firsts = {r["messages"][0]["content"] for r in rows}
    assert firsts == {"own", "Answer with a number."}  # a row's own system turn is kept
    assert all(r["prompt"][0]["role"] == "system" for r in rows if "prompt" in r)

"""Every bad input is refused before any stage runs or any weights load, one line naming what and where.

Each case is a smoke config with an override, or a stage fed a malformed data file; ``validate_pipeline`` (what
``run_pipeline`` calls first) must raise with every needle in one of its lines. Two cases go through the CLI to check
the exit status, the one-line form and that no stage folder appeared.
"""

from __future__ import annotations

import json

import pytest

from align.config import ConfigError, load_config
from align.validate import ValidationError, validate_pipeline
from data_recipes import DataError
from tests.conftest import REPO, SMOKE, run_cli


def refused(tmp_path, overrides: list[str], only: str | None = None) -> str:
    """The error text of loading + validating the smoke config with ``overrides``."""
    with pytest.raises((ConfigError, DataError)) as info:
        cfg = load_config(SMOKE, [f"output_dir={tmp_path / 'run'}", *overrides])
        validate_pipeline(cfg, only)
    return str(info.value)


CONFIG_CASES = [
    (["stages.sft.trainer.learning_rate=.nan"], ["stages[0](sft).trainer.learning_rate", "finite"]),
    (["stages.sft.trainer.max_steps=-5"], ["max_steps", "not a step count"]),
    (["stages.sft.trainer.max_steps=1000000000000"], ["max_steps", "not a step count"]),
    (["stages.sft.trainer.max_steps=0"], ["max_steps", "must not be 0"]),
    (["model.router.top_k=9"], ["stages.sft.router.top_k", "9 experts per token", "has 8 routed experts"]),
    (["stages.grpo.trainer.num_generations=3"], ["stages.grpo.trainer.num_generations", "does not divide", "8"]),
    (["stages.grpo.trainer.num_generations=1"], ["num_generations", "at least 2"]),
    (["stages.grpo.verifiers=[{name: exactt}]"], ["stages.grpo.verifiers[0].name", "unknown verifier 'exactt'",
                                                  "Did you mean 'exact'"]),
    (["stages.grpo.verifiers=[{name: /nonexistent/v.py:fn}]"], ["stages.grpo.verifiers[0].name", "does not exist"]),
    (["stages.reasoning.traces={source: self, verifiers: [think_formatt]}"],
     ["stages.reasoning.traces.verifiers[0]", "think_formatt"]),
    (["stages.eval.suites=[{name: arithmetic, verifier: nope}]"], ["stages.eval.suites[0].verifier", "'nope'"]),
    (["stages.sft.data.n_train=100000000000"], ["stages[0].data.n_train", "must be in 1..10,000,000"]),
    (["stages.sft.data.sources=[{recipe: needle}]", "stages.sft.data.n_train=9000000"],
     ["stages.sft.data (train)", "distinct code words"]),
    (["stages.sft.data.sources=[{recipe: arithmetic, kwargs: {digits: 1}}]", "stages.sft.data.n_train=500"],
     ["stages.sft.data (train)", "problem space"]),
    (["stages.sft.data.sources=[{recipe: nosuchrecipe}]"], ["stages.sft.data (train)", "unknown data recipe"]),
    (["stages.sft.data.sources=[{path: /nonexistent/x.jsonl}]"], ["stages.sft.data", "/nonexistent/x.jsonl",
                                                                  "not found"]),
    (["stages.sft.trainer.lr_scheduler_type=cosinee"], ["stages.sft.trainer", "TRL SFTConfig refuses", "cosinee"]),
    (["stages.sft.trainer.max_length=3"], ["stages.sft.data", "every train row is longer than", "3 tokens"]),
    (["stages.grpo.trainer.max_completion_length=4000"], ["stages.grpo.data", "longer than the stage's limit"]),
    (["model.preset=tiny-nothing"], ["unknown model preset", "tiny-nothing"]),
    (['stages.sft.freeze=["*.moe.*"]'], ["stages.sft.freeze[0]", "'*.moe.*' matches no parameter",
                                         "preset tiny-deepseek-v4", "model.embed_tokens.weight"]),
    (['stages.eval.freeze=["*"]'], ["stages", "freeze: a stage of kind 'eval' trains nothing"]),
    (["stages.sft.data.sources=[{recipe: arithmetic, batch_size: 0}]"], ["batch_size: must be >= 1, got 0"]),
    (['stages.sft.freeze=["model.*", "lm_head.*"]'], ["stages.sft.freeze: matches every parameter",
                                                      "would train nothing"]),
    (['stages.sft.freeze=["*.mlp.*"]', "stages.sft.lora={r: 4}"], ["freeze: a LoRA stage trains only its adapters"]),
    (["model.path=/nonexistent/model"], ["model.path /nonexistent/model", "no config.json"]),
]


@pytest.mark.parametrize("overrides, needles", CONFIG_CASES, ids=[c[0][0][:40] for c in CONFIG_CASES])
def test_bad_config_refused_up_front(tmp_path, overrides, needles):
    text = refused(tmp_path, overrides)
    line = next((ln for ln in text.splitlines() if needles[0] in ln), text)
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert not (tmp_path / "run").exists()


def test_several_problems_are_all_reported(tmp_path):
    text = refused(tmp_path, ["model.router.top_k=9", "stages.grpo.trainer.num_generations=3"])
    assert len(text.splitlines()) >= 2 and "top_k" in text and "num_generations" in text


def test_yaml_integers_are_decimal(tmp_path):
    cfg = load_config(SMOKE, ["seed=010", f"output_dir={tmp_path}"])
    assert cfg.seed == 10  # YAML 1.1 reads 010 as octal 8
    p = tmp_path / "x.yaml"
    p.write_text(SMOKE.read_text().replace("seed: 0", "seed: 0o10"))
    assert load_config(p).seed == 8


def test_output_dir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ValidationError, match="exists and is not a directory"):
        validate_pipeline(load_config(SMOKE, [f"output_dir={f}"]))


# ------------------------------------------------------------------------------------------------ data files

SFT_ROW = {"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}
GRPO_ROW = {"prompt": [{"role": "user", "content": "1+1="}], "answer": "2", "verifier": "exact"}


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _rows(n, row):
    return [json.loads(json.dumps(row).replace("1+1=", f"{i}+1=")) for i in range(n)]


DATA_CASES = [
    ("sft", "empty.jsonl", b"", ["empty.jsonl", "the file is empty"]),
    ("sft", "blank.jsonl", b"\n\n  \n", ["blank.jsonl", "the file is empty"]),
    ("sft", "latin1.jsonl", _jsonl(_rows(3, SFT_ROW)) + b'{"messages": "caf\xe9"}\n',
     ["latin1.jsonl", "line 4, column 18", "not UTF-8", "0xe9"]),
    ("sft", "badjson.jsonl", _jsonl(_rows(2, SFT_ROW)) + b'{"messages": [}\n', ["badjson.jsonl", "line 3, column",
                                                                                "invalid JSON"]),
    ("sft", "surrogate.jsonl", _jsonl(_rows(2, SFT_ROW)).replace(b"1+1=", b"1+1=\\ud800", 1),
     ["surrogate.jsonl", "row 2 (line 2)", "lone surrogate"]),
    ("sft", "emptyanswer.jsonl", _jsonl(_rows(3, SFT_ROW)).replace(b'"content": "2"', b'"content": " "', 1),
     ["emptyanswer.jsonl", "row 1", "messages[1].content is empty"]),
    ("sft", "emptyprompt.jsonl", _jsonl(_rows(3, SFT_ROW)).replace(b'"content": "0+1="', b'"content": ""'),
     ["emptyprompt.jsonl", "row 1", "messages[0].content is empty"]),
    ("sft", "norole.jsonl", _jsonl([*_rows(2, SFT_ROW), {"messages": [{"content": "x"}]}]),
     ["norole.jsonl", "row 3 (line 3)", "role must be one of"]),
    ("grpo", "noanswer.jsonl", _jsonl([*_rows(2, GRPO_ROW), {"prompt": GRPO_ROW["prompt"], "verifier": "exact"}]),
     ["noanswer.jsonl", "row 3", "column 'answer' is missing"]),
    ("grpo", "emptyanswer.jsonl", _jsonl([*_rows(2, GRPO_ROW), {**GRPO_ROW, "answer": ""}]),
     ["emptyanswer.jsonl", "row 3", "'answer' is empty"]),
    ("grpo", "boolanswer.jsonl", _jsonl([*_rows(2, GRPO_ROW), {**GRPO_ROW, "answer": True}]),
     ["boolanswer.jsonl", "row 3", "'answer' is a boolean"]),
    ("grpo", "listanswer.jsonl", _jsonl([*_rows(2, GRPO_ROW), {**GRPO_ROW, "answer": [2]}]),
     ["listanswer.jsonl", "row 3", "'answer' must be a string, got list"]),
    ("grpo", "badverifier.jsonl", _jsonl([*_rows(60, GRPO_ROW), *[{**r, "verifier": "exactt"} for r in _rows(80, GRPO_ROW)[60:]]]),
     ["stages.grpo.data", "column 'verifier'", "unknown verifier 'exactt'"]),
    ("grpo", "corrupt.parquet", b"PAR1" + b"\x00" * 64 + b"PAR1", ["corrupt.parquet", "not a readable Parquet"]),
    ("grpo", "rows.txt", b"hello", ["rows.txt", "unsupported data file type"]),
]


def _data_overrides(tmp_path, kind: str, name: str, blob: bytes) -> list[str]:
    path = tmp_path / name
    path.write_bytes(blob)
    stage = {"sft": "sft", "grpo": "grpo"}[kind]
    return [f"stages.{stage}.data.sources=[{{path: {path}}}]", f"stages.{stage}.data.heldout_fraction=0.5"]


@pytest.mark.parametrize("kind, name, blob, needles", DATA_CASES, ids=[c[1] for c in DATA_CASES])
def test_bad_data_refused_with_file_and_row(tmp_path, kind, name, blob, needles):
    text = refused(tmp_path, _data_overrides(tmp_path, kind, name, blob))
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"


def test_bom_json_array_and_datasetdict_are_read(tmp_path):
    from datasets import Dataset, DatasetDict

    from data_recipes import read_file_rows

    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + _jsonl(_rows(4, SFT_ROW)))
    assert len(read_file_rows(bom)[0]) == 4
    arr = tmp_path / "rows.json"
    arr.write_text(json.dumps(_rows(5, SFT_ROW)))
    assert len(read_file_rows(arr)[0]) == 5
    DatasetDict({"train": Dataset.from_list(_rows(6, GRPO_ROW)), "test": Dataset.from_list(_rows(2, GRPO_ROW))}
                ).save_to_disk(str(tmp_path / "dd"))
    assert len(read_file_rows(tmp_path / "dd")[0]) == 6
    DatasetDict({"validation": Dataset.from_list(_rows(2, GRPO_ROW))}).save_to_disk(str(tmp_path / "dd2"))
    with pytest.raises(DataError, match="without a 'train' split.*validation"):
        read_file_rows(tmp_path / "dd2")


def test_overlong_rows_are_dropped_and_counted(tmp_path, caplog):
    """A 1 MB prompt in a GRPO file: validation counts it, the stage's row filter drops it (TRL would generate
    from it); the other rows survive."""
    from align.modeling import build_tokenizer
    from align.validate import fit_rows, token_limit

    rows = [*_rows(40, GRPO_ROW), {**GRPO_ROW, "prompt": [{"role": "user", "content": "7" * 1_000_000}]}]
    overrides = _data_overrides(tmp_path, "grpo", "long.jsonl", _jsonl(rows))
    cfg = load_config(SMOKE, [f"output_dir={tmp_path / 'run'}", *overrides])
    with caplog.at_level("WARNING"):
        summary = validate_pipeline(cfg, "grpo")
    assert summary["grpo"]["rows_over_limit"] == 1
    limit = token_limit("grpo", {"max_completion_length": 24}, 2048)
    kept = fit_rows(rows, build_tokenizer(), "grpo", limit, "stage 'grpo'")
    assert len(kept) == 40 and "1 of 41 rows are longer than 2024 tokens" in caplog.text


def test_cli_refuses_in_one_line_within_seconds(tmp_path):
    proc = run_cli(str(SMOKE), f"output_dir={tmp_path}", "stages.grpo.verifiers=[{name: exactt}]")
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "stages.grpo.verifiers[0].name" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "base").exists() and not (tmp_path / "00_sft").exists()  # nothing trained, nothing built
    # a verifier file with a syntax error: the file and line are named
    bad = tmp_path / "myverifier.py"
    bad.write_text("def score(completion, answer, **row):\n    return 1 if completion == answer else 0 +\n")
    proc = run_cli(str(SMOKE), f"output_dir={tmp_path}", f"stages.grpo.verifiers=[{{name: '{bad}:score'}}]",
                   "--dry-run")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"syntax error in {bad}, line 2" in proc.stderr


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for d in ("configs", "bench/configs")
                                         for p in (REPO / d).glob("*.yaml")))
def test_every_shipped_pipeline_config_passes_validation(tmp_path, path):
    # the configs the README and BENCHMARKS name: a stale key or an impossible data request fails here, not an hour in
    cfg = load_config(REPO / path, [f"output_dir={tmp_path / 'run'}"])
    validate_pipeline(cfg)

"""Reasoning stage: rejection-sampled traces keep only accepted completions; self-traces run end to end."""

from __future__ import annotations

import json

import pytest

from align.config import TracesConfig, load_config
from align.pipeline import run_pipeline
from stages import reasoning
from tests.conftest import SMOKE


def test_rejection_sampling_keeps_only_accepted(monkeypatch):
    rows = [
        {"prompt": [{"role": "user", "content": "1+1="}], "answer": "2", "verifier": "exact"},
        {"prompt": [{"role": "user", "content": "2+2="}], "answer": "4", "verifier": "exact"},
    ]
    samples = ["<think>1+1</think>2", "<think>x</think>3", "2", "<think></think>2",  # row 1: only the first passes
               "<think>2+2</think>4", "<think>2+2</think>4", "<think>a</think>5", "<think>b"]  # row 2: two pass
    monkeypatch.setattr(reasoning.evaluation, "generate", lambda *a, **k: samples)
    accepted, stats = reasoning.sample_accepted_traces(None, None, rows, TracesConfig(source="self", k=4))
    assert stats == {"sampled": 8, "accepted": 3, "acceptance_rate": 3 / 8}
    got = [(r["prompt"][0]["content"], r["messages"][-1]["content"]) for r in accepted]
    assert got == [("1+1=", "<think>1+1</think>2"), ("2+2=", "<think>2+2</think>4"), ("2+2=", "<think>2+2</think>4")]
    assert all(r["messages"][:-1] == r["prompt"] for r in accepted)


def test_self_traces_stage_runs(smoke_run, tmp_path):
    _, out, _ = smoke_run
    # accept any well-formed trace so a barely trained model yields some samples; the row verifier still applies
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "stages.reasoning.traces={source: self, k: 4, "
                              "max_prompts: 32, max_new_tokens: 24, verifiers: []}",
                              "stages.reasoning.trainer.max_steps=2",
                              f"stages.reasoning.data.sources=[{{recipe: '{__file__}:echo_rows'}}, "
                              "{recipe: arithmetic, kwargs: {digits: 2, ops: ['+']}, replay: true}]"])
    rows = run_pipeline(cfg, only="reasoning", init_from=out / "01_reasoning" / "final")
    m = json.loads((tmp_path / "01_reasoning" / "manifest.json").read_text())
    rs = m["metrics"]["rejection_sampling"]
    assert m["metrics"]["trace_source"] == "self" and rs["sampled"] == 128  # 32 prompts x 4, none of them replayed
    assert rs["accepted"] > 0 and rows[0]["steps"] == 2
    assert rs["replay_rows"] == 128  # the replay source's demonstrations are trained on as they are
    assert m["n_train"] == rs["accepted"] + rs["replay_rows"]


def echo_rows(split, n, seed):
    """Rows graded by a verifier that accepts any non-empty answer: the sampler always finds something."""
    return [{"messages": [{"role": "user", "content": f"{i}+0="}, {"role": "assistant", "content": str(i)}],
             "prompt": [{"role": "user", "content": f"{i}+0="}], "answer": str(i),
             "verifier": f"{__file__}:nonempty"} for i in range(n)]


def nonempty(completion, answer, **row):
    return 1.0 if completion.strip() else 0.0


@pytest.mark.parametrize("bad", ["{source: nope}", "{k: 0}", "{temperature: 0}"])
def test_traces_config_is_validated(bad):
    from align.config import ConfigError

    with pytest.raises(ConfigError, match="traces"):
        load_config(SMOKE, [f"stages.reasoning.traces={bad}"])

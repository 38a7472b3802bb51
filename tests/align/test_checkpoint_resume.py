"""Resume restores exactly what was saved: a resumed stage equals the uninterrupted one, step for step and weight for
weight, on the default DeepSeek-V4 preset, Qwen3-MoE and Mixtral (single process; ZeRO-3 is in
tests/align/test_distributed_zero3.py). Fails without ``checkpoint.load_checkpoint_weights``: the Trainer's own resume
matched no DeepSeek-V4 key and trained on from the input model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.config import load_config
from align.pipeline import run_pipeline
from tests.conftest import SMOKE


def _run(out: Path, preset: str) -> list[dict]:
    cfg = load_config(SMOKE, [f"output_dir={out}", f"model.preset={preset}", "stages.sft.trainer.max_steps=12",
                              "stages.sft.trainer.save_steps=4"])
    return run_pipeline(cfg, only="sft")


def _losses(stage: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in json.loads((stage / "log_history.json").read_text()) if "loss" in r]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "final/model.safetensors")), load_file(str(b / "final/model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run's"


def _mark_interrupted(stage: Path) -> None:
    m = json.loads((stage / "manifest.json").read_text())
    m["status"] = "running"
    (stage / "manifest.json").write_text(json.dumps(m))
    shutil.rmtree(stage / "final")


@pytest.mark.parametrize("preset", ["tiny-deepseek-v4", pytest.param("tiny-qwen3-moe", marks=pytest.mark.slow),
                                    pytest.param("tiny-mixtral", marks=pytest.mark.slow)])
def test_resume_equals_uninterrupted_run(tmp_path, preset):
    _run(tmp_path / "a", preset)
    _run(tmp_path / "b", preset)
    ref, stage = tmp_path / "a/00_sft", tmp_path / "b/00_sft"
    # killed after checkpoint-8 was complete: no final/, no checkpoint-12
    _mark_interrupted(stage)
    shutil.rmtree(stage / "checkpoint-12")
    (stage / "log_history.json").unlink()
    rows = _run(tmp_path / "b", preset)
    assert not rows[0]["skipped"] and rows[0]["steps"] == 12
    assert _losses(stage) == _losses(ref)
    _assert_same_weights(ref, stage)
    # killed while writing final/: the last checkpoint holds step 12, and resuming from it adds no step
    _mark_interrupted(stage)
    rows = _run(tmp_path / "b", preset)
    assert rows[0]["steps"] == 12
    _assert_same_weights(ref, stage)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from align.checkpoint import CheckpointError, load_checkpoint_weights
    from align.modeling import load_model

    _run(tmp_path / "q", "tiny-qwen3-moe")
    _run(tmp_path / "m", "tiny-mixtral")
    model, _ = load_model(tmp_path / "q/00_sft/final")
    with pytest.raises(CheckpointError, match=r"checkpoint-12 does not fit the model being trained \(Qwen3MoeForCausalLM"):
        load_checkpoint_weights(model, tmp_path / "m/00_sft/checkpoint-12")

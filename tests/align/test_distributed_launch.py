"""The smoke pipeline on 2 CPU processes (gloo) under DeepSpeed ZeRO-3 (DeepSeek-V4), ZeRO-2 (Qwen3-MoE) and plain DDP:
every stage completes, rank 0 alone writes, final/ is a whole (consolidated) model that training moved."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, SMOKE

pytestmark = pytest.mark.slow  # multi-process runs: the full tier only


@pytest.mark.timeout(600)
@pytest.mark.parametrize("launch,preset", [("zero3", "tiny-deepseek-v4"), ("zero2", "tiny-qwen3-moe"),
                                           ("ddp", "tiny-deepseek-v4")])
def test_smoke_pipeline_on_two_processes(tmp_path, launch, preset):
    from safetensors.torch import load_file

    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "configs" / "accelerate" / f"{launch}.yaml"), "--num_processes", "2",
         str(REPO / "run_pipeline.py"), str(SMOKE), f"output_dir={tmp_path}", f"model.preset={preset}"],
        cwd=REPO, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone prints and writes
    for stage in ("00_sft", "01_reasoning", "02_grpo", "03_eval"):
        m = json.loads((tmp_path / stage / "manifest.json").read_text())
        assert m["status"] == "completed", stage
    assert json.loads((tmp_path / "00_sft" / "manifest.json").read_text())["metrics"]["heldout_n"] == 32
    model_type = json.loads((tmp_path / "02_grpo" / "final" / "config.json").read_text())["model_type"]
    assert model_type == {"tiny-deepseek-v4": "deepseek_v4", "tiny-qwen3-moe": "qwen3_moe"}[preset]
    # final/ is a consolidated plain model: every tensor full-size, and training moved it
    base, final = load_file(tmp_path / "base" / "model.safetensors"), load_file(tmp_path / "02_grpo" / "final" / "model.safetensors")
    assert set(base) == set(final)
    assert all(base[k].shape == final[k].shape and final[k].numel() > 0 for k in base)
    assert any(not torch.equal(base[k], final[k]) for k in base if base[k].is_floating_point())

"""Router policy: a frozen router keeps its weights while the experts train."""

from __future__ import annotations

import pytest
import torch

from align.config import load_config
from align.pipeline import run_pipeline
from tests.conftest import SMOKE


@pytest.mark.parametrize("preset", ["tiny-deepseek-v4", "tiny-qwen3-moe"])
def test_frozen_router_stays_put_while_experts_train(tmp_path, preset):
    from transformers import AutoModelForCausalLM

    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "stages.sft.trainer.max_steps=4", f"model.preset={preset}",
                              "stages.sft.router={freeze: true, aux_loss_coef: 0.0}"])
    run_pipeline(cfg, only="sft")
    before = AutoModelForCausalLM.from_pretrained(tmp_path / "base").state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "00_sft" / "final").state_dict()
    gates = [k for k in before if k.endswith("mlp.gate.weight")]
    assert gates and all(torch.equal(before[k], after[k]) for k in gates)
    assert any(not torch.equal(before[k], after[k]) for k in before if "experts" in k)

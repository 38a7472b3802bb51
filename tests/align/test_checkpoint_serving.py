"""Every stage's ``final/`` is what an eval harness or inference server expects: batched, left-padded ``generate``
in plain transformers works, router logits are off, the cache is on, special-token ids are the input model's."""

from __future__ import annotations

import json

import pytest
import torch

from align.config import load_config
from align.pipeline import run_pipeline
from tests.conftest import SMOKE


def _check_final(final, base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((final / "config.json").read_text())
    assert config.get("output_router_logits", False) is False and config["use_cache"] is True
    base_config = json.loads((base / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert config.get(key) == base_config.get(key), key
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.padding_side == "left"
    model = AutoModelForCausalLM.from_pretrained(final)
    prompts = ["12+34=", "1+2+3+4+5+6+7+8+9="]  # different lengths: the short one is left-padded
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4) or out.shape[1] <= batch["input_ids"].shape[1] + 4


def test_default_preset_finals_serve(smoke_run):
    _, out, _ = smoke_run
    for stage in ("00_sft", "01_reasoning", "02_grpo"):
        _check_final(out / stage / "final", out / "base")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-qwen3-moe", "tiny-mixtral"])
def test_other_families_finals_serve(tmp_path, preset):
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", f"model.preset={preset}", "stages.sft.trainer.max_steps=4",
                              "stages.reasoning.trainer.max_steps=2", "stages.grpo.trainer.max_steps=2"])
    for stage in ("sft", "reasoning", "grpo"):
        run_pipeline(cfg, only=stage)
    for stage in ("00_sft", "01_reasoning", "02_grpo"):
        _check_final(tmp_path / stage / "final", tmp_path / "base")

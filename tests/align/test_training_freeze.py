"""Stage-level ``freeze``: the matched weights stay bit-identical through a stage while the rest trains."""

from __future__ import annotations

import pytest
import torch

from align.config import ConfigError, load_config
from align.pipeline import run_pipeline
from align.training import freeze_parameters
from tests.conftest import SMOKE


def test_frozen_experts_stay_put_while_attention_trains(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "stages.sft.trainer.max_steps=4",
                              'stages.sft.freeze=["*.mlp.*", "model.embed_tokens.weight"]'])
    run_pipeline(cfg, only="sft")
    before = AutoModelForCausalLM.from_pretrained(tmp_path / "base").state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "00_sft" / "final").state_dict()
    frozen = [k for k in before if ".mlp." in k or k == "model.embed_tokens.weight"]
    assert any("experts" in k for k in frozen) and any("mlp.gate" in k for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if "self_attn" in k)


def test_a_pattern_matching_nothing_names_the_key():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    assert freeze_parameters(model, ("0.*",), "stages.x.freeze") == (2, 6)
    assert not model[0].weight.requires_grad and model[1].weight.requires_grad
    with pytest.raises(ConfigError, match=r"stages\.x\.freeze\[1\]: '\*\.experts\.\*' matches no parameter"):
        freeze_parameters(model, ("1.*", "*.experts.*"), "stages.x.freeze")
    with pytest.raises(ConfigError, match="matches every parameter of the model; the stage would train nothing"):
        freeze_parameters(torch.nn.Linear(2, 2), ("*",), "stages.x.freeze")

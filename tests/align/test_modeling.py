"""Presets: DeepSeek-V4 hash table filled with distinct experts (it survives save/load), parameter counts, overrides."""

from __future__ import annotations

import pytest
import torch

from align import modeling, moe


def test_deepseek_v4_hash_routing_table_is_random_distinct_and_saved(tmp_path):
    base = modeling.build_base("tiny-deepseek-v4", {}, 0, tmp_path / "m")
    model, _ = modeling.load_model(base)
    tables = [m.tid2eid for m in model.modules() if isinstance(getattr(m, "tid2eid", None), torch.Tensor)]
    assert tables, "the preset has a hash-routed layer"
    for table in tables:  # transformers zero-initialises it: every token would go to expert 0 twice
        assert (table[:, 0] != table[:, 1]).all()
        assert len(torch.unique(table)) == model.config.n_routed_experts


def test_parameter_counts_and_moe_blocks(tmp_path):
    for preset in modeling.PRESETS:
        model, _ = modeling.load_model(modeling.build_base(preset, {}, 0, tmp_path / preset))
        total, active = moe.count_parameters(model)
        dense = preset.endswith("-dense")  # every routed expert active: the dense-FFN ablation baseline
        sparse_layers = 2 if preset == "tiny-deepseek-v3" else 3  # DeepSeek-V3 keeps its first layer dense
        assert 0 < active <= total and (active == total) == dense and len(moe.find_moe_blocks(model)) == sparse_layers
        assert hasattr(model.config, "num_experts")  # TRL's aux loss reads it


def test_overrides_go_through_the_constructor(tmp_path):
    model, _ = modeling.load_model(modeling.build_base("tiny-deepseek-v4", {"partial_rotary_factor": 0.25}, 0, tmp_path / "a"))
    assert model.config.qk_rope_head_dim == 8  # derived field follows the override
    with pytest.raises(KeyError, match="did you mean hidden_size"):
        modeling.build_base("tiny-deepseek-v4", {"hiden_size": 32}, 0, tmp_path / "b")


def test_the_wider_sliding_window_changes_nothing_below_the_old_one(tmp_path):
    # the preset's window went from 128 to 512 tokens so a needle 400 characters back can be copied; the default's
    # arithmetic rows (under 128 tokens) must see the same model as before, and a 400-token context a different one
    wide, _ = modeling.load_model(modeling.build_base("tiny-deepseek-v4", {}, 0, tmp_path / "wide"))
    narrow, _ = modeling.load_model(modeling.build_base("tiny-deepseek-v4", {"sliding_window": 128}, 0, tmp_path / "n"))
    assert wide.config.sliding_window == 512
    ids = torch.randint(10, 90, (2, 400), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(wide(input_ids=ids[:, :120]).logits, narrow(input_ids=ids[:, :120]).logits)
        assert not torch.allclose(wide(input_ids=ids).logits[:, -1], narrow(input_ids=ids).logits[:, -1])

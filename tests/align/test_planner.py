"""The memory planner: parameter counts from configs alone, model states within 10 % of DeepSpeed's estimator."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("preset", ["tiny-deepseek-v4", "tiny-qwen3-moe", "tiny-mixtral"])
@pytest.mark.parametrize("gpus", [2, 8])
def test_model_states_agree_with_deepspeed_estimator(tmp_path, preset, gpus):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from align import modeling, planner

    modeling.build_base(preset, {}, 0, tmp_path)
    model, _ = modeling.load_model(tmp_path)  # a real model: DeepSpeed counts it its own way
    total, largest = model_to_params(model)
    theirs = {3: estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=gpus, cpu_offload=False)[1],
              2: estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=gpus, cpu_offload=False)[1]}
    for zero in (2, 3):
        ours = planner.plan(preset, gpus, zero)  # from the config on the meta device
        assert ours["counts"]["total"] == total
        assert abs(ours["model_states_total"] / theirs[zero] - 1) <= 0.10, (zero, ours["model_states"], theirs[zero])


@pytest.mark.slow
def test_deepseek_v3_size_config_is_counted_without_memory():
    from align import planner

    p = planner.plan("deepseek-v3", 64, 3)
    assert p["counts"]["total"] == pytest.approx(671e9, rel=0.01)
    assert p["counts"]["active"] == pytest.approx(37e9, rel=0.03)
    assert abs(p["model_states_total"] / p["deepspeed_estimate"] - 1) <= 0.10
    # ZeRO-3 shards the states: 8x the GPUs, ~1/8 the partitioned bytes
    p8 = planner.plan("deepseek-v3", 8, 3)
    assert p8["model_states"]["optimizer"] == pytest.approx(8 * p["model_states"]["optimizer"], rel=1e-6)
    # LoRA: the frozen weights stay, gradients and optimizer state shrink to the adapters'
    lora = planner.plan("deepseek-v3", 64, 3, lora=True)
    assert lora["model_states"]["parameters"] == p["model_states"]["parameters"]
    assert lora["model_states"]["optimizer"] < p["model_states"]["optimizer"] / 100
    # multi-head latent attention: the latent cache is far smaller than HF generation's full keys/values
    assert p["kv_cache_latent"] < p["kv_cache"] / 10


def test_activation_estimate_scales_with_tokens_and_checkpointing():
    from align import planner

    a = planner.plan("qwen3-30b-a3b", 8, 3, seq_len=1024)["activations"]
    b = planner.plan("qwen3-30b-a3b", 8, 3, seq_len=2048)["activations"]
    c = planner.plan("qwen3-30b-a3b", 8, 3, seq_len=2048, checkpointing=False)["activations"]
    assert b == pytest.approx(2 * a, rel=1e-6) and c > 3 * b


def test_plan_cli(tmp_path):
    proc = run_cli("plan", "--model", "deepseek-v3", "--gpus", "64", "--zero", "3")
    assert proc.returncode == 0, proc.stderr
    assert "671.026B parameters" in proc.stdout and "DeepSpeed's estimator" in proc.stdout
    bad = run_cli("plan", "--model", str(tmp_path / "nothing"), "--gpus", "2")
    assert bad.returncode == 2 and "not a known name" in bad.stderr


def test_expert_parallelism_dimension():
    """--ep N: experts split over N ranks — ZeRO-2's replicated expert weights shrink by N, ZeRO-3 gathers no whole
    MoE block, and the all-to-all each GPU sends per micro-step appears."""
    from align.planner import plan

    base2, ep2 = plan("qwen3-30b-a3b", 16, 2), plan("qwen3-30b-a3b", 16, 2, ep=16)
    dense = base2["counts"]["total"] - base2["counts"]["experts"]
    assert base2["model_states"]["parameters"] == 2 * base2["counts"]["total"]
    assert ep2["model_states"]["parameters"] == 2 * (dense + base2["counts"]["experts"] // 16)
    experts = base2["counts"]["experts"]  # bf16 weights on 1/16 of the ranks; gradients + Adam partitioned either way
    assert ep2["expert_bytes_per_gpu"] == 2 * experts // 16 + 16 * experts // 16
    assert base2["expert_bytes_per_gpu"] == 2 * experts + 16 * experts // 16
    base3, ep3 = plan("qwen3-30b-a3b", 16, 3), plan("qwen3-30b-a3b", 16, 3, ep=16)
    c = ep3["counts"]  # the largest unit is now a dense module (the embedding) or 1/16 of a block's experts
    unit = max(c["largest_dense_module"], c["largest_block"] - c["largest_block_experts"] + c["largest_block_experts"] // 16)
    assert ep3["model_states"]["gather_buffer"] == 4 * unit < base3["model_states"]["gather_buffer"] == 4 * c["largest_block"]
    assert base3["all_to_all_per_micro_step"] == 0 < ep3["all_to_all_per_micro_step"]
    with pytest.raises(ValueError, match="--ep 3: must be at least 1 and divide --gpus 16"):
        plan("qwen3-30b-a3b", 16, 2, ep=3)

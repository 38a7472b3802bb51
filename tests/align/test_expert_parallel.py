"""Expert parallelism (DeepSpeed AutoEP): the transformers compatibility fix AutoEP needs."""

from __future__ import annotations

import inspect
import json

import pytest


def test_output_capture_registry_takes_autoep_calls():
    from transformers.utils import output_capturing

    from align.expert_parallel import patch_output_capture_registry

    registry = output_capturing._CAN_RECORD_REGISTRY
    if len(inspect.signature(type(registry).get).parameters) > 2:
        pytest.skip("this transformers' registry get already takes a default")
    with pytest.raises(TypeError):  # what deepspeed.initialize hits with AutoEP on transformers 5.24
        registry.get("<class 'x.Block'>", None)
    assert patch_output_capture_registry()
    assert not patch_output_capture_registry()  # once
    assert registry.get("<class 'x.Block'>", "missing") == "missing"
    dict.__setitem__(registry, "<class 'x.Block'>", {"router_logits": 1})
    try:
        assert registry.get("<class 'x.Block'>", None) == {"router_logits": 1}
    finally:
        dict.pop(registry, "<class 'x.Block'>")

    class Model:  # transformers' own calls, keyed by model: unchanged
        pass

    assert registry.get(Model()) == {}


def test_deepseek_v4_preset_takes_its_learned_layers_and_leaves_hash_layers_to_zero():
    """The embedded DeepSeek-V4 preset maps to align's AutoEP preset; the DeepSpeed config's layer pattern names its
    learned-router layers only; a model whose MoE layers are all hash-routed (nothing to make expert-parallel) or whose
    scoring the EP router does not compute is refused, naming the layers."""
    import re

    from align import expert_parallel as ep

    config = ep.model_config(None, "tiny-deepseek-v4", {})
    assert ep.autoep_preset(config, "preset tiny-deepseek-v4") == ep.DEEPSEEK_V4
    block = ep.deepspeed_config({"zero_optimization": {"stage": 2}}, 2, ep.DEEPSEEK_V4, config)["expert_parallel"]
    names = [f"model.layers.{i}.mlp" for i in range(3)]
    assert [n for n in names if re.fullmatch(block["moe_layer_pattern"], n)] == ep.learned_layers(config)
    assert ep.hash_layers(config) == ["model.layers.0.mlp"] and ep.learned_layers(config) == names[1:]
    with pytest.raises(ep.ExpertParallelError, match=r"every MoE layer .* hash-routed \(model.layers.0.mlp, "
                                                     r"model.layers.1.mlp\).*--zero 2 or 3 without --ep"):
        ep.autoep_preset({**config, "mlp_layer_types": ["hash_moe", "hash_moe"]}, "m")
    with pytest.raises(ep.ExpertParallelError, match="scoring_func 'tanh'"):
        ep.autoep_preset({**config, "scoring_func": "tanh"}, "m")
    with pytest.raises(ep.ExpertParallelError, match="no AutoEP preset for model_type 'llama'"):
        ep.autoep_preset({"model_type": "llama"}, "m")


@pytest.mark.parametrize("scoring", ["sqrtsoftplus", "sigmoid"])
def test_deepseek_v4_expert_parallel_router_routes_as_transformers_does(scoring):
    """The EP router built for DeepSeek-V4 (AutoEP's router with the model's sqrtsoftplus scores) picks the same
    experts with the same weights as transformers' DeepseekV4TopKRouter, with a correction bias that changes the
    choice."""
    import torch
    from deepspeed.moe.ep_router import TokenChoiceTopKRouter
    from transformers import DeepseekV4Config
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4TopKRouter

    from align import expert_parallel as ep

    torch.manual_seed(0)
    cfg = DeepseekV4Config(**{k: v for k, v in ep.model_config(None, "tiny-deepseek-v4", {}).items()
                              if k != "model_type"}, scoring_func=scoring)
    hf = DeepseekV4TopKRouter(cfg)
    torch.nn.init.normal_(hf.weight, std=0.5)
    hf.e_score_correction_bias.normal_(std=0.3)
    router = TokenChoiceTopKRouter(dim=cfg.hidden_size, num_experts=cfg.n_routed_experts, num_expert_groups=None,
                                   num_limited_groups=None, top_k=cfg.num_experts_per_tok, score_func="sigmoid",
                                   route_norm=True, route_scale=cfg.routed_scaling_factor, gate_bias=False)
    router.gate.weight.data.copy_(hf.weight.data)
    del router.e_score_correction_bias  # as AutoEP copies the model's bias: a buffer on its router
    router.register_buffer("e_score_correction_bias", hf.e_score_correction_bias.clone())
    x = torch.randn(64, cfg.hidden_size)
    plain = router(x)[1].sort(-1).values  # AutoEP's own sigmoid scores: a different choice
    router.__class__ = ep._v4_classes(scoring)[1]
    weights, experts, counts = router(x)
    _, hf_weights, hf_experts = hf(x)
    order, hf_order = experts.argsort(-1), hf_experts.argsort(-1)
    assert torch.equal(experts.gather(1, order), hf_experts.gather(1, hf_order))
    assert torch.allclose(weights.gather(1, order), hf_weights.gather(1, hf_order), atol=1e-6)
    assert torch.equal(counts.long(), torch.bincount(hf_experts.flatten(), minlength=cfg.n_routed_experts))
    if scoring == "sqrtsoftplus":
        assert not torch.equal(plain, experts.sort(-1).values)


@pytest.mark.parametrize("overrides,match", [
    (["distributed.nproc=3", "distributed.ep=2", "distributed.zero=2"], "does not divide nproc 3"),
    (["distributed.nproc=2", "distributed.ep=2", "distributed.zero=0"], "zero 2 or 3, got zero 0"),
    (["distributed.nproc=2", "distributed.ep=0"], "at least 1"),
])
def test_ep_config_errors_name_the_key(tmp_path, overrides, match):
    from align.config import ConfigError, load_config
    from tests.conftest import SMOKE

    with pytest.raises(ConfigError, match=match):
        load_config(SMOKE, [f"output_dir={tmp_path}", *overrides])


def test_lora_and_routing_replay_with_ep_are_refused_before_weights(tmp_path):
    from align.config import load_config
    from align.validate import ValidationError, validate_pipeline
    from tests.conftest import SMOKE

    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "model.preset=tiny-qwen3-moe", "distributed.nproc=2",
                              "distributed.zero=2", "distributed.ep=2", "stages.grpo.routing_replay=replay",
                              "stages.sft.lora.r=4"])
    with pytest.raises(ValidationError) as err:
        validate_pipeline(cfg)
    assert any("stages.sft.lora" in p and "expert parallelism" in p for p in err.value.problems)
    assert any("stages.grpo.routing_replay" in p for p in err.value.problems)


@pytest.fixture(scope="module")
def zero2_sft(tmp_path_factory):
    """The SFT stage of the smoke pipeline on 2 ranks under plain ZeRO-2, once per model preset: the EP runs' anchor."""
    from tests.conftest import run_cli

    runs = {}

    def run(preset, extra):
        if preset not in runs:
            out = tmp_path_factory.mktemp(f"zero2-{preset}")
            proc = run_cli("configs/smoke.yaml", f"output_dir={out}", f"model.preset={preset}", *extra, "--nproc",
                           "2", "--zero", "2", "--only", "sft", timeout=600)
            assert proc.returncode == 0, proc.stderr[-4000:]
            runs[preset] = out
        return runs[preset]

    return run


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("preset,zero", [("tiny-qwen3-moe", 2), ("tiny-qwen3-moe", 3), ("tiny-deepseek-v4", 2),
                                         ("tiny-deepseek-v4", 3)])
def test_smoke_pipeline_under_expert_parallelism_matches_zero2(tmp_path, zero2_sft, preset, zero):
    """2 CPU ranks, experts split 4 + 4 per layer (AutoEP) with ZeRO-2 or ZeRO-3 over the rest: every stage runs; each
    rank holds half the routed-expert bytes of the expert-parallel layers; final/ is a plain HF model whose logits match
    the expert-parallel model's; the first steps' losses and the (global) expert-load counts equal a plain ZeRO-2 run's.
    Qwen3-MoE: AutoEP's own preset, every layer expert-parallel. The embedded DeepSeek-V4: align's preset, its learned-
    router layers expert-parallel (sqrtsoftplus scores, with the bias update of aux-loss-free balancing on), its hash
    layer on ZeRO."""
    from tests.conftest import run_cli

    v4 = preset == "tiny-deepseek-v4"
    extra = ["model.router.bias_update=0.05"] if v4 else []
    ep = tmp_path / "ep"
    proc = run_cli("configs/smoke.yaml", f"output_dir={ep}", f"model.preset={preset}", *extra, "--nproc", "2",
                   "--ep", "2", "--zero", str(zero), timeout=840)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = {"ep": ep, "zero2": zero2_sft(preset, extra)}
    for stage in ("00_sft", "01_reasoning", "02_grpo", "03_eval"):
        assert json.loads((ep / stage / "manifest.json").read_text())["status"] == "completed"
    ep_layers = [f"model.layers.{i}.mlp" for i in range(1 if v4 else 0, 3)]
    for stage in ("00_sft", "01_reasoning", "02_grpo"):
        report = json.loads((ep / stage / "manifest.json").read_text())["metrics"]["expert_parallel"]
        assert report["layers"] == ep_layers
        assert report["zero_layers"] == (["model.layers.0.mlp"] if v4 else [])
        assert report["expert_bytes_this_rank"] <= 0.55 * report["expert_bytes_whole"]
        if zero == 3 or not v4:  # under ZeRO-2 the hash layer's experts are whole on each rank
            assert report["all_expert_bytes_this_rank"] <= 0.55 * report["all_expert_bytes_whole"]
        assert report["final_max_logit_diff"] < 1e-4
    # final/ is whole and plain: transformers loads it without AutoEP, every expert trained away from the input
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(ep / "00_sft" / "final")
    base = AutoModelForCausalLM.from_pretrained(ep / "base")
    for i in range(3):
        moved = (final.model.layers[i].mlp.experts.gate_up_proj - base.model.layers[i].mlp.experts.gate_up_proj)
        assert (moved.flatten(1).abs().amax(1) > 0).all()  # experts of both ranks were trained and gathered
    if v4:  # the balancing bias moved on the expert-parallel routers and came back into final/
        assert all(final.model.layers[i].mlp.gate.e_score_correction_bias.abs().sum() > 0 for i in (1, 2))
    logs = {n: json.loads((r / "00_sft" / "log_history.json").read_text()) for n, r in runs.items()}
    losses = {n: [x["loss"] for x in h if "loss" in x][:3] for n, h in logs.items()}
    assert losses["ep"] == pytest.approx(losses["zero2"], rel=1e-3), losses
    moe = {n: json.loads((r / "00_sft" / "manifest.json").read_text())["metrics"]["moe"]["layers"]
           for n, r in runs.items()}
    assert {k: v["tokens"] for k, v in moe["ep"].items()} == {k: v["tokens"] for k, v in moe["zero2"].items()}
    assert all(v["tokens"] > 0 for v in moe["ep"].values())


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("preset,layers", [("tiny-mixtral", [0, 1, 2]), ("tiny-deepseek-v3", [1, 2])])
def test_other_families_train_under_expert_parallelism(tmp_path, zero2_sft, preset, layers):
    """AutoEP's own Mixtral and DeepSeek-V3 presets through align unchanged (DeepSeek-V3's first layer is dense): the SFT
    stage on 2 ranks with EP 2 logs plain ZeRO-2's losses, with the aux loss on (DeepSeek-V3's router logits are still
    recorded after the swap), and final/ matches the expert-parallel model."""
    from tests.conftest import run_cli

    ep = tmp_path / "ep"
    proc = run_cli("configs/smoke.yaml", f"output_dir={ep}", f"model.preset={preset}", "--nproc", "2", "--ep", "2",
                   "--zero", "2", "--only", "sft", timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((ep / "00_sft" / "manifest.json").read_text())["metrics"]["expert_parallel"]
    assert report["layers"] == [f"model.layers.{i}.mlp" for i in layers]
    assert report["final_max_logit_diff"] < 1e-4
    losses = {n: [x["loss"] for x in json.loads((r / "00_sft" / "log_history.json").read_text()) if "loss" in x][:3]
              for n, r in (("ep", ep), ("zero2", zero2_sft(preset, [])))}
    assert losses["ep"] == pytest.approx(losses["zero2"], rel=1e-3), losses


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_and_resume_under_expert_parallelism_reproduces_the_losses(tmp_path):
    """SIGKILL the whole 2-rank EP job after its first complete checkpoint; the same command resumes from it (DeepSpeed
    restores each rank's experts and optimizer partitions) and logs the uninterrupted run's losses."""
    import subprocess
    import sys
    import time

    from align.checkpoint import MARKER
    from tests.align.test_distributed_zero3 import kill_all
    from tests.conftest import REPO, SMOKE

    def launched(out):
        args = [sys.executable, str(REPO / "run_pipeline.py"), str(SMOKE), "--only", "sft", "--nproc", "2", "--zero",
                "2", "--ep", "2", f"output_dir={out}", "model.preset=tiny-qwen3-moe",
                "stages.sft.trainer.max_steps=24", "stages.sft.trainer.save_steps=8"]
        return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def losses(out):
        state = json.loads((out / "00_sft" / "checkpoint-24" / "trainer_state.json").read_text())
        return {r["step"]: r["loss"] for r in state["log_history"] if "loss" in r}

    ref = tmp_path / "ref"
    proc = launched(ref)
    log, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, log[-4000:]
    run = tmp_path / "killed"
    proc = launched(run)
    marker = run / "00_sft" / "checkpoint-8" / MARKER
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    kill_all(proc)
    assert json.loads((run / "00_sft" / "manifest.json").read_text())["status"] == "running", "finished before the kill"
    proc = launched(run)
    log, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, log[-4000:]
    assert "resuming from" in log
    want, got = losses(ref), losses(run)
    assert want.keys() == got.keys()
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), step
    report = json.loads((run / "00_sft" / "manifest.json").read_text())["metrics"]["expert_parallel"]
    assert report["final_max_logit_diff"] < 1e-4

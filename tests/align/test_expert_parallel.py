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


def test_deepseek_v4_is_refused_naming_its_hash_layers_before_any_launch(tmp_path, monkeypatch):
    """The embedded DeepSeek-V4 preset: AutoEP has no preset for it and its hash-routed layer has no router to swap;
    the orchestrator refuses before launching a job or building a model."""
    import align.distributed
    import align.modeling
    from align.config import ConfigError, load_config
    from align.pipeline import run_pipeline_launched
    from tests.conftest import SMOKE

    monkeypatch.setattr(align.distributed, "run_launched", lambda *a: pytest.fail("a job was launched"))
    monkeypatch.setattr(align.modeling, "build_base", lambda *a, **k: pytest.fail("weights built"))
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "distributed.nproc=2", "distributed.zero=2",
                              "distributed.ep=2"])
    with pytest.raises(ConfigError, match=r"DeepSeek-V4.*hash-routed layers \(layer 0\).*learned-router layers \(layer 1, layer 2\).*sqrtsoftplus.*--zero 2 or 3 without --ep"):
        run_pipeline_launched(cfg, str(SMOKE), [], 2, 2)


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


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("zero", [2, 3])
def test_smoke_pipeline_under_expert_parallelism_matches_zero2(tmp_path, zero):
    """Qwen3-MoE, 2 CPU ranks, experts split 4 + 4 per layer (AutoEP) with ZeRO-2 or ZeRO-3 over the rest: every stage
    runs; each rank holds half the routed-expert bytes; final/ is a plain HF model whose logits match the
    expert-parallel model's; the first steps' losses and the (global) expert-load counts equal a plain ZeRO-2 run's."""
    from tests.conftest import run_cli

    runs = {}
    for name, extra in (("ep", ["--ep", "2", "--zero", str(zero)]), ("zero2", ["--zero", "2"])):
        out = tmp_path / name
        only = [] if name == "ep" else ["--only", "sft"]
        proc = run_cli("configs/smoke.yaml", f"output_dir={out}", "model.preset=tiny-qwen3-moe", "--nproc", "2",
                       *extra, *only, timeout=840)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[name] = out
    ep = runs["ep"]
    for stage in ("00_sft", "01_reasoning", "02_grpo", "03_eval"):
        assert json.loads((ep / stage / "manifest.json").read_text())["status"] == "completed"
    for stage in ("00_sft", "01_reasoning", "02_grpo"):
        report = json.loads((ep / stage / "manifest.json").read_text())["metrics"]["expert_parallel"]
        assert report["layers"] == [f"model.layers.{i}.mlp" for i in range(3)]
        assert report["expert_bytes_this_rank"] <= 0.55 * report["expert_bytes_whole"]
        assert report["final_max_logit_diff"] < 1e-4
    # final/ is whole and plain: transformers loads it without AutoEP, every expert trained away from the input
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(ep / "00_sft" / "final")
    base = AutoModelForCausalLM.from_pretrained(ep / "base")
    for i in range(3):
        moved = (final.model.layers[i].mlp.experts.gate_up_proj - base.model.layers[i].mlp.experts.gate_up_proj)
        assert (moved.flatten(1).abs().amax(1) > 0).all()  # experts of both ranks were trained and gathered
    logs = {n: json.loads((r / "00_sft" / "log_history.json").read_text()) for n, r in runs.items()}
    losses = {n: [x["loss"] for x in h if "loss" in x][:3] for n, h in logs.items()}
    assert losses["ep"] == pytest.approx(losses["zero2"], rel=1e-3), losses
    moe = {n: json.loads((r / "00_sft" / "manifest.json").read_text())["metrics"]["moe"]["layers"]
           for n, r in runs.items()}
    assert {k: v["tokens"] for k, v in moe["ep"].items()} == {k: v["tokens"] for k, v in moe["zero2"].items()}
    assert all(v["tokens"] > 0 for v in moe["ep"].values())


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

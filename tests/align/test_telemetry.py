"""MoE telemetry, aux-loss-free bias updates, top-k override, layer snapshot, dense baseline, live /stats."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

from align import modeling, moe
from align.telemetry import ExpertLoad, LayerSnapshot, flat_metrics, param_group, update_correction_bias
from tests.conftest import REPO, SMOKE


def tiny(preset: str, tmp_path) -> torch.nn.Module:
    modeling.build_base(preset, {}, 0, tmp_path / preset)
    model, _ = modeling.load_model(tmp_path / preset)
    model.config.output_router_logits = False
    return model


@pytest.mark.parametrize("preset", ["tiny-deepseek-v4", "tiny-qwen3-moe", "tiny-mixtral"])
def test_expert_load_sums_to_one_per_layer(preset, tmp_path):
    model = tiny(preset, tmp_path)
    load = ExpertLoad(model)
    with torch.no_grad():
        model(input_ids=torch.randint(5, 100, (4, 16)))
    assert all(s["tokens"] == 0 for s in load.window().values())  # counted per rank until the step's flush
    load.flush()
    stats = load.window()
    assert len(stats) == 3
    for s in stats.values():
        assert sum(s["load"]) == pytest.approx(1.0, abs=1e-4)
        assert s["tokens"] == 4 * 16 * 2  # token-slots: tokens x top-2
        assert s["cv"] >= 0 and s["max_over_mean"] >= 1 and 0 <= s["dead"] < 8 and s["entropy"] > 0
    kinds = [s["kind"] for s in stats.values()]
    assert kinds == (["hash", "topk", "topk"] if preset == "tiny-deepseek-v4" else ["topk"] * 3)
    assert all(s["tokens"] == 0 for s in load.window().values())  # the window resets
    assert load.totals()["layer1"]["tokens"] == 128
    flat = flat_metrics(stats)
    assert "moe/topk_mean_cv" in flat and "moe/dead_experts" in flat
    load.remove()


def test_bias_update_reduces_imbalance_of_a_skewed_router(tmp_path):
    modeling.build_base("tiny-deepseek-v4", {}, 0, tmp_path / "m")

    def run(gamma: float) -> float:
        model, _ = modeling.load_model(tmp_path / "m")
        model.config.output_router_logits = False
        gate = model.model.layers[1].mlp.gate
        captured = []
        h = gate.register_forward_hook(lambda m, a, o: captured.append(a[0].detach().reshape(-1, a[0].shape[-1])))
        with torch.no_grad():
            model(input_ids=torch.randint(5, 100, (8, 16), generator=torch.Generator().manual_seed(99)))
        h.remove()
        mean = captured[0].mean(0)
        with torch.no_grad():  # skew: expert 0 scores high on (nearly) every token
            gate.weight[0] = 3 * mean / mean.norm()
        load = ExpertLoad(model)
        tail = torch.zeros(8)
        for step in range(100):  # forward passes stand in for training steps; the update runs after each
            with torch.no_grad():
                model(input_ids=torch.randint(5, 100, (8, 16), generator=torch.Generator().manual_seed(step)))
            counts = load.flush()
            if gamma:
                update_correction_bias(load, counts, gamma)
            if step >= 60:
                tail += counts["layer1"]
        load.remove()
        frac = tail / tail.sum()
        return float(frac.std(unbiased=False) / frac.mean())

    skewed, balanced = run(0.0), run(0.01)
    assert skewed > 0.5  # the skew is real (measured 0.71)
    assert balanced < 0.5 * skewed  # measured 0.21


def test_top_k_override_routes_fewer_experts(tmp_path):
    model = tiny("tiny-deepseek-v4", tmp_path)
    moe.set_top_k(model, 1)
    load = ExpertLoad(model)
    with torch.no_grad():
        model(input_ids=torch.randint(5, 100, (2, 8)))
    load.flush()
    assert all(s["tokens"] == 16 for s in load.window().values())
    with pytest.raises(ValueError, match="only 8 experts"):
        moe.set_top_k(model, 9)


def test_dense_baseline_has_the_moe_active_parameters(tmp_path):
    _, active = moe.count_parameters(tiny("tiny-deepseek-v4", tmp_path))
    total, dense_active = moe.count_parameters(tiny("tiny-deepseek-v4-dense", tmp_path))
    assert total == dense_active
    assert abs(dense_active - active) / active < 0.02


def test_layer_snapshot_groups_and_ratio(tmp_path):
    model = tiny("tiny-deepseek-v4", tmp_path)
    snap = LayerSnapshot(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(input_ids=torch.randint(5, 100, (2, 8)), labels=torch.randint(5, 100, (2, 8))).loss.backward()
        snap.before_step()
        opt.step()
        out = snap.after_step()
        opt.zero_grad()
    assert set(out) == {"emb", "layer0_attn", "layer0_ffn", "layer1_attn", "layer1_ffn", "layer2_attn", "layer2_ffn",
                        "ln_f"}
    for s in out.values():
        assert s["update_ratio"] > 0 and s["grad_norm"] >= 0 and s["trend"] in {"rising", "falling", "flat"}
    assert param_group("base_model.model.model.layers.3.mlp.experts.gate_up_proj") == "layer3_ffn"
    assert param_group("model.layers.0.self_attn.q_a_proj.weight") == "layer0_attn"


def test_smoke_manifests_hold_moe_telemetry(smoke_run):
    _, out, _ = smoke_run
    m = json.loads((out / "00_sft" / "manifest.json").read_text())["metrics"]["moe"]
    assert {s["kind"] for s in m["layers"].values()} == {"hash", "topk"}
    for s in m["layers"].values():
        assert sum(s["load"]) == pytest.approx(1.0, abs=1e-3)
    assert "layer2_ffn" in m["layer_snapshot"]
    import matplotlib.image as mpimg

    assert mpimg.imread(out / "00_sft" / "expert_load.png").shape[0] > 100  # the per-stage heatmap
    hist = json.loads((out / "02_grpo" / "log_history.json").read_text())
    assert any("moe/topk_mean_cv" in h for h in hist) and any("snapshot/emb/update_ratio" in h for h in hist)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.mark.slow
def test_stats_endpoint_answers_during_a_stage_and_is_gone_after(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "run_pipeline.py"), str(SMOKE), "--only", "sft", f"output_dir={tmp_path}",
         f"monitor.port={port}", "stages.sft.trainer.max_steps=150", "stages.sft.trainer.logging_steps=5"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = None
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        got = _get(port)
        if got and got["step"] > 0:
            seen = got
            break
        time.sleep(0.5)
    proc.wait(timeout=300)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert seen is not None, "no /stats answer while the stage trained"
    assert seen["stage"] == "00_sft" and "loss" in seen["logs"] and seen["steps_per_s"] > 0
    assert "layer1" in seen["expert_load"] and "emb" in seen["layer_snapshot"]
    assert _get(port) is None  # closed with the stage


def test_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, str(REPO / "run_pipeline.py"), str(SMOKE), "--only", "sft",
                               f"output_dir={tmp_path}", f"monitor.port={port}", "stages.sft.trainer.max_steps=2"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"monitor.port {port}" in proc.stderr


def test_router_policy_bias_update_and_top_k_through_a_stage(tmp_path):
    """The policy block reaches a real SFT stage: the correction bias moves, top-1 routing is saved and reloads."""
    from safetensors.torch import load_file

    from align.config import load_config
    from align.pipeline import run_pipeline

    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "stages.sft.trainer.max_steps=4",
                              "model.router={aux_loss_coef: 0.001, bias_update: 0.01, top_k: 1}"])
    run_pipeline(cfg, only="sft")
    m = json.loads((tmp_path / "00_sft" / "manifest.json").read_text())["metrics"]["moe"]
    assert m["bias_gamma"] == 0.01 and m["bias_mean_abs"] > 0
    assert all(s["tokens"] > 0 for s in m["layers"].values())
    final = load_file(tmp_path / "00_sft" / "final" / "model.safetensors")
    biases = [v for k, v in final.items() if k.endswith("gate.bias")]
    assert biases and all(float(b.abs().sum()) > 0 for b in biases)  # saved with the model
    model, _ = modeling.load_model(tmp_path / "00_sft" / "final")
    assert model.config.num_experts_per_tok == 1
    load = ExpertLoad(model)
    with torch.no_grad():
        model(input_ids=torch.randint(5, 100, (2, 8)))
    load.flush()
    assert all(s["tokens"] == 16 for s in load.window().values())  # one expert per token after reload

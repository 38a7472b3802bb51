"""The spine end to end: manifest chain, skip on rerun, refusal on change, SIGKILL + resume, truncated checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from align.config import load_config
from align.pipeline import PipelineError, run_pipeline
from tests.conftest import REPO, SMOKE, run_cli


def weights(path: Path) -> dict[str, torch.Tensor]:
    """Parameters by module name (files may use the checkpoint's original naming)."""
    from transformers import AutoModelForCausalLM

    return {k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def test_smoke_pipeline_manifest_and_final_dir(smoke_run):
    from transformers import AutoModelForCausalLM

    cfg, out, rows = smoke_run
    stage_dir = out / "00_sft"
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["kind"] == "sft" and manifest["steps"] == 12
    assert manifest["input_model"] == str(out / "base") and len(manifest["config_hash"]) == 16
    for key in ("input_hash", "output_hash", "packages", "data", "wall_time_s"):
        assert manifest[key], key
    m = manifest["metrics"]
    assert 0.0 <= m["heldout_accuracy"] <= 1.0 and m["heldout_n"] == 32
    assert 0 < m["heldout_s"] < manifest["wall_time_s"]  # grading's share of the stage's wall time
    assert m["train_loss_last"] < m["train_loss_first"]  # SFT lowers the loss
    assert m["aux_loss_first"] > 0  # the router aux loss is part of the objective and logged
    # SFT changed the parameters
    before, after = weights(out / "base"), weights(stage_dir / "final")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > 0.8 * len([k for k in before if before[k].is_floating_point()])
    # the final dir is a plain HF model
    model = AutoModelForCausalLM.from_pretrained(stage_dir / "final")
    assert type(model).__name__ == "DeepseekV4ForCausalLM"
    assert (out / "pipeline.resolved.yaml").is_file()
    assert not rows[0]["skipped"]
    # the eval stage grades generated code: its manifest says which sandbox ran it with which protections
    sandbox = json.loads((out / "03_eval" / "manifest.json").read_text())["sandbox"]
    assert sandbox["backend"] in ("bwrap", "unshare") and sandbox["active"]
    assert "missing" in sandbox


def test_chain_sft_reasoning_grpo(smoke_run):
    """Every stage starts from the previous one's final/, changes the parameters, and logs its metrics."""
    _, out, rows = smoke_run
    names = ["00_sft", "01_reasoning", "02_grpo"]
    assert [r["stage"] for r in rows] == ["sft", "reasoning", "grpo", "eval"]
    manifests = [json.loads((out / n / "manifest.json").read_text()) for n in names]
    assert all(m["status"] == "completed" for m in manifests)
    for prev, m in zip(names, manifests[1:]):
        assert m["input_model"] == str(out / prev / "final")
        assert m["input_hash"] == json.loads((out / prev / "manifest.json").read_text())["output_hash"]
    finals = [weights(out / "base")] + [weights(out / n / "final") for n in names]
    for before, after, name in zip(finals, finals[1:], names):
        changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
        assert changed, f"{name} changed no parameter"
    grpo = manifests[2]["metrics"]
    assert set(grpo["verifiers"]) == {"exact", "retrieval", "think_format"}
    assert grpo["verifiers"]["exact"]["n"] > 0 and grpo["verifiers"]["retrieval"]["n"] > 0  # a multi-task batch
    assert "reward_first" in grpo and grpo["aux_loss_coef"] == 0.001
    assert manifests[1]["metrics"]["trace_source"] == "recipe"


def test_rerun_skips_and_changed_config_refuses(smoke_run):
    cfg, out, _ = smoke_run
    rows = run_pipeline(cfg)
    assert all(r["skipped"] for r in rows)
    changed = load_config(SMOKE, [f"output_dir={out}", "stages.sft.trainer.learning_rate=1e-3"])
    with pytest.raises(PipelineError, match="different config"):
        run_pipeline(changed)


def test_only_stage_from_any_model_dir(smoke_run, tmp_path):
    _, out, _ = smoke_run
    proc = run_cli(str(SMOKE), f"output_dir={tmp_path}", "stages.sft.trainer.max_steps=3", "--only", "sft",
                   "--init-from", str(out / "00_sft" / "final"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "00_sft" / "manifest.json").read_text())
    assert manifest["input_model"] == str(out / "00_sft" / "final") and manifest["steps"] == 3
    assert "held-out acc" in proc.stdout


def test_cli_dry_run_and_bad_config_exit_code(tmp_path):
    proc = run_cli(str(SMOKE), f"output_dir={tmp_path}", "--dry-run")
    assert proc.returncode == 0 and "00_sft" in proc.stdout and "02_grpo  kind=grpo" in proc.stdout
    assert not (tmp_path / "00_sft").exists()
    proc = run_cli(str(SMOKE), "stages.sft.trainer.learning_rate=-1")
    assert proc.returncode == 2 and "learning_rate" in proc.stderr and "smoke.yaml" in proc.stderr


def test_cli_lists_stages_and_verifiers():
    proc = run_cli("--list-stages")
    assert proc.returncode == 0 and [ln.split()[0] for ln in proc.stdout.splitlines()] == ["sft", "reasoning", "grpo", "eval"]
    assert all(len(ln.split()) > 2 for ln in proc.stdout.splitlines())  # a description on each line
    proc = run_cli("--list-verifiers")
    assert proc.returncode == 0
    for name in ("exact", "math", "code", "instructions", "retrieval", "think_format", "overlong", "repetition"):
        assert f"rewards/{name}.py" in proc.stdout


def _complete_ckpts(stage: Path) -> list[Path]:
    return sorted(stage.glob("checkpoint-*/align_complete.json"))


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume(tmp_path):
    args = [str(SMOKE), "--only", "sft", f"output_dir={tmp_path}", "stages.sft.trainer.max_steps=400", "stages.sft.trainer.save_steps=20",
            "stages.sft.trainer.per_device_train_batch_size=8", "stages.sft.data.n_train=4000"]
    proc = subprocess.Popen([sys.executable, str(REPO / "run_pipeline.py"), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    stage = tmp_path / "00_sft"
    deadline = time.time() + 300
    while time.time() < deadline and len(_complete_ckpts(stage)) < 2 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(_complete_ckpts(stage)) >= 1, "the run ended before any checkpoint was written"
    assert json.loads((stage / "manifest.json").read_text())["status"] == "running"
    assert not (stage / "final").exists()
    killed_at = max(int(p.parent.name.split("-")[1]) for p in _complete_ckpts(stage))
    assert killed_at < 400
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stderr
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["steps"] == 400


def test_truncated_checkpoint_is_skipped_not_fatal(tmp_path):
    from align.checkpoint import last_complete_checkpoint

    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "stages.sft.trainer.max_steps=8", "stages.sft.trainer.save_steps=4"])
    run_pipeline(cfg, only="sft")
    stage = tmp_path / "00_sft"
    # simulate a kill mid-save of the newest checkpoint, a dir without a marker, and a same-size corruption of the
    # weights' header (sizes alone would call it complete; SafetensorError on load)
    (stage / "checkpoint-12").mkdir()
    shutil.copytree(stage / "checkpoint-8", stage / "checkpoint-10")
    weights_file = stage / "checkpoint-10" / "model.safetensors"
    data = bytearray(weights_file.read_bytes())
    data[10:20] = b"#" * 10
    weights_file.write_bytes(bytes(data))
    weights_file = stage / "checkpoint-8" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    assert last_complete_checkpoint(stage) == stage / "checkpoint-4"
    for n in (8, 10, 12):
        assert (stage / f"incomplete-checkpoint-{n}").is_dir()
    # and a resumed stage uses the complete one: force a rerun by marking the manifest as interrupted
    m = json.loads((stage / "manifest.json").read_text())
    m["status"] = "running"
    (stage / "manifest.json").write_text(json.dumps(m))
    rows = run_pipeline(cfg, only="sft")
    assert not rows[0]["skipped"] and rows[0]["steps"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-qwen3-moe", "tiny-mixtral"])
def test_other_presets_train(tmp_path, preset):
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", f"model.preset={preset}", "stages.sft.trainer.max_steps=6"])
    run_pipeline(cfg, only="sft")
    before, after = weights(tmp_path / "base"), weights(tmp_path / "00_sft" / "final")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    m = json.loads((tmp_path / "00_sft" / "manifest.json").read_text())["metrics"]
    assert m["train_loss_last"] < m["train_loss_first"]


def test_lora_on_experts_router_attention_is_merged(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "stages.sft.trainer.max_steps=6",
                              "stages.sft.lora={r: 4, alpha: 8}", "stages.sft.trainer.learning_rate=1e-2"])
    run_pipeline(cfg, only="sft")
    final = tmp_path / "00_sft" / "final"
    assert not (final / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(final)
    assert not any("lora" in n for n, _ in model.named_parameters())
    before, after = weights(tmp_path / "base"), weights(final)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("experts" in k for k in changed), changed
    assert any("self_attn" in k for k in changed), changed
    assert any(k.endswith("mlp.gate.weight") for k in changed), changed
    assert not any("embed_tokens" in k or "compressor" in k or "norm" in k for k in changed), changed


@pytest.mark.slow
def test_ablation_shares_upstream_stages_and_compares(tmp_path):
    from align.ablation import split_values, variants

    assert variants(["a.b=1,2", "c=[1, 2],x"]) == [["a.b=1", "c=[1, 2]"], ["a.b=1", "c=x"],
                                                   ["a.b=2", "c=[1, 2]"], ["a.b=2", "c=x"]]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    out = tmp_path / "abl"
    proc = run_cli("ablate", str(SMOKE), f"output_dir={out}", "stages.sft.trainer.max_steps=4",
                   "stages.reasoning.trainer.max_steps=2", "stages.grpo.trainer.max_steps=2",
                   "--vary", "stages.grpo.trainer.learning_rate=1e-3,1e-4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "abl-ablation"
    a, b = root / "learning_rate=1e-3", root / "learning_rate=1e-4"
    # sft and reasoning ran once: the second variant's folders are hard links of the first's, skipped by hash
    for stage in ("00_sft", "01_reasoning"):
        fa, fb = a / stage / "manifest.json", b / stage / "manifest.json"
        assert fa.stat().st_ino == fb.stat().st_ino
    ma = json.loads((a / "02_grpo" / "manifest.json").read_text())
    mb = json.loads((b / "02_grpo" / "manifest.json").read_text())
    assert ma["config"]["trainer"]["learning_rate"] != mb["config"]["trainer"]["learning_rate"]
    assert "stage sft: finished with the same config and input; skipped" in proc.stderr
    assert "stage reasoning: finished with the same config and input; skipped" in proc.stderr
    text = (root / "report.md").read_text()
    assert "learning_rate=1e-3" in text and "learning_rate=1e-4" in text and "eval:arithmetic" in text
    ledgers = text.split("## Skill ledgers", 1)[1]  # the variants' skill ledgers side by side
    assert "| learning_rate=1e-3 |" in ledgers and "| learning_rate=1e-4 |" in ledgers and "arithmetic" in ledgers
    assert "standing at the end" in ledgers and "| regressions (trained; standing) |" in ledgers
    assert (root / "ablation.png").stat().st_size > 1000
    assert (a / "report.md").is_file() and (b / "report.md").is_file()


def test_options_added_later_keep_old_hashes_at_their_default():
    """A run folder made before ``freeze`` (a stage option) or ``batch_size`` (a source option) existed still skips
    its finished stages: at their defaults those fields are not part of the stage's hash; set, they are."""
    import dataclasses

    from align.config import config_hash, to_dict
    from align.pipeline import stage_config_hash

    cfg = load_config(SMOKE)
    stage = cfg.stages[0]
    before = to_dict(stage)
    del before["freeze"]
    for src in before["data"]["sources"]:
        del src["batch_size"]
    assert stage_config_hash(cfg, stage) == config_hash(
        {"stage": before, "router": to_dict(cfg.router_for(stage)), "seed": cfg.seed})
    assert stage_config_hash(cfg, dataclasses.replace(stage, freeze=("*.mlp.*",))) != stage_config_hash(cfg, stage)
    sized = dataclasses.replace(stage.data, sources=(dataclasses.replace(stage.data.sources[0], batch_size=4),
                                                     *stage.data.sources[1:]))
    assert stage_config_hash(cfg, dataclasses.replace(stage, data=sized)) != stage_config_hash(cfg, stage)

"""ZeRO-3 specifics on 2 CPU processes (gloo): leaf modules found structurally, the start-up self-test, LoRA on
experts, kill-and-resume from DeepSpeed checkpoints, and the consolidated final model vs its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO, SMOKE

pytestmark = pytest.mark.slow  # multi-process runs: the full tier only

CHECK = REPO / "tests" / "align" / "zero3_leaf_check.py"


def torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(CHECK), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def printed(proc: subprocess.CompletedProcess, tag: str):
    line = next(x for x in proc.stdout.splitlines() if x.startswith(tag + " "))
    return json.loads(line[len(tag) + 1:])


# ------------------------------------------------------------------------------------------ leaf modules


def test_leaf_modules_found_structurally_on_every_architecture(tmp_path):
    from deepspeed.utils import z3_leaf_module

    from align import modeling, moe
    from tests.align.zero3_leaf_check import modulelist_model

    expected = {"tiny-deepseek-v4": "DeepseekV4SparseMoeBlock", "tiny-qwen3-moe": "Qwen3MoeSparseMoeBlock",
                "tiny-mixtral": "MixtralSparseMoeBlock"}
    for preset, cls_name in expected.items():
        modeling.build_base(preset, {}, 0, tmp_path / preset)
        model, _ = modeling.load_model(tmp_path / preset)
        assert moe.mark_zero3_leaves(model) == [cls_name]
        blocks = moe.find_moe_blocks(model)
        assert blocks and all(z3_leaf_module(b) for _, b in blocks)
        # the flag is on the class: a model built later (TRL's reference model, a reload) is covered too
        again, _ = modeling.load_model(tmp_path / preset)
        assert all(z3_leaf_module(b) for _, b in moe.find_moe_blocks(again))
        assert not any(z3_leaf_module(m) for m in again.modules() if type(m).__name__ != cls_name)
    model = modulelist_model()
    assert moe.mark_zero3_leaves(model) == ["ModuleListMoeBlock"]


def test_lora_on_parameters_is_registered_with_its_wrapper(tmp_path):
    from deepspeed.utils import z3_leaf_module

    from align import modeling, moe
    from align.config import LoraConfig
    from align.lora import wrap_lora

    modeling.build_base("tiny-deepseek-v4", {}, 0, tmp_path)
    model, _ = modeling.load_model(tmp_path)
    moe.mark_zero3_leaves(model)
    model = wrap_lora(model, LoraConfig(r=4, targets=("experts", "router")))
    assert moe.zero3_adapter_params(model) > 0
    wrappers = [m for m in model.modules() if hasattr(m, "parameter_name") and hasattr(m, "lora_A")]
    assert wrappers
    for w in wrappers:  # every tensor the wrapper reads without calling its owner is gathered with the wrapper
        assert {id(p) for p in w.parameters()} <= {id(p) for p in w._external_params.values()}
    assert not any(z3_leaf_module(b) for _, b in moe.find_moe_blocks(model))


@pytest.mark.timeout(300)
def test_per_expert_modulelist_moe_fails_without_leaf_and_passes_with_it():
    bad = torchrun("modulelist", "--no-leaf", "--timeout", "60")
    assert bad.returncode != 0
    assert "ZeRO-3 start-up self-test" in bad.stderr + bad.stdout  # our message, not only gloo's
    good = torchrun("modulelist", "--timeout", "60")
    assert good.returncode == 0, good.stderr[-3000:]
    result = printed(good, "SELF-TEST")
    assert result["ranks"] == 2 and result["ranks_differ"], result  # the ranks did route to different experts
    # the self-test leaves training untouched: the next steps' losses equal those of a run without it
    plain = torchrun("modulelist", "--skip-self-test")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert printed(good, "LOSSES") == printed(plain, "LOSSES")


@pytest.mark.timeout(300)
def test_lora_on_deepseek_v4_experts_needs_the_adapter_registration(tmp_path):
    bad = torchrun("tiny-deepseek-v4", "--lora", "--no-adapter-fix", "--model-dir", str(tmp_path / "m1"))
    assert bad.returncode != 0 and "self-test failed" in bad.stderr
    good = torchrun("tiny-deepseek-v4", "--lora", "--model-dir", str(tmp_path / "m2"))
    assert good.returncode == 0, good.stderr[-3000:]
    losses = printed(good, "LOSSES")
    assert len(set(losses)) == 3  # the adapters train: the loss moves from step to step


def test_self_test_turns_a_hang_into_a_clear_exit(tmp_path):
    """A forward that never returns (a rank waiting on a collective) ends the process with exit status 3."""
    script = tmp_path / "hang.py"
    script.write_text(
        "import os, time, torch, torch.distributed as dist\n"
        "from align import distributed\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path}/store', rank=0, world_size=1)\n"
        "class Engine:\n"
        "    device = torch.device('cpu')\n"
        "    module = torch.nn.Linear(2, 2)\n"
        "    module.config = type('C', (), {'vocab_size': 8})()\n"
        "    def __call__(self, **kw):\n"
        "        time.sleep(60)\n"
        "distributed.zero3_self_test(Engine(), timeout_s=2)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=50, cwd=REPO)
    assert proc.returncode == 3  # the watchdog ended it: the forward sleeps 60 s, the subprocess timeout is 50 s
    assert "did not finish in 2 s" in proc.stderr and "Remedy" in proc.stderr


# ------------------------------------------------------------------------------------------ whole stages


def launched(out, *extra: str, stage_args=(), **kw) -> subprocess.Popen:
    """``run_pipeline.py smoke --only sft --nproc 2 --zero 3`` (the orchestrator launches the 2-process job)."""
    args = [sys.executable, str(REPO / "run_pipeline.py"), str(SMOKE), "--only", "sft", "--nproc", "2", "--zero", "3",
            f"output_dir={out}", *stage_args, *extra]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


@pytest.mark.timeout(400)
def test_lora_on_experts_and_router_under_zero3(tmp_path):
    from safetensors.torch import load_file

    proc = launched(tmp_path, "stages.sft.lora={targets: [experts, router], r: 4}")
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-4000:]
    m = json.loads((tmp_path / "00_sft" / "manifest.json").read_text())
    assert m["status"] == "completed" and m["metrics"]["zero3_self_test"]["ranks"] == 2
    assert m["metrics"]["train_loss_last"] < m["metrics"]["train_loss_first"]
    base, final = load_file(tmp_path / "base" / "model.safetensors"), load_file(tmp_path / "00_sft" / "final" / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], final[k])}
    assert changed and all(".experts." in k or k.endswith(".gate.weight") for k in changed)  # merged adapters only


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the launcher starts its ranks in sessions of their own)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
                out += kids
                todo += kids
        except OSError:
            continue
    return out


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the whole job at once, as a preempted node would: orchestrator, launcher, every rank."""
    pids = [proc.pid, *descendants(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()


STEPS = ("stages.sft.trainer.max_steps=30", "stages.sft.trainer.save_steps=10")


@pytest.mark.timeout(600)
def test_zero3_kill_and_resume_and_consolidated_logits(tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    from align.checkpoint import MARKER

    # (1) an uninterrupted run
    ref = tmp_path / "ref"
    proc = launched(ref, stage_args=STEPS)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-4000:]
    ref_state = json.loads((ref / "00_sft" / "checkpoint-30" / "trainer_state.json").read_text())

    # (2) the consolidated final/ gives the same logits as the model rebuilt from the last DeepSpeed checkpoint
    sd = get_fp32_state_dict_from_zero_checkpoint(str(ref / "00_sft" / "checkpoint-30"))
    final = AutoModelForCausalLM.from_pretrained(ref / "00_sft" / "final").eval()
    rebuilt = AutoModelForCausalLM.from_pretrained(ref / "base").eval()  # buffers (hash table) come from the base
    missing, unexpected = rebuilt.load_state_dict(sd, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    base = AutoModelForCausalLM.from_pretrained(ref / "base").eval()
    ids = torch.randint(0, final.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want, before = final(ids).logits, rebuilt(ids).logits, base(ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, before, atol=1e-3)  # training moved it

    # (3) kill a run after its first complete checkpoint, rerun the same command: it resumes and matches (1)
    run = tmp_path / "killed"
    proc = launched(run, stage_args=STEPS)
    marker = run / "00_sft" / "checkpoint-10" / MARKER
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    kill_all(proc)
    manifest = json.loads((run / "00_sft" / "manifest.json").read_text())
    assert manifest["status"] == "running", "the run finished before it could be killed"
    proc = launched(run, stage_args=STEPS)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-4000:]
    assert "resuming from" in log and "checkpoint-" in log
    state = json.loads((run / "00_sft" / "checkpoint-30" / "trainer_state.json").read_text())
    losses = {r["step"]: r["loss"] for r in state["log_history"] if "loss" in r}
    ref_losses = {r["step"]: r["loss"] for r in ref_state["log_history"] if "loss" in r}
    assert losses.keys() == ref_losses.keys()
    for step, loss in ref_losses.items():
        assert loss == pytest.approx(losses[step], rel=1e-4, abs=1e-5), step

"""Faults: one live run per folder, stale dependants rebuilt, workers that die with their parent, a full disk, and
an unexpected error that still names the stage manifest."""

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

from align.config import load_config
from align.pipeline import run_pipeline
from align.runlock import LOCK_ENV, LOCK_NAME, RunLockError, hold_run_lock
from tests.conftest import REPO, SMOKE, run_cli

FAST = ["stages.sft.trainer.max_steps=4", "stages.sft.trainer.save_steps=2", "stages.reasoning.trainer.max_steps=2",
        "stages.reasoning.trainer.save_steps=2"]


def _env_without_lock() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != LOCK_ENV}


def test_second_run_on_a_held_folder_is_refused(tmp_path):
    with hold_run_lock(tmp_path):
        proc = run_cli(str(SMOKE), f"output_dir={tmp_path}", "--only", "sft", *FAST, env=_env_without_lock())
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"is in use by pid {os.getpid()}" in proc.stderr and "output_dir" in proc.stderr
        assert not (tmp_path / "00_sft").exists() and not (tmp_path / "base").exists()
        with pytest.raises(RunLockError):  # a second holder in another thread of thought, same process, no env
            os.environ.pop(LOCK_ENV)
            try:
                with hold_run_lock(tmp_path):
                    pass
            finally:
                os.environ[LOCK_ENV] = str(tmp_path.resolve())
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released cleanly


def test_lock_of_a_killed_run_is_taken_over(tmp_path):
    # a run killed with -9 leaves its holder record but no flock: the next run takes over and says so
    proc = subprocess.Popen([sys.executable, "-c", f"""
import time
from align.runlock import hold_run_lock
with hold_run_lock(__import__('pathlib').Path({str(tmp_path)!r})):
    print('held', flush=True)
    time.sleep(600)
"""], stdout=subprocess.PIPE, text=True, env=_env_without_lock(), cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(RunLockError, match=f"pid {proc.pid}"):
        with hold_run_lock(tmp_path):
            pass
    proc.kill()
    proc.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == proc.pid
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", *FAST])
    run_pipeline(cfg, only="sft")
    assert json.loads((tmp_path / "00_sft" / "manifest.json").read_text())["status"] == "completed"


def test_rebuilt_stage_invalidates_its_dependants(tmp_path):
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", *FAST])
    run_pipeline(cfg, only="sft")
    run_pipeline(cfg, only="reasoning")
    sft, reasoning = tmp_path / "00_sft", tmp_path / "01_reasoning"
    # deleting a finished stage's final/ and rerunning: the same weights come back, the dependant stays valid
    shutil.rmtree(sft / "final")
    m = json.loads((sft / "manifest.json").read_text())
    m["status"] = "running"
    (sft / "manifest.json").write_text(json.dumps(m))
    assert run_pipeline(cfg, only="sft")[0]["steps"] == 4
    assert run_pipeline(cfg, only="reasoning")[0]["skipped"]
    # sft rebuilt with another config (--overwrite): reasoning's outputs are stale, moved aside, and it reruns
    cfg2 = load_config(SMOKE, [f"output_dir={tmp_path}", *FAST, "stages.sft.trainer.max_steps=6"])
    run_pipeline(cfg2, only="sft", overwrite=True)
    rows = run_pipeline(cfg2, only="reasoning")
    assert not rows[0]["skipped"]
    assert (tmp_path / "01_reasoning.stale" / "manifest.json").is_file()
    manifest = json.loads((reasoning / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["input_hash"] == json.loads((sft / "manifest.json").read_text())["output_hash"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_pool_workers_die_with_a_killed_parent(tmp_path):
    """Workers busy in a long verifier call (they would never read the closed socket) die with a SIGKILLed parent."""
    slow = tmp_path / "slow.py"
    slow.write_text("import os, time\n"
                    "def verify(completion, answer, **row):\n"
                    f"    open(os.path.join({str(tmp_path)!r}, f'busy-{{os.getpid()}}'), 'w').close()\n"
                    "    time.sleep(600)\n"
                    "    return 1.0\n")
    script = f"""
from rewards.pool import VerifierPool
pool = VerifierPool(workers=2)
pool._ensure()
print(" ".join(str(w.proc.pid) for w in pool._workers), flush=True)
pool.map({str(slow) + ":verify"!r}, [("1", "1", {{}})] * 2, timeout=900)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    workers = [int(p) for p in proc.stdout.readline().split()]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(tmp_path.glob("busy-*"))) < 2:
        time.sleep(0.05)
    assert sorted(int(p.name[5:]) for p in tmp_path.glob("busy-*")) == sorted(workers)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.05)
    alive = [p for p in workers if _alive(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, "verifier workers outlived their killed parent"


@pytest.mark.slow
def test_full_disk_fails_the_stage_in_one_line_and_marks_it_failed(tmp_path):
    """A 4 MiB tmpfs (in a private mount namespace) holds the base model but not the first checkpoint."""
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is needed to mount a small private tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = tmp_path / "out.json"
    script = (
        f"mount -t tmpfs -o size=4m tmpfs {mnt} || exit 77; "
        f"{sys.executable} {REPO / 'run_pipeline.py'} {SMOKE} --only sft output_dir={mnt}/run 2>{tmp_path}/err.log; "
        f"echo $? > {tmp_path}/rc; cp {mnt}/run/00_sft/manifest.json {out}; "
        f"ls {mnt}/run/00_sft > {tmp_path}/ls.txt"
    )
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode == 77 or "Operation not permitted" in proc.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {proc.stderr.strip()[:200]}")
    err = (tmp_path / "err.log").read_text()
    assert (tmp_path / "rc").read_text().strip() == "2", err[-3000:]
    errors = [ln for ln in err.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "is full" in errors[0] and "manifest" in errors[0] and "Traceback" not in err
    manifest = json.loads(out.read_text())
    assert manifest["status"] == "failed" and manifest["disk_full"] is True
    assert "final" not in (tmp_path / "ls.txt").read_text().split()


def test_unexpected_error_keeps_traceback_and_names_the_manifest(tmp_path, monkeypatch):
    import stages

    def broken(cfg, ctx):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(stages.STAGES, "sft", broken)
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", *FAST])
    with pytest.raises(ZeroDivisionError) as info:
        run_pipeline(cfg, only="sft")
    manifest = tmp_path / "00_sft" / "manifest.json"
    assert any(str(manifest) in note for note in info.value.__notes__)
    assert json.loads(manifest.read_text())["status"] == "failed"
    from run_pipeline import is_expected_failure

    assert not is_expected_failure(info.value)

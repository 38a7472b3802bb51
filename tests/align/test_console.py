"""What a person watching a run reads: stage banners and result lines, per-step numbers in the run log and not on
the console, subcommands in --help, errors that name the override that caused them, no known noise."""

from __future__ import annotations

import pytest

from align.config import ConfigError, load_config
from tests.conftest import SMOKE, run_cli


def test_console_of_a_one_stage_run(tmp_path):
    proc = run_cli(str(SMOKE), "--only", "sft", f"output_dir={tmp_path}", "stages.sft.trainer.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    assert "==== stage 1/1: sft (sft), 4 steps, from" in err
    assert "==== stage 1/1: sft done in" in err and "held-out" in err and f"model: {tmp_path}/00_sft/final" in err
    assert "'loss'" not in err and "{'loss'" not in proc.stdout  # per-step dicts stay off the console...
    assert "'loss'" in (tmp_path / "run.log").read_text()  # ...and land in the run log
    for noise in ("Setting accelerator to CPU", "FutureWarning", "gradient_checkpointing"):
        assert noise not in err, noise
    assert (tmp_path / "report.md").is_file()  # --only runs get a report too
    # a rerun skips, and the table still shows what the skipped stage achieved
    again = run_cli(str(SMOKE), "--only", "sft", f"output_dir={tmp_path}", "stages.sft.trainer.max_steps=4")
    assert again.returncode == 0
    row = next(ln for ln in again.stdout.splitlines() if ln.startswith("sft "))
    assert "exact" in row and "[skipped: unchanged]" in row
    assert "unchanged since it ran: skipped (held-out" in again.stderr
    # --dry-run says what each stage would do, and why
    def dry() -> dict[str, str]:
        out = run_cli(str(SMOKE), f"output_dir={tmp_path}", "stages.sft.trainer.max_steps=4", "--dry-run").stdout
        return {ln.split()[1]: ln.split(": ", 1)[1] for ln in out.splitlines() if ln.startswith("#   0")}

    plan = dry()
    assert plan["00_sft"].startswith("skip") and plan["01_reasoning"].startswith("run (no earlier output)")
    manifest = tmp_path / "00_sft" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"status": "completed"', '"status": "running"'))
    assert dry()["00_sft"] == "resume from checkpoint-4"


def test_help_lists_subcommands():
    out = run_cli("--help").stdout
    for sub in ("report", "ablate", "plan"):
        assert f"\n  {sub} " in out


@pytest.mark.parametrize("override, blamed", [
    ("stages.sft.trainer.learnin_rate=1", "override 'stages.sft.trainer.learnin_rate=1'"),
    ("stages.sft.data.n_train=0", "override 'stages.sft.data.n_train=0'"),
    ("modle.preset=x", "override 'modle.preset=x'"),
])
def test_override_errors_name_the_override(override, blamed):
    with pytest.raises(ConfigError) as info:
        load_config(SMOKE, ["output_dir=/tmp/x", override])
    assert blamed in str(info.value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("max_steps: 12", "max_stepz: 12"))
    with pytest.raises(ConfigError) as info:
        load_config(bad, ["output_dir=/tmp/x"])
    assert str(bad) in str(info.value) and "override" not in str(info.value)

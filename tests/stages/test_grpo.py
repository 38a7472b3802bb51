"""GRPO from any model dir; user verifiers by file path; raising and hanging verifiers cost samples, not the run."""

from __future__ import annotations

import json
from pathlib import Path

from align.config import load_config
from align.pipeline import run_pipeline
from tests.conftest import SMOKE, run_cli

PLUGIN = Path(__file__).resolve().parent.parent / "rewards" / "plugins" / "slow_check.py"
RECORDER = Path(__file__).resolve().parent / "plugins" / "recorder.py"


def test_grpo_only_from_fresh_sft_output(smoke_run, tmp_path):
    _, out, _ = smoke_run
    sft_final = out / "00_sft" / "final"
    # SFTTrainer saved output_router_logits=True: generation on padded batches would crash without our fix
    assert json.loads((sft_final / "config.json").read_text())["output_router_logits"] is True
    proc = run_cli(str(SMOKE), f"output_dir={tmp_path}", "--only", "grpo", "--init-from", str(sft_final),
                   "stages.grpo.trainer.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "02_grpo" / "manifest.json").read_text())
    assert m["status"] == "completed" and m["steps"] == 2 and m["input_model"] == str(sft_final)


def test_user_verifier_file_and_failing_verifiers(smoke_run, tmp_path):
    _, out, _ = smoke_run
    log = tmp_path / "calls.jsonl"
    verifiers = (
        "[{name: exact}, {name: retrieval},"
        f" {{name: '{RECORDER}:verify', all_rows: true, weight: 0.5, kwargs: {{log: '{log}'}}}},"
        f" {{name: '{PLUGIN}:boom', all_rows: true}},"
        f" {{name: '{PLUGIN}:hang', all_rows: true, timeout_s: 0.5}}]"
    )
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", f"stages.grpo.verifiers={verifiers}",
                              "stages.grpo.trainer.max_steps=2"])
    rows = run_pipeline(cfg, only="grpo", init_from=out / "01_reasoning" / "final")
    assert rows[0]["steps"] == 2
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) >= 16  # 2 steps x 8 completions, each graded by the user's file verifier
    stats = json.loads((tmp_path / "02_grpo" / "manifest.json").read_text())["metrics"]["verifiers"]
    boom = next(v for k, v in stats.items() if k.endswith("boom"))
    hang = next(v for k, v in stats.items() if k.endswith("hang"))
    assert boom["statuses"] == {"error": boom["n"]} and boom["n"] >= 16
    assert hang["statuses"].get("timeout", 0) >= 1

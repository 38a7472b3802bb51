"""Wall-time cost of MoE telemetry (router hooks), the layer snapshot and routing replay on a GRPO stage, vs all off.

    python bench/moe_overhead.py [--model runs/default/01_reasoning/final] [--steps 40] [--repeats 2]

Runs ``run_pipeline.py configs/default.yaml --only grpo`` from the same model, alternating: (a) ``monitor.telemetry
=false monitor.snapshot=false`` (the anchor), (b) telemetry on, (c) telemetry + snapshot on (the default), each a
fresh child process, and (d) routing replay on with telemetry off (its extra scoring pass and hooks);
``--repeats`` rounds. Reports the median stage wall time (manifest ``wall_time_s``) and the
ratio to the anchor (target <= 1.05 for telemetry).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "off": ["monitor.telemetry=false", "monitor.snapshot=false"],
    "telemetry": ["monitor.telemetry=true", "monitor.snapshot=false"],
    "telemetry+snapshot": ["monitor.telemetry=true", "monitor.snapshot=true"],
    "replay": ["monitor.telemetry=false", "monitor.snapshot=false", "stages.grpo.routing_replay=replay"],
}


def run(model: str, steps: int, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "run_pipeline.py"), "configs/default.yaml", "--only", "grpo", "--init-from",
             model, f"output_dir={tmp}", f"stages.grpo.trainer.max_steps={steps}", "stages.grpo.data.n_heldout=16",
             "stages.grpo.eval.before=false", "stages.grpo.trainer.save_steps=100000", *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        return json.loads(next(Path(tmp).glob("*_grpo/manifest.json")).read_text())["wall_time_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "runs" / "default" / "01_reasoning" / "final"))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"{args.model}: no model there; run the default pipeline first or pass --model DIR")
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for i in range(args.repeats):
        for name, extra in VARIANTS.items():
            times[name].append(run(args.model, args.steps, extra))
            print(f"[{i}] {name:20s} {times[name][-1]:6.1f} s", flush=True)
    anchor = statistics.median(times["off"])
    for name, ts in times.items():
        print(f"{name:20s} median {statistics.median(ts):6.1f} s  ratio {statistics.median(ts) / anchor:.3f}")


if __name__ == "__main__":
    main()

"""Does the default pipeline teach robustly? The whole pipeline with several seeds, held-out accuracy per stage.

    python bench/learning.py [--config configs/default.yaml] [--seeds 0 1 2] [--out runs/learning]

Each seed is one ``run_pipeline.py`` process (``seed=N``: model init, data order, sampling), run one after another
(two torch jobs on 2 cores thrash). Per stage: greedy held-out accuracy after the stage with its 95 % Wilson
interval, and ``before`` (the stage's input model on the same held-out problems). Issue 4's gain is the GRPO
stage's accuracy minus the better of the earlier training stages, all graded on the *GRPO stage's* held-out problems
(each earlier stage's ``final/`` is graded on them here, greedy, by the same verifiers; cached in
``<run>/same_heldout.json``); also shown: ``grpo after - grpo before``. Targets: worst seed >= +5 points, mean >= +10. Stages already completed in ``--out`` are skipped by the pipeline's own hash
check, so an interrupted bench resumes. The preset's training step (``bench/preset_speed.py``) is timed before and
after the runs: the machine's speed moves from day to day, and the wall times with it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from align.ledger import ledger_lines, wilson  # noqa: E402 - the repository root first
from align.report import stage_manifest_paths  # noqa: E402


def stage_results(run_dir: Path) -> dict[str, dict]:
    """stage name -> manifest summary (accuracy after/before, n, wall time) of a finished run folder."""
    out = {}
    for manifest in stage_manifest_paths(run_dir):
        m = json.loads(manifest.read_text())
        met = m.get("metrics", {})
        out[m["stage"]] = {"kind": m["kind"], "after": met.get("heldout_accuracy"),
                           "before": met.get("heldout_accuracy_before"),
                           "n": met.get("heldout_n", 0), "wall_s": m.get("wall_time_s"), "status": m.get("status")}
    return out


def same_heldout(run_dir: Path, config: str, seed: int, overrides: list[str]) -> dict[str, float]:
    """Every training stage's final model graded on the last grpo stage's held-out rows (greedy), cached."""
    cache = run_dir / "same_heldout.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    sys.path.insert(0, str(ROOT))
    from align import evaluation, modeling
    from align.config import load_config
    from align.pipeline import stage_dir_name
    from align.thinking import resolve
    from data_recipes import build_rows

    cfg = load_config(config, [f"seed={seed}", *overrides])
    grpo = [(i, s) for i, s in enumerate(cfg.stages) if s.kind == "grpo"][-1]
    rows = build_rows(grpo[1].data, "heldout", seed, "grpo")
    out = {}
    for i, stage in enumerate(cfg.stages[: grpo[0] + 1]):
        if stage.kind == "eval":
            continue
        final = run_dir / stage_dir_name(i, stage) / "final"
        model, tok = modeling.load_model(final)
        moded = resolve(rows, grpo[1].thinking_default, tok, f"stage {grpo[1].name!r}", str(final))  # as the stage
        out[stage.name] = evaluation.grade_heldout(model, tok, moded, grpo[1].eval.max_new_tokens,
                                                   grpo[1].eval.batch_size)["accuracy"]
    cache.write_text(json.dumps(out))
    return out


def preset_step_ms(steps: int = 10) -> float:
    """The preset's median training step in ms (``bench/preset_speed.py``, batch 32 x 48), in this process."""
    sys.path.insert(0, str(ROOT / "bench"))
    from preset_speed import step_time

    return 1000 * step_time({}, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=str(ROOT / "runs" / "learning"))
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every seed")
    p.add_argument("--summarize-only", action="store_true", help="read the run folders in --out; run nothing")
    args = p.parse_args()

    # The 600-s line is wall time on whatever machine runs this; the same stages took 1.6x longer on one day than on
    # another here (BENCHMARKS.md, session 12). The preset's training step, timed before and after the runs, says
    # which kind of day it was, so wall times of different runs can be compared.
    anchor = [] if args.summarize_only else [preset_step_ms()]
    results, walls = {}, {}
    for seed in args.seeds:
        run_dir = Path(args.out) / f"seed{seed}"
        t0 = time.perf_counter()
        if not args.summarize_only:
            proc = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), args.config, f"seed={seed}",
                                   f"output_dir={run_dir}", *args.overrides], cwd=ROOT)
            if proc.returncode != 0:
                sys.exit(f"seed {seed}: run_pipeline.py exited {proc.returncode}")
        results[seed] = stage_results(run_dir)
        for name, acc in same_heldout(run_dir, args.config, seed, args.overrides).items():
            results[seed][name]["same"] = acc
        walls[seed] = (time.perf_counter() - t0 if not args.summarize_only
                       else sum(r["wall_s"] or 0 for r in results[seed].values()))

    # the gain is the RL stage's (the last grpo stage) over the better of the training stages before it
    stages = [s for s, r in results[args.seeds[0]].items() if r["kind"] != "eval"]
    print(f"\n{'seed':>4}  " + "  ".join(f"{s:>30}" for s in stages) + "  gain vs best earlier  gain vs before  wall s")
    gains, gains_before = [], []
    for seed in args.seeds:
        r = results[seed]
        cells = []
        for s in stages:
            a, b, n = r[s]["after"], r[s]["before"], r[s]["n"]
            lo, hi = wilson(a, n)
            cells.append(f"{a:.3f} [{lo:.2f}-{hi:.2f}] ({b if b is None else round(b, 3)}) {r[s]['same']:.3f}")
        last, earlier = stages[-1], stages[:-1]
        gain = r[last]["after"] - max(r[s]["same"] for s in earlier) if earlier else float("nan")
        gain_before = r[last]["after"] - (r[last]["before"] or 0.0)
        gains.append(gain)
        gains_before.append(gain_before)
        print(f"{seed:>4}  " + "  ".join(f"{c:>30}" for c in cells)
              + f"  {100 * gain:+19.1f}  {100 * gain_before:+13.1f}  {walls[seed]:6.0f}")
    print("after [95% CI] (before) on the stage's own held-out, then on the grpo held-out; gains in points; n = " + ", ".join(f"{s}: {results[args.seeds[0]][s]['n']}" for s in stages))
    print(f"{stages[-1]} gain vs the best earlier stage: mean {100 * statistics.mean(gains):+.1f}, "
          f"worst {100 * min(gains):+.1f} (targets: mean >= +10, worst >= +5)")
    print(f"{stages[-1]} gain vs its input model: mean {100 * statistics.mean(gains_before):+.1f}, "
          f"worst {100 * min(gains_before):+.1f}")
    print(f"pipeline wall time: max {max(walls.values()):.0f} s (target <= 600 s; with --summarize-only: the sum of "
          "stage wall times)")
    if anchor:
        anchor.append(preset_step_ms())
        print(f"machine: the preset's training step (bench/preset_speed.py) {anchor[0]:.1f} ms before the runs, "
              f"{anchor[1]:.1f} ms after")
    for seed in args.seeds:  # the eval stage's skill ledger: every suite x every graded stage, regressions flagged
        for manifest in stage_manifest_paths(Path(args.out) / f"seed{seed}"):
            metrics = json.loads(manifest.read_text()).get("metrics", {})
            ledger = metrics.get("ledger")
            if ledger:
                print(f"\nseed {seed}, skill ledger of {manifest.parent.name}:")
                print("\n".join(ledger_lines(ledger)))
                depth = (metrics["suites"].get("needle") or {}).get("accuracy_by_depth")
                if depth:
                    print("needle by depth (final model): " + ", ".join(f"{float(d):.0%} {a:.3f}" for d, a in depth.items()))


if __name__ == "__main__":
    main()

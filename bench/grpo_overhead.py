"""Wall-time overhead of our grpo stage against a plain TRL GRPO script (bench/plain_grpo.py), same everything.

    python bench/grpo_overhead.py [--model runs/default/00_sft/final] [--steps 60] [--repeats 2]

Three sides run as child processes of this one, alternating (ours, plain, plain-cpu, ours, ...): our stage, the plain
script with TRL's defaults (gradient checkpointing on), and the plain script with align's CPU defaults (checkpointing
off) — ours / plain-cpu is the overhead of what align adds, ours / plain what a user gains. All from the same model dir, on the
same 2-digit +/- prompts, exact-match reward, 32 prompts x 8 completions per step, temperature 0.3, lr 1e-4.
Ours is ``run_pipeline.py configs/default.yaml --only grpo`` with the stage's data/verifiers set to that task and a
16-problem held-out grade (its manifest, verifier pool and finalize included). Each child times, by wrapping TRL's
own methods: generation (``_generate_single_turn``), reward (``_calculate_rewards``), and the rest of the train
loop (log-probs, loss, backward, optimizer: "update"). Printed: per-run wall time of the whole child process and of
``trainer.train``, the medians, and the ratio ours / plain (target <= 1.05).

``--variant KEY=VALUE`` (repeatable) adds overrides to our stage only, to try what makes it faster than the plain
script (e.g. ``model.experts_implementation=batched_mm``, ``threads=2``).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _install_timers(path: str) -> None:
    """Wrap GRPOTrainer's generation / reward / train methods; dump the totals to ``path`` at exit."""
    import atexit

    from trl import GRPOTrainer

    totals = {"generation_s": 0.0, "reward_s": 0.0, "train_s": 0.0}

    def wrap(name: str, key: str) -> None:
        orig = getattr(GRPOTrainer, name)

        def timed(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return orig(self, *a, **k)
            finally:
                totals[key] += time.perf_counter() - t0

        setattr(GRPOTrainer, name, timed)

    wrap("_generate_single_turn", "generation_s")
    wrap("_calculate_rewards", "reward_s")
    wrap("train", "train_s")
    atexit.register(lambda: Path(path).write_text(json.dumps(totals)))


def child(kind: str, timings: str, argv: list[str]) -> None:
    """Run one side with timers: ``ours`` = run_pipeline.py, ``plain`` = bench/plain_grpo.py."""
    sys.path.insert(0, str(ROOT))
    _install_timers(timings)
    script = ROOT / ("run_pipeline.py" if kind == "ours" else "bench/plain_grpo.py")  # plain and plain-cpu
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")


def ours_args(model: str, out: str, steps: int, variant: list[str]) -> list[str]:
    return ["configs/default.yaml", "--only", "grpo", "--init-from", model, "--overwrite", f"output_dir={out}",
            "stages.grpo.data.sources=[{recipe: arithmetic, kwargs: {digits: 2, ops: ['+', '-']}}]",
            "stages.grpo.verifiers=[{name: exact}]", "stages.grpo.data.n_heldout=16",
            "stages.grpo.eval.before=false", f"stages.grpo.trainer.max_steps={steps}",
            "stages.grpo.trainer.save_steps=100000",
            # the plain script's settings, key by key
            "stages.grpo.trainer.per_device_train_batch_size=256", "stages.grpo.trainer.num_generations=8",
            "stages.grpo.trainer.max_completion_length=8", "stages.grpo.trainer.temperature=0.3",
            "stages.grpo.trainer.learning_rate=1e-4", "stages.grpo.trainer.lr_scheduler_type=cosine",
            "stages.grpo.trainer.warmup_steps=20", "stages.grpo.trainer.logging_steps=20",
            "stages.grpo.trainer.beta=0.0", "stages.grpo.router.aux_loss_coef=0.0", *variant]


def run_side(kind: str, model: str, steps: int, variant: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        timings = str(Path(tmp) / "t.json")
        argv = (ours_args(model, tmp + "/run", steps, variant) if kind == "ours" else
                [model, tmp + "/run", str(steps), "0", *(["cpu-defaults"] if kind == "plain-cpu" else [])])
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", kind, timings, "--", *argv], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"{kind} failed:\n{proc.stderr[-3000:]}")
        t = json.loads(Path(timings).read_text())
    t["wall_s"] = wall
    t["update_s"] = t["train_s"] - t["generation_s"] - t["reward_s"]
    return t


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sep = sys.argv.index("--")
        child(sys.argv[2], sys.argv[3], sys.argv[sep + 1:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "runs" / "default" / "00_sft" / "final"))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variant", action="append", default=[], help="override for our stage only (repeatable)")
    args = p.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"{args.model}: no model there; run `python run_pipeline.py --only sft` first or pass --model DIR")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    runs: dict[str, list[dict[str, float]]] = {"ours": [], "plain": [], "plain-cpu": []}
    for i in range(args.repeats):
        for kind in runs:
            t = run_side(kind, args.model, args.steps, args.variant)
            runs[kind].append(t)
            print(f"[{i}] {kind:9s} wall {t['wall_s']:6.1f} s | train {t['train_s']:6.1f} s = generation "
                  f"{t['generation_s']:5.1f} + reward {t['reward_s']:5.2f} + update {t['update_s']:5.1f}", flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    print(f"\nmedian over {args.repeats} (steps {args.steps}, variant {args.variant or 'none'}):")
    for m in ("wall_s", "train_s", "generation_s", "reward_s", "update_s"):
        print(f"  {m:13s} ours {med['ours'][m]:7.2f}  plain {med['plain'][m]:7.2f}  plain-cpu {med['plain-cpu'][m]:7.2f}"
              f"  ours/plain {med['ours'][m] / max(med['plain'][m], 1e-9):.3f}"
              f"  ours/plain-cpu {med['ours'][m] / max(med['plain-cpu'][m], 1e-9):.3f}")
    print(f"wall-time ratio ours / plain (TRL defaults): {med['ours']['wall_s'] / med['plain']['wall_s']:.3f}; "
          f"ours / plain-cpu (same settings): {med['ours']['wall_s'] / med['plain-cpu']['wall_s']:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()

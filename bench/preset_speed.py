"""Training-step time of the tiny DeepSeek-V4 preset vs the same model with V4's default mHC settings.

    python bench/preset_speed.py [--steps 20] [--layouts]

Anchor (same run): hc_mult=4, hc_sinkhorn_iters=20 (DeepSeek-V4 defaults). Ours: hc_mult=2, 3 Sinkhorn iterations.
Batch 32 x 48 random tokens, AdamW, fp32, median step after 3 warm-up steps.
``--layouts``: also the layouts measured for the needle's onset (``bench/retrieval_layout.py``: 8 heads of 16, one
residual stream) and the preset at 1 and 2 torch threads, each against the preset at 2 threads.
``--shapes``: also the preset at the batch shapes the pipeline's stages train on (64 two-digit rows of ~12 tokens,
16 short needle rows of ~100, 8 needle rows of 400...), each against the 32 x 48 anchor; with ``--ranks 2``, also half
of each batch at 1 thread (what one rank of a 2-process run on 2 cores computes), against the whole batch at 2 threads.
``--cheaper``: the two cheaper layouts the preset turned down for learnability (one residual stream, ``hc_mult`` 1;
sliding-window attention in all three layers instead of compressed-sparse attention in the last) and both, at three
stage shapes, each against the preset at the same shape.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def step_time(overrides: dict, steps: int, threads: int = 2, shape: tuple[int, int] = (32, 48)) -> float:
    from transformers import AutoModelForCausalLM

    from align import modeling

    torch.set_num_threads(threads)
    tok = modeling.build_tokenizer()
    cls, kwargs = modeling.PRESETS["tiny-deepseek-v4"]((len(tok) + 7) // 8 * 8, tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cls(**{**kwargs, **overrides}))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randint(10, 100, shape)
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--layouts", action="store_true", help="also the onset layouts and 1 vs 2 threads")
    p.add_argument("--shapes", action="store_true", help="also the preset at the stages' batch shapes")
    p.add_argument("--ranks", type=int, default=1, help="with --shapes: also 1/N of each batch at 1 thread")
    p.add_argument("--cheaper", action="store_true", help="also the cheaper layouts at three stage shapes")
    args = p.parse_args()
    anchor = step_time({"hc_mult": 4, "hc_sinkhorn_iters": 20}, args.steps)
    ours = step_time({}, args.steps)
    print(f"V4 default mHC (4, 20): {anchor * 1000:.1f} ms/step | preset (2, 3): {ours * 1000:.1f} ms/step | "
          f"ratio {ours / anchor:.2f}")
    if args.layouts:
        for name, overrides, threads in [("8 heads of 16", {"num_attention_heads": 8, "head_dim": 16}, 2),
                                         ("hc_mult 1", {"hc_mult": 1}, 2), ("preset, 1 thread", {}, 1)]:
            t = step_time(overrides, args.steps, threads)
            print(f"{name}: {t * 1000:.1f} ms/step | ratio to the preset at 2 threads {t / ours:.2f}")
    if args.shapes:
        for shape in [(64, 16), (128, 16), (16, 64), (32, 64), (8, 100), (16, 100), (32, 100), (8, 200), (8, 400)]:
            t = step_time({}, args.steps, shape=shape)
            print(f"batch {shape[0]} x {shape[1]} tokens: {t * 1000:.1f} ms/step | ratio to 32 x 48 {t / ours:.2f}")
            if args.ranks > 1:
                part = step_time({}, args.steps, threads=1, shape=(shape[0] // args.ranks, shape[1]))
                print(f"  one rank of {args.ranks} ({shape[0] // args.ranks} x {shape[1]}, 1 thread): "
                      f"{part * 1000:.1f} ms/step | ratio to the whole batch at 2 threads {part / t:.2f}")
    if args.cheaper:
        sliding = {"layer_types": ["sliding_attention"] * 3}
        variants = [("hc_mult 1", {"hc_mult": 1}), ("all sliding", sliding), ("both", {"hc_mult": 1, **sliding})]
        # 2-digit rows, short needle traces padded to their batch's longest, 3-digit traces
        for shape in [(64, 16), (16, 120), (32, 64)]:
            base = step_time({}, args.steps, shape=shape)
            ratios = " | ".join(f"{name} {step_time(o, args.steps, shape=shape) / base:.2f}" for name, o in variants)
            print(f"batch {shape[0]} x {shape[1]} tokens: preset {base * 1000:.1f} ms/step | ratio to it: {ratios}")


if __name__ == "__main__":
    main()

"""Training-step time of the tiny DeepSeek-V4 preset vs the same model with V4's default mHC settings.

    python bench/preset_speed.py [--steps 20]

Anchor (same run): hc_mult=4, hc_sinkhorn_iters=20 (DeepSeek-V4 defaults). Ours: hc_mult=2, 3 Sinkhorn iterations.
Batch 32 x 48 random tokens, AdamW, fp32, median step after 3 warm-up steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def step_time(overrides: dict, steps: int) -> float:
    from transformers import AutoModelForCausalLM

    from align import modeling

    tok = modeling.build_tokenizer()
    cls, kwargs = modeling.PRESETS["tiny-deepseek-v4"]((len(tok) + 7) // 8 * 8, tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cls(**{**kwargs, **overrides}))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randint(10, 100, (32, 48))
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
    args = p.parse_args()
    anchor = step_time({"hc_mult": 4, "hc_sinkhorn_iters": 20}, args.steps)
    ours = step_time({}, args.steps)
    print(f"V4 default mHC (4, 20): {anchor * 1000:.1f} ms/step | preset (2, 3): {ours * 1000:.1f} ms/step | "
          f"ratio {ours / anchor:.2f}")


if __name__ == "__main__":
    main()

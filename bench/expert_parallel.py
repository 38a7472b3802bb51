"""Expert parallelism vs ZeRO-3 leaf sharding: per-rank model-state bytes and step time, measured side by side.

    python bench/expert_parallel.py [--preset tiny-qwen3-moe|tiny-deepseek-v4] [--hidden 256] [--dtype bf16|fp32]
                                    [--steps 6]

A preset (tiny Qwen3-MoE by default; the embedded DeepSeek-V4 with ``--preset tiny-deepseek-v4``) widened so routed
experts dominate (hidden ``--hidden``, expert FFN 2 x hidden). Four settings, each trained for ``--steps`` steps
through ``deepspeed.initialize`` on the same batches (batch 2 x 32 tokens per rank): 1 process (the anchor), ZeRO-3 x 2
with the MoE blocks as ZeRO-3 leaf modules (every rank gathers a whole block each forward), and AutoEP with
``autoep_size`` 2 + ZeRO-2 or ZeRO-3 x 2 (each rank owns half of every expert-parallel layer's experts; tokens reach
them by all-to-all; DeepSeek-V4's hash-routed layer stays on ZeRO). Bytes are counted as ``bench/zero_memory.py`` counts them (every tensor the engine holds
before the last optimizer step, each storage once; the routed-expert share in brackets); step time is the median
wall time of a forward + backward + optimizer step after the first two. Ratios are against the 1-process anchor of
the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from zero_memory import ds_config, measure  # noqa: E402 - one byte counter and one config, shared with the ZeRO bench


def worker(args: argparse.Namespace) -> None:
    import deepspeed

    from align import distributed, expert_parallel, modeling, moe

    distributed.init_distributed()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if distributed.is_main_process():
        modeling.build_base(args.preset, widened(args), 0, args.model_dir)
    distributed.barrier()
    model, _ = modeling.load_model(args.model_dir)
    model.config.output_router_logits = False
    base = ds_config(args.zero, args.hidden, args.dtype)
    if args.ep > 1:
        expert_parallel.install_autoep()
        family = expert_parallel.model_config(args.model_dir, None, {})
        config = expert_parallel.deepspeed_config(base, args.ep, expert_parallel.autoep_preset(family, args.preset),
                                                  family)
        config["optimizer"]["params"] = {"lr": 1e-4, "torch_adam": True}
    else:
        config = base
        if args.zero == 3:
            moe.mark_zero3_leaves(model)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    ep_params = {f"{layer}.{n}" for layer, m in expert_parallel.ep_layers(engine.module).items()
                 for n, _ in m.named_parameters()}
    gen = torch.Generator().manual_seed(rank)
    times, result = [], None
    for step in range(args.steps):
        ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=gen)
        t0 = time.perf_counter()
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        if step == args.steps - 1:
            owned = {}
            for n, p in engine.module.named_parameters():
                if hasattr(p, "ds_tensor"):
                    owned[n] = p.ds_tensor.numel()
                elif n in ep_params:
                    owned[n] = p.numel()  # this rank's experts, whole (the expert-data-parallel group is 1 rank)
                else:
                    owned[n] = p.numel() / (world if args.zero in (1, 2) else 1)
            share = sum(v for n, v in owned.items() if ".experts." in n) / sum(owned.values())
            result = measure(engine, share)
        engine.step()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    result.update(rank=rank, world=world, step_s=statistics.median(times) if times else None)
    # one file per rank: two ranks printing to one pipe can interleave their lines
    Path(args.result_dir, f"rank{rank}.json").write_text(json.dumps(result))
    distributed.shutdown()


def widened(args: argparse.Namespace) -> dict:
    """The preset's overrides: hidden ``--hidden``, every FFN 2 x hidden."""
    ffn = 2 * args.hidden
    return {"hidden_size": args.hidden, "moe_intermediate_size": ffn,
            **({"intermediate_size": ffn} if args.preset == "tiny-qwen3-moe" else {})}


def run(nproc: int, zero: int, ep: int, args: argparse.Namespace) -> list[dict]:
    import tempfile

    with tempfile.TemporaryDirectory() as results:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), __file__, "--worker",
               "--zero", str(zero), "--ep", str(ep), "--hidden", str(args.hidden), "--dtype", args.dtype,
               "--steps", str(args.steps), "--preset", args.preset, "--model-dir", args.model_dir, "--result-dir", results]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{nproc} x ZeRO-{zero} ep {ep} failed:\n{proc.stderr[-3000:]}")
        return [json.loads(f.read_text()) for f in sorted(Path(results).glob("rank*.json"))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny-qwen3-moe", choices=("tiny-qwen3-moe", "tiny-deepseek-v4"))
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--model-dir", default=None, help="default: /tmp/align_bench_expert_parallel_<preset>")
    p.add_argument("--zero", type=int, default=0)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.model_dir = args.model_dir or f"/tmp/align_bench_expert_parallel_{args.preset}"
    if args.worker:
        from align.distributed import exit_process

        worker(args)
        exit_process(0)
    rows = [("1 process", run(1, 0, 1, args)), ("ZeRO-3 x 2, leaf blocks", run(2, 3, 1, args)),
            ("EP 2 + ZeRO-2 x 2", run(2, 2, 2, args)), ("EP 2 + ZeRO-3 x 2", run(2, 3, 2, args))]
    anchor = rows[0][1][0]
    mib = 1 << 20
    print(f"{args.preset}, hidden {args.hidden}, {args.dtype}; per-rank MiB (routed experts in brackets); "
          "ratios against the 1-process anchor of this run")
    print("| setting | rank | parameters | gradients | optimizer | total | / 1 process | experts / 1 process "
          "| step s | / 1 process |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, results in rows:
        for r in results:
            b, e = r["bytes"], r["expert_bytes"]
            cells = " | ".join(f"{b[k] / mib:.2f} ({e[k] / mib:.2f})" for k in ("parameters", "gradients", "optimizer"))
            experts = sum(e.values()) / sum(anchor["expert_bytes"].values())
            print(f"| {name} | {r['rank']} | {cells} | {r['total'] / mib:.2f} | {r['total'] / anchor['total']:.3f} | "
                  f"{experts:.3f} | {r['step_s']:.3f} | {r['step_s'] / anchor['step_s']:.2f} |")


if __name__ == "__main__":
    main()

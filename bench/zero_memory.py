"""Per-rank model-state bytes under 1 process, ZeRO-2 x 2 and ZeRO-3 x 2 on the same MoE, experts separately.

    python bench/zero_memory.py [--preset tiny-deepseek-v4] [--hidden 256] [--dtype bf16|fp32]

Each setting trains two steps of the same model through ``deepspeed.initialize`` (1 process: ZeRO stage 0) and, just
before the second optimizer step (gradients and Adam state both alive), walks every tensor the engine holds: the
model's parameters (their ZeRO-3 partitions), gradients and gradient buffers, and the optimizer (fp32 master copies
and Adam moments). Storage is counted once, by what it backs. Bytes of flat, partitioned buffers are split between
experts and the rest by the share of this rank's partition that routed-expert parameters occupy. Prints each
setting's per-rank bytes and the ratio to the single process (target for ZeRO-3 x 2: <= 0.55).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _tensors(obj: Any, path: str, seen: set[int], out: list[tuple[str, torch.Tensor]], depth: int = 0) -> None:
    """Every tensor reachable from ``obj`` through attributes, lists, tuples and dicts (with the path that found it)."""
    if depth > 6 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out.append((path, obj))
        if obj.grad is not None:
            out.append((path + ".grad", obj.grad))
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _tensors(v, f"{path}[{k}]", seen, out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensors(v, f"{path}[{i}]", seen, out, depth + 1)
    elif isinstance(obj, torch.optim.Optimizer):  # the wrapped torch optimizer: Adam moments, fp32 master weights
        _tensors(obj.state, path + ".state", seen, out, depth + 1)
        _tensors(obj.param_groups, path + ".param_groups", seen, out, depth + 1)
    elif type(obj).__module__.startswith("deepspeed") and not isinstance(obj, torch.nn.Module):
        for k, v in vars(obj).items():  # DeepSpeed's optimizer wrappers: flat partitions, gradient buffers
            _tensors(v, f"{path}.{k}", seen, out, depth + 1)


def classify(path: str) -> str:
    """Category of a tensor found inside the optimizer, by the attribute that holds it."""
    p = path.lower()
    if "ipg" in p or "bucket" in p:
        return "buffers"  # communication buckets: sized by the config (reduce_bucket_size), not by the model
    # Adam moments, and fp32 master weights (the wrapped optimizer's param groups hold them)
    if ".state[" in p or "exp_avg" in p or "fp32" in p or "master" in p or "param_groups" in p:
        return "optimizer"
    if "grad" in p:
        return "gradients"
    return "parameters"


def measure(engine: Any, expert_share: float) -> dict[str, Any]:
    """Bytes per category on this rank. Expert bytes: exact for parameters and their gradients (by the size of each
    expert parameter's view into its storage), by this rank's expert share for flat partitioned buffers."""
    found: list[tuple[str, torch.Tensor]] = []
    expert_view_bytes: dict[int, int] = {}
    for name, p in engine.module.named_parameters():
        t = getattr(p, "ds_tensor", None)
        for path, tensor in ((f"param:{name}", t if t is not None else p.data), (f"grad:{name}", p.grad)):
            if tensor is None:
                continue
            found.append((path, tensor))
            if ".experts." in name:
                key = tensor.untyped_storage().data_ptr()
                expert_view_bytes[key] = expert_view_bytes.get(key, 0) + tensor.numel() * tensor.element_size()
    _tensors(engine.optimizer, "optimizer", set(), found)
    counted: set[int] = set()
    totals = {k: 0 for k in ("parameters", "gradients", "optimizer")}
    experts = dict(totals)
    buffers = 0
    for path, t in found:
        if t.device.type == "meta" or t.numel() == 0:
            continue
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in counted or key == 0:
            continue
        counted.add(key)
        kind = "gradients" if path.startswith("grad:") else "parameters" if path.startswith("param:") else classify(path)
        size = storage.nbytes()
        if os.environ.get("EXPLAIN") and size > 1 << 20:
            print(f"EXPLAIN {kind:<10} {size / (1 << 20):9.2f} MiB {t.dtype} {path}", file=sys.stderr)
        if kind == "buffers":
            buffers += size
            continue
        totals[kind] += size
        if path.startswith(("param:", "grad:")):
            experts[kind] += min(size, expert_view_bytes.get(key, 0))
        else:
            experts[kind] += int(size * expert_share)
    return {"bytes": totals, "expert_bytes": experts, "total": sum(totals.values()), "buffers": buffers}


def ds_config(zero: int, hidden: int, dtype: str) -> dict[str, Any]:
    """The DeepSpeed config of these benches: batch 2, torch AdamW, ZeRO ``zero`` with bucket sizes as HF's
    ``auto`` sets them (hidden^2, not DeepSpeed's 5e8-element defaults)."""
    return {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
            "zero_optimization": {"stage": zero, "reduce_bucket_size": hidden**2, "allgather_bucket_size": hidden**2,
                                  "stage3_prefetch_bucket_size": int(0.9 * hidden**2)},
            "bf16": {"enabled": dtype == "bf16"}}


def worker(args: argparse.Namespace) -> None:
    import deepspeed

    from align import distributed, modeling, moe

    distributed.init_distributed()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if distributed.is_main_process():
        modeling.build_base(args.preset, {"hidden_size": args.hidden, "moe_intermediate_size": 2 * args.hidden}, 0,
                            args.model_dir)
    distributed.barrier()
    model, _ = modeling.load_model(args.model_dir)
    moe.mark_zero3_leaves(model)
    config = ds_config(args.zero, args.hidden, args.dtype)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    gen = torch.Generator().manual_seed(rank)
    for step in range(2):
        ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=gen)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        if step == 1:
            # this rank's share of expert parameters (exact per parameter, partitioned under ZeRO-3)
            owned = {n: (p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() / (world if args.zero == 2 else 1))
                     for n, p in engine.module.named_parameters()}
            share = sum(v for n, v in owned.items() if ".experts." in n) / sum(owned.values())
            result = measure(engine, share)
            result.update(rank=rank, world=world, zero=args.zero, params=sum(p.ds_numel if hasattr(p, "ds_numel")
                          else p.numel() for p in engine.module.parameters()))
            print("RESULT " + json.dumps(result), flush=True)
        engine.step()
    distributed.shutdown()


def run(nproc: int, zero: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), __file__, "--worker",
           "--zero", str(zero), "--preset", args.preset, "--hidden", str(args.hidden), "--dtype", args.dtype,
           "--model-dir", args.model_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{nproc} x ZeRO-{zero} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RESULT ")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny-deepseek-v4")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--model-dir", default="/tmp/align_bench_zero_memory")
    p.add_argument("--zero", type=int, default=0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        from align.distributed import exit_process

        worker(args)
        exit_process(0)
    rows = [("1 process", run(1, 0, args)), ("ZeRO-2 x 2", run(2, 2, args)), ("ZeRO-3 x 2", run(2, 3, args))]
    anchor = rows[0][1][0]["total"]
    mib = 1 << 20
    print(f"{args.preset} (hidden {args.hidden}, {rows[0][1][0]['params'] / 1e6:.2f}M parameters), {args.dtype}; "
          "per-rank MiB (experts in brackets); ratio = per-rank model states / 1 process")
    print(f"{'setting':<12} {'rank':>4} {'parameters':>18} {'gradients':>18} {'optimizer':>18} {'total':>9} {'ratio':>6}"
          f" {'buckets':>8}")
    for name, results in rows:
        for r in results:
            b, e = r["bytes"], r["expert_bytes"]
            cells = " ".join(f"{b[k] / mib:8.2f} ({e[k] / mib:6.2f})" for k in ("parameters", "gradients", "optimizer"))
            print(f"{name:<12} {r['rank']:>4} {cells} {r['total'] / mib:9.2f} {r['total'] / anchor:6.3f}"
                  f" {r['buffers'] / mib:8.2f}")
    worst = max(r["total"] for r in rows[2][1]) / anchor
    print(f"ZeRO-3 x 2, worst rank / 1 process: {worst:.3f} (target <= 0.55: {'met' if worst <= 0.55 else 'NOT met'})")


if __name__ == "__main__":
    main()

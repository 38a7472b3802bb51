"""Multi-process runs, in one place: process group, ranks, ZeRO stage, the ZeRO-3 start-up self-test, launching.

The same code runs on CPUs (gloo; DeepSpeed's CPU accelerator) and GPUs (nccl). What differs on CPU is decided here:
the backend, and ``use_cpu=True`` in the trainer arguments (without it HF takes the world size as 1 on a CPU-only
machine and DeepSpeed's batch-size assertion fails). The process group is started before any model is
loaded: under ZeRO-3, ``from_pretrained`` (ours and TRL's reference model) needs it.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
SELF_TEST_EXIT = 3
"""Exit status of a rank whose ZeRO-3 self-test timed out (a would-be hang)."""


class DistributedError(RuntimeError):
    """A multi-process set-up that cannot work (mismatched collectives, a hang caught by the self-test...)."""


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed)."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Number of ranks of this launch (1 when not launched as several processes)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> bool:
    """Start the process group when launched on several ranks and none exists yet: gloo on CPU, nccl on GPUs.
    Returns True when distributed."""
    import torch.distributed as dist

    if world_size() <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def barrier() -> None:
    """Wait for every rank (no-op when not distributed): rank 0 writes shared files, the others read them after."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Tear the process group down on every rank at the end of a run (after a last barrier), before the rank exits
    through ``exit_process``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a rank of a multi-process run: Python's exit handlers, flush, then ``os._exit``.

    Under load, a CPU rank's interpreter teardown sometimes aborted after all work was done ("terminate called without
    an active exception", exit -6; most likely DeepSpeed's shared-memory comm op), and the launcher reported the
    finished job as failed: 1 in 6 runs with the cores busy, also after ``shutdown``; 0 in 8 with this. Skipping the
    C++ static destructors avoids it. Single-process runs exit normally."""
    if world_size() <= 1:
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()  # Python-level exit handlers (verifier pool, logging) still run
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def device_args() -> dict[str, Any]:
    """Trainer arguments that depend on the hardware: CPU runs say ``use_cpu`` (also under DeepSpeed, where it makes
    the world size right) and train in fp32; GPUs use bf16 where supported."""
    cpu = not torch.cuda.is_available()
    return {"use_cpu": cpu, "bf16": False if cpu else torch.cuda.is_bf16_supported()}


def ds_config_path() -> Path | None:
    """The DeepSpeed JSON this process was launched with, or None."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    return Path(path) if path else None


def zero_stage() -> int | None:
    """The DeepSpeed ZeRO stage this process was launched with (``accelerate launch`` with a DeepSpeed config), or
    None when DeepSpeed is not in use. Read from the launcher's environment, so it is known before any model is
    loaded (reference models are wrapped while the trainer is built)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        return int(os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path:
        try:
            return int(json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage", 0))
        except (OSError, ValueError) as exc:
            raise DistributedError(f"DeepSpeed config {path}: unreadable ({exc})") from exc
    return 0


# ------------------------------------------------------------------------------------------ ZeRO-3 self-test


def _abort_hung(rank: int, timeout_s: float) -> None:
    logger.error(
        "rank %d: the ZeRO-3 start-up self-test (one forward/backward, ranks routed to different experts) did not "
        "finish in %.0f s: the ranks are waiting on collectives the others never join. This is what a per-expert MoE "
        "block that is not a ZeRO-3 leaf module does (each rank gathers only the experts its tokens chose). Remedy: "
        "align.moe.mark_zero3_leaves(model) on the model (align does it for every structurally found MoE block; "
        "a block it cannot find needs a `gate`/`router` child next to `experts`), or run with ZeRO-2.",
        rank, timeout_s,
    )
    sys.stderr.flush()
    os._exit(SELF_TEST_EXIT)


def zero3_self_test(engine: Any, timeout_s: float = 120.0, seq_len: int = 2) -> dict[str, Any]:
    """One training forward/backward through the DeepSpeed ZeRO-3 ``engine`` where every rank feeds different token
    ids (so the ranks route to different experts), bounded by ``timeout_s``; the gradients are then dropped.

    A hang (ranks waiting on collectives the others never join: parameter gathers in forward or backward, gradient
    reduce-scatters) ends the process with exit status ``SELF_TEST_EXIT`` and a message naming the cause and the
    remedy; a collective error is re-raised as ``DistributedError``. Returns the experts each MoE layer used on each
    rank and whether the ranks' choices differed (a couple of tokens per rank, so that they usually do).
    """
    import torch.distributed as dist

    from align.moe import find_moe_blocks, router_of

    model = engine.module
    rank, world = dist.get_rank(), dist.get_world_size()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    gen = torch.Generator().manual_seed(9173 + 31 * rank)
    ids = torch.randint(0, config.vocab_size, (1, seq_len), generator=gen).to(engine.device)
    used: dict[str, list[int]] = {}
    handles = []
    from align.expert_parallel import is_ep_layer

    for name, block in find_moe_blocks(model):
        router = router_of(block)[1]

        def record(_m: Any, _i: Any, out: Any, name: str = name, ep: bool = is_ep_layer(block)) -> None:
            if ep:  # AutoEP's router: (top_scores, selected experts, counts per expert)
                idx = out[1]
            else:
                idx = out[-1] if isinstance(out, tuple) else out.topk(getattr(config, "num_experts_per_tok", 1), -1)[1]
            used[name] = sorted(set(idx.reshape(-1).tolist()))

        handles.append(router.register_forward_hook(record))
    # said before the probe: a collective mismatch can also abort the process inside gloo (SIGABRT), before any
    # Python handler or the watchdog could name the cause
    logger.info("rank %d: ZeRO-3 start-up self-test: one forward/backward, ranks routed to different experts (a hang "
                "or abort from here on means an MoE block that is not a ZeRO-3 leaf module; remedy: "
                "align.moe.mark_zero3_leaves)", rank)
    sys.stderr.flush()
    watchdog = threading.Timer(timeout_s, _abort_hung, args=(rank, timeout_s))
    watchdog.daemon = True
    watchdog.start()
    try:
        loss = engine(input_ids=ids, labels=ids, use_cache=False).loss
        engine.backward(loss)
        dist.barrier()
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, used)
    except Exception as exc:  # a collective mismatch surfaces as an error on some backends
        raise DistributedError(
            f"rank {rank}: the ZeRO-3 start-up self-test failed ({type(exc).__name__}: {exc}). If the model has a "
            "per-expert MoE block that align did not find, make it a ZeRO-3 leaf module (align.moe.mark_zero3_leaves)."
        ) from exc
    finally:
        watchdog.cancel()
        for h in handles:
            h.remove()
    engine.optimizer.zero_grad(set_to_none=True)  # the probe's gradients never reach an optimizer step
    differ = any(g != gathered[0] for g in gathered[1:])
    logger.info("ZeRO-3 self-test passed on %d ranks in one forward/backward (%d MoE layers; ranks routed to "
                "different experts: %s)", world, len(used), differ)
    return {"ranks": world, "experts_by_rank": gathered, "ranks_differ": differ, "loss": float(loss)}


# ------------------------------------------------------------------------------------------ launching


def launch_command(script_args: list[str], nproc: int, zero: int | None, ds_config: Path | None = None) -> list[str]:
    """``accelerate launch`` command running ``run_pipeline.py script_args`` on ``nproc`` processes with our config
    for ZeRO ``zero`` (2 or 3; None or 0: plain DDP); ``ds_config`` replaces our DeepSpeed JSON (expert parallelism
    writes its own, ``align.expert_parallel.deepspeed_config``)."""
    name = {None: "ddp", 0: "ddp", 2: "zero2", 3: "zero3"}.get(zero)
    if name is None:
        raise DistributedError(f"distributed.zero {zero!r}: use 0 (plain DDP), 2 or 3")
    cfg = REPO / "configs" / "accelerate" / f"{name}.yaml"
    # the accelerate YAMLs name their DeepSpeed JSON relative to the repository; absolute here, from any directory
    ds_json = ds_config or REPO / "configs" / "deepspeed" / f"{name}.json"
    ds = ["--deepspeed_config_file", str(ds_json)] if name != "ddp" else []
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg), *ds,
            "--num_processes", str(nproc), str(REPO / "run_pipeline.py"), *script_args]


def run_launched(cmd: list[str]) -> int:
    """Run one multi-process job (a stage); returns its exit status. ``ALIGN_LAUNCHED`` keeps the launched ranks from
    launching again."""
    logger.info("launching: %s", shlex.join(cmd))
    env = {**os.environ, "ALIGN_LAUNCHED": "1"}
    return subprocess.run(cmd, env=env, cwd=os.getcwd(), check=False).returncode

"""One live run per run folder.

A second ``run_pipeline`` on the same ``output_dir`` used to treat the first run's ``running`` manifest as a killed
stage to resume: both trained into one folder and both wrote ``final/``. The live run now holds an exclusive
``flock`` on ``<run>/.align.lock`` and writes its pid, host, start time and command line into that file. The kernel
drops a ``flock`` when its holder dies, ``kill -9`` included, so a lock left by a dead run is stale by construction and
is taken over (with a log line naming the dead holder). A refused run names the holder and exits before any stage
(and any weight) is touched.

Multi-process runs: rank 0 takes the lock and tells the other ranks whether it got it; the orchestrator
(``--nproc``) takes it once and passes it to its per-stage jobs through ``ALIGN_RUN_LOCK``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".align.lock"
LOCK_ENV = "ALIGN_RUN_LOCK"
"""Set to the run folder while this process (or its launching parent) holds its lock."""


class RunLockError(RuntimeError):
    """The run folder is held by another live run."""


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process (its lock file is unreadable)"
    if not info:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} (started {started}: {info.get('command')})"


def _acquire(run_dir: Path) -> int:
    """Take the lock (returns its fd) or raise RunLockError naming the holder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunLockError(f"output_dir {run_dir}: exists and is not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockError(
            f"{run_dir} is in use by {_holder_text(path)}; wait for that run to end (or stop it), or set output_dir "
            "to another folder"
        ) from None
    previous = os.read(fd, 1 << 16).decode(errors="replace").strip()
    if previous:  # the file still names a holder: that run died without releasing (kill -9, node crash)
        logger.warning("%s: taking over a stale lock left by %s", run_dir, _holder_text(path))
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    os.fsync(fd)
    return fd


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # an empty file = released cleanly
    os.close(fd)  # closing drops the flock


@contextlib.contextmanager
def hold_run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the body; re-entrant within a process and its launched children."""
    from align.distributed import is_main_process, world_size

    key = str(Path(run_dir).resolve())
    if os.environ.get(LOCK_ENV) == key:
        yield
        return
    fd, error = None, None
    if is_main_process():
        try:
            fd = _acquire(Path(run_dir))
        except RunLockError as exc:
            error = str(exc)
    if world_size() > 1:  # every rank learns rank 0's outcome, so none trains when the lock was refused
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
    if error is not None:
        raise RunLockError(error)
    os.environ[LOCK_ENV] = key
    try:
        yield
    finally:
        os.environ.pop(LOCK_ENV, None)
        if fd is not None:
            _release(fd)

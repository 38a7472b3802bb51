"""Worker processes that run verifier calls where they can be killed.

Math-Verify's timeouts use ``signal.alarm``, which only works in a process's main thread (TRL calls reward functions
from wherever it likes, and disables them elsewhere); a C-level computation such as ``9^{9^{9^{9}}}`` ignores signals
altogether. So slow verifiers run in worker processes: each worker handles one call at a time in its main thread, and
the parent kills a worker that overruns its wall-clock budget, records ``timeout`` for that call, and starts a fresh
worker. Many calls run in parallel across workers (``map``).

Workers are fresh interpreters (``python -m rewards.pool FD``) talking over a socketpair: never a ``fork`` of a
process that holds torch threads, and unlike multiprocessing's ``spawn`` they do not re-run the caller's ``__main__``
(a user's unguarded training script would otherwise start again in every worker). They import only ``rewards``.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Any

from rewards.types import Verdict

logger = logging.getLogger(__name__)

IN_WORKER = False  # True inside a pool worker process: verifiers may then call slow code directly


def _die_with_parent(parent_pid: int, kernel_signal: bool) -> None:
    """End this worker when the process that started it dies, ``kill -9`` included.

    Workers run in their own session (a signal to the trainer's process group must not reach them mid-call), so
    nothing else would stop them. On Linux the kernel sends SIGKILL on the parent's death (``PR_SET_PDEATHSIG``),
    which also stops a worker stuck in C code that holds the GIL. That signal fires when the parent *thread* that
    started the worker exits, so it is only asked for when the pool was started from the parent's main thread
    (``kernel_signal``). Everywhere, a daemon thread also checks once a second that the parent is still ours (it covers
    the race where the parent died before the prctl call, and systems without prctl).
    """
    if kernel_signal:
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _worker_main(conn: Connection, parent_pid: int | None = None, kernel_signal: bool = False) -> None:
    global IN_WORKER
    IN_WORKER = True
    if parent_pid is not None:
        _die_with_parent(parent_pid, kernel_signal)
    from rewards.registry import get_verifier

    cache: dict[str, Any] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        spec, chunk = msg
        for task_id, completion, answer, row in chunk:
            try:
                if spec not in cache:
                    cache[spec] = get_verifier(spec)
                verdict = cache[spec](completion, answer, **row)
                out = (verdict.score, verdict.status, verdict.info)
            except BaseException as exc:  # noqa: BLE001 - anything a verifier does becomes an error verdict
                out = (0.0, "error", {"exception": f"{type(exc).__name__}: {str(exc)[:300]}"})
            try:
                conn.send((task_id, out))  # one reply per call: the parent's deadline restarts with each
            except (OSError, ValueError):
                return


class _Worker:
    def __init__(self) -> None:
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rewards.pool", str(child.fileno()), str(os.getpid()),
             "1" if threading.current_thread() is threading.main_thread() else "0"],
            pass_fds=(child.fileno(),), env=env,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        child.close()
        self.conn = Connection(parent.detach())
        self.queue: deque[int] = deque()  # calls sent, in the order the worker runs them
        self.deadline = 0.0

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            self.conn.close()


class VerifierPool:
    """``map(spec, calls, timeout)`` runs ``get_verifier(spec)(completion, answer, **row)`` per call in workers."""

    def __init__(self, workers: int | None = None) -> None:
        if IN_WORKER:  # a pool verifier must run directly in a worker; a nested pool would multiply processes
            raise RuntimeError("a verifier pool cannot be started inside a pool worker")
        from rewards.sandbox import sweep_orphans, sweep_stale_scratch

        sweep_stale_scratch()  # what workers of a killed earlier run left behind
        sweep_orphans()
        self.size = workers or max(1, min(4, os.cpu_count() or 1))
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.restarts = 0

    def _ensure(self) -> None:
        while len(self._workers) < self.size:
            self._workers.append(_Worker())

    def map(self, spec: str, calls: list[tuple[str, str, dict[str, Any]]], timeout: float) -> list[Verdict]:
        """Verdicts for ``calls`` (completion, answer, row) in order; a call over ``timeout`` seconds -> timeout.

        Calls go to workers in small chunks (fewer round trips); each call's budget starts when the previous call of
        its chunk answered, so a hung call is detected within ``timeout`` and the rest of its chunk is re-queued.
        """
        with self._lock:
            self._ensure()
            results: list[Verdict | None] = [None] * len(calls)
            pending: deque[int] = deque(range(len(calls)))
            while pending or any(w.queue for w in self._workers):
                for w in self._workers:
                    if pending and not w.queue:
                        size = max(1, min(16, len(pending) // (2 * len(self._workers))))
                        ids = [pending.popleft() for _ in range(min(size, len(pending)))]
                        try:
                            w.conn.send((spec, [(i, *calls[i]) for i in ids]))
                        except (OSError, ValueError):
                            pending.extendleft(reversed(ids))
                            self._replace(w)
                            continue
                        w.queue.extend(ids)
                        w.deadline = time.monotonic() + timeout
                busy = {w.conn: w for w in self._workers if w.queue}
                if not busy:
                    continue
                wait_s = max(0.0, min(w.deadline for w in busy.values()) - time.monotonic())
                for conn in wait(list(busy), timeout=wait_s):
                    w = busy[conn]
                    try:
                        while conn.poll():
                            task_id, (score, status, info) = conn.recv()
                            results[task_id] = Verdict(score, status, info)
                            if w.queue and w.queue[0] == task_id:
                                w.queue.popleft()
                            w.deadline = time.monotonic() + timeout
                    except (EOFError, OSError):
                        results[w.queue.popleft()] = Verdict(0.0, "error", {"reason": "verifier worker died"})
                        pending.extendleft(reversed(w.queue))
                        self._replace(w)
                now = time.monotonic()
                for w in list(busy.values()):
                    if w.queue and w.deadline <= now:
                        results[w.queue.popleft()] = Verdict(0.0, "timeout", {"budget_s": timeout})
                        pending.extendleft(reversed(w.queue))
                        self._replace(w)
            return [r if r is not None else Verdict(0.0, "error", {"reason": "lost"}) for r in results]

    def _replace(self, w: _Worker) -> None:
        w.queue.clear()
        w.kill()
        self.restarts += 1
        idx = self._workers.index(w)
        self._workers[idx] = _Worker()

    def close(self) -> None:
        """Stop every worker."""
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
            w.kill()
        self._workers = []


_SHARED: VerifierPool | None = None


def shared_pool() -> VerifierPool:
    """The process-wide pool (started on first use, stopped at exit)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = VerifierPool()
        atexit.register(_SHARED.close)
    return _SHARED


if __name__ == "__main__":
    # Run from the importable module, not this ``__main__`` copy: verifiers check ``rewards.pool.IN_WORKER`` to know
    # they are already in a worker (else a pool verifier would start a pool of its own, recursively).
    from rewards import pool as _module

    _module._worker_main(Connection(int(sys.argv[1])), int(sys.argv[2]) if len(sys.argv) > 2 else None,
                         len(sys.argv) > 3 and sys.argv[3] == "1")

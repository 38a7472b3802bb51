"""OS-level sandbox for generated code: bubblewrap (``unshare`` fallback), rlimits, wall-clock kill.

Python-level guards are not a sandbox (STACK-NOTES: generated code could write host files, open sockets, leave
children running). Each run here gets:

- namespaces: user, pid, net, ipc, uts (bwrap ``--unshare-all``): no network at all, and when the run ends the pid
  namespace's init dies, so no child survives it;
- a read-only host: only ``/usr`` (and the ``/lib*``, ``/bin`` links into it) is visible, read-only; ``/tmp`` is a
  private tmpfs; the only writable host path is the run's own scratch dir, mounted at ``/work``;
- a clean environment (``--clearenv``; no secrets from the caller's environment), the system interpreter in isolated
  mode without site-packages (``python3 -I -S``): generated code gets the standard library only;
- an unprivileged, per-run uid (so ``RLIMIT_NPROC`` applies — root is exempt from it — and a fork bomb in one run
  cannot starve another) and rlimits: address space, CPU seconds, processes, file size, open files;
- a wall-clock limit after which the whole process group is killed; stdout/stderr go to files capped by
  ``RLIMIT_FSIZE`` and are decoded with replacement characters.

If neither backend can start, :func:`check_ready` raises :class:`SandboxUnavailable` with a remedy. Nothing here
ever falls back to running code unsandboxed.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SANDBOX_PYTHON = os.environ.get("ALIGN_SANDBOX_PYTHON", "/usr/bin/python3")


class SandboxUnavailable(RuntimeError):
    """No OS-level sandbox can start on this machine; the message says how to fix it."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run."""

    wall_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    max_procs: int = 32
    file_size_mb: int = 8
    open_files: int = 64
    output_chars: int = 65_536


@dataclass(frozen=True)
class RunResult:
    """What a sandboxed program did."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float


def _readable_link_or_bind(path: str) -> list[str]:
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    if os.path.isdir(path):
        return ["--ro-bind", path, path]
    return []


def _bwrap_argv(workdir: str, argv: list[str]) -> list[str]:
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for p in ("/lib", "/lib64", "/bin", "/sbin"):
        cmd += _readable_link_or_bind(p)
    cmd += ["--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev", "--bind", workdir, "/work", "--chdir", "/work",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]
    return cmd + argv


def _unshare_argv(workdir: str, argv: list[str]) -> list[str]:
    # Fallback: new user/pid/net/ipc/uts/mount namespaces; private /tmp and /dev/shm; env cleared by `env -i`.
    # The host stays visible but the per-run uid cannot write to it (root-owned), and the network is gone.
    # cd first: the cwd keeps pointing at the scratch dir after a tmpfs is mounted over /tmp, where it lives.
    inner = "cd " + workdir + " && mount -t tmpfs none /tmp && mount -t tmpfs none /dev/shm 2>/dev/null; exec \"$@\""
    return ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--ipc", "--uts", "--mount",
            "--kill-child", "--", "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8",
            "/bin/sh", "-c", inner, "sh", *argv]


def _preexec(limits: Limits, uid: int):  # noqa: ANN202 - returns a closure for Popen
    def apply() -> None:
        mem = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_procs, limits.max_procs))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb << 20, limits.file_size_mb << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if os.getuid() == 0:  # drop to a throwaway uid: rlimits bind, host files are not ours
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return apply


def _sandbox_uid() -> int:
    return 200_000 + random.randrange(60_000)


def _launch(backend: str, workdir: str, argv: list[str], stdin: bytes, limits: Limits) -> RunResult:
    uid = _sandbox_uid()
    if os.getuid() == 0:
        os.chown(workdir, uid, uid)
    os.chmod(workdir, 0o700)
    cmd = _bwrap_argv(workdir, argv) if backend == "bwrap" else _unshare_argv(workdir, argv)
    with tempfile.TemporaryDirectory(prefix="align-io-") as io:
        paths = [os.path.join(io, n) for n in ("in", "out", "err")]
        Path(paths[0]).write_bytes(stdin)
        t0 = time.monotonic()
        with open(paths[0], "rb") as fin, open(paths[1], "wb") as fout, open(paths[2], "wb") as ferr:
            proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, start_new_session=True,
                                    preexec_fn=_preexec(limits, uid), close_fds=True)
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:  # the whole process group, whatever state it is in
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        wall = time.monotonic() - t0

        def read(p: str) -> str:
            with open(p, "rb") as fh:
                return fh.read(limits.output_chars * 4).decode("utf-8", "replace")[: limits.output_chars]

        return RunResult(None if timed_out else proc.returncode, read(paths[1]), read(paths[2]), timed_out, wall)


@functools.lru_cache(maxsize=1)
def backend() -> str:
    """The working backend ("bwrap" or "unshare"); raises SandboxUnavailable with a remedy if none starts."""
    problems = []
    if not os.path.exists(SANDBOX_PYTHON):
        raise SandboxUnavailable(
            f"sandbox interpreter {SANDBOX_PYTHON} not found. Remedy: install the system Python "
            "(apt-get install python3) or set ALIGN_SANDBOX_PYTHON to a world-readable python3."
        )
    for name in ("bwrap", "unshare"):
        if shutil.which(name) is None:
            problems.append(f"{name}: not installed")
            continue
        try:
            res = _run_in(name, "print(6*7)", b"", Limits(wall_s=10.0))
        except OSError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if res.stdout.strip() == "42":
            return name
        problems.append(f"{name}: exit {res.returncode}: {res.stderr.strip()[:300]}")
    raise SandboxUnavailable(
        "no OS-level sandbox could start, so generated code will not run (it is never run unsandboxed). "
        + "; ".join(problems)
        + ". Remedy: apt-get install bubblewrap (Debian/Ubuntu) and make sure user namespaces are enabled "
        "(sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)."
    )


def check_ready() -> None:
    """Raise SandboxUnavailable (with a remedy) unless a sandbox backend works."""
    backend()


def _run_in(backend_name: str, code: str, stdin: bytes, limits: Limits, files: dict[str, str] | None = None,
            entry: str = "main.py", keep: dict[str, str] | None = None) -> RunResult:
    workdir = tempfile.mkdtemp(prefix="align-sbx-")
    try:
        for fname, text in {entry: code, **(files or {})}.items():
            Path(workdir, fname).write_text(text, encoding="utf-8", errors="surrogatepass")
        if backend_name == "bwrap":
            argv = [SANDBOX_PYTHON, "-I", "-S", f"/work/{entry}"]
        else:  # the scratch dir's path is shadowed by the private /tmp: open the entry relative to the cwd
            boot = f"import sys;sys.argv=[{entry!r}];exec(compile(open({entry!r},encoding='utf-8').read(),{entry!r},'exec'))"
            argv = [SANDBOX_PYTHON, "-I", "-S", "-c", boot]
        result = _launch(backend_name, workdir, argv, stdin, limits)
        for fname in list(keep or {}):
            p = Path(workdir, fname)
            keep[fname] = (  # type: ignore[index]
                p.read_bytes()[: limits.output_chars * 4].decode("utf-8", "replace")
                if p.is_file() and not p.is_symlink() else ""
            )
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_python(code: str, stdin: str = "", limits: Limits | None = None, files: dict[str, str] | None = None,
               entry: str = "main.py", keep: dict[str, str] | None = None) -> RunResult:
    """Run ``entry`` (``code``) with ``files`` beside it in the sandbox; ``keep``'s keys receive the files of those
    names that the program wrote into its scratch dir (at most ``output_chars`` each)."""
    stdin_bytes = stdin.encode("utf-8", "surrogatepass")
    return _run_in(backend(), code, stdin_bytes, limits or Limits(), files, entry, keep)

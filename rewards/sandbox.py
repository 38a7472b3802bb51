"""OS-level sandbox for generated code: bubblewrap (``unshare`` fallback), rlimits, seccomp, wall-clock kill.

Python-level guards are not a sandbox: generated code could write host files, open sockets, leave children running.
Each run here gets:

- namespaces: user, pid, net, ipc, uts (bwrap ``--unshare-all``): no network at all, and when the run ends the pid
  namespace's init dies, so no child survives it; ``--disable-userns``: no nested user namespace (so no nested
  ``unshare`` + ``mount``);
- a seccomp filter (built with libseccomp through ``pyseccomp``, never hand-written BPF) that makes ``ptrace``,
  ``mount``/``umount2``, ``unshare``/``setns``, ``keyctl``/``add_key``/``request_key``, ``bpf``, ``perf_event_open``,
  ``kexec_*``, ``init_module``/``finit_module``/``delete_module``, ``reboot``, ``swapon``/``swapoff``, ``pivot_root``,
  ``chroot``, ``process_vm_readv``/``writev``, ``userfaultfd``, ``open_by_handle_at`` fail with ``EPERM`` (syscalls of
  another architecture, e.g. 32-bit ones, kill the process: libseccomp's default for a foreign arch);
- a read-only host: only ``/usr`` (and the ``/lib*``, ``/bin`` links into it) is visible, read-only; ``/dev`` is
  read-only apart from its device nodes;
- memory: ``/tmp``, ``/dev/shm`` and the scratch dir ``/work`` are tmpfs mounts of a fixed size (``Limits``), and the
  address-space limit is what is left of ``memory_mb`` after them, so files written there count against the same
  budget. ``/work`` is also the per-run scratch-disk quota: the program's files never touch the host disk. Inputs
  enter with ``--file`` from unlinked temporary files, outputs leave through unlinked temporary files, so nothing is
  left on the host even when the calling process is killed mid-run;
- a clean environment: bwrap *itself* starts with only ``PATH`` (``--clearenv`` cleans only the child; the sandbox's
  pid 1 is bwrap, and ``/proc/1/environ`` would otherwise show every secret of the trainer), the system interpreter
  in isolated mode without site-packages (``python3 -I -S``): generated code gets the standard library only;
- an unprivileged, per-run uid (so ``RLIMIT_NPROC`` applies — root is exempt from it — and a fork bomb in one run
  cannot starve another) and rlimits: address space, CPU seconds, processes, file size, open files;
- a wall-clock limit after which the whole process group is killed; stdout/stderr are kept up to ``output_chars``
  (decoded with replacement characters), and ``RunResult.output_truncated`` says when there was more.

The ``unshare`` fallback (util-linux) gets namespaces, sized tmpfs mounts, the scratch copy in a sized tmpfs, rlimits
and the clean environment, but no seccomp filter and no ``--disable-userns``: it needs ``unshare`` and ``mount``
itself. ``protections()`` lists what is active, is logged once as a warning when anything is missing, and goes into
the manifest of every stage that grades with the sandbox. If neither backend can start, :func:`check_ready` raises
:class:`SandboxUnavailable` with a remedy. Nothing here ever falls back to running code unsandboxed.
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
from typing import Any

logger = logging.getLogger(__name__)

SANDBOX_PYTHON = os.environ.get("ALIGN_SANDBOX_PYTHON", "/usr/bin/python3")


class SandboxUnavailable(RuntimeError):
    """No OS-level sandbox can start on this machine; the message says how to fix it."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run. ``memory_mb`` is the whole budget: the tmpfs mounts come out of it."""

    wall_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    tmp_mb: int = 16
    """Size of each of ``/tmp`` and ``/dev/shm``."""
    scratch_mb: int = 32
    """Size of ``/work`` (the program, its input files and whatever it writes): the per-run disk quota."""
    max_procs: int = 32
    file_size_mb: int = 8
    open_files: int = 64
    output_chars: int = 65_536

    @property
    def address_space_mb(self) -> int:
        """What is left for the processes' address space after the tmpfs mounts."""
        return max(64, self.memory_mb - 2 * self.tmp_mb - self.scratch_mb)


@dataclass(frozen=True)
class RunResult:
    """What a sandboxed program did."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    output_truncated: bool = False
    """stdout held more than ``Limits.output_chars`` characters (or was cut by the file-size limit): the output
    cannot be judged whole."""


# Syscalls a program under test never needs and an escape attempt does; they fail with EPERM.
BLOCKED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "reboot", "swapon", "swapoff", "userfaultfd", "open_by_handle_at",
    "name_to_handle_at", "fsopen", "fsmount", "move_mount", "open_tree", "mount_setattr",
)


@functools.lru_cache(maxsize=1)
def seccomp_program() -> bytes | None:
    """The seccomp BPF program bwrap installs (``--seccomp FD``), or None when libseccomp's bindings are missing."""
    try:
        import pyseccomp as sc
    except ImportError:  # noqa: PERF203
        return None
    import errno

    filt = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in BLOCKED_SYSCALLS:
        try:
            filt.add_rule(sc.ERRNO(errno.EPERM), name)
        except (RuntimeError, ValueError, OSError):  # a syscall this kernel/arch does not have
            logger.debug("seccomp: no syscall %s on this architecture", name)
    with tempfile.TemporaryFile() as fh:
        filt.export_bpf(fh)
        fh.seek(0)
        return fh.read()


def _memfile(data: bytes) -> Any:
    """An unlinked temporary file holding ``data``, positioned at its start (nothing named stays on disk)."""
    fh = tempfile.TemporaryFile(prefix="align-sbx-")
    fh.write(data)
    fh.flush()
    fh.seek(0)
    return fh


def _readable_link_or_bind(path: str) -> list[str]:
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    if os.path.isdir(path):
        return ["--ro-bind", path, path]
    return []


def _keep_script(keep: dict[str, int], limit: int) -> str:
    # After the program: copy each kept regular file (never a symlink) to its own output fd (inherited from us).
    return "; ".join(f'[ -f "/work/{n}" ] && [ ! -L "/work/{n}" ] && head -c {limit} "/work/{n}" >&{fd}'
                     for n, fd in keep.items())


def _bwrap_argv(inputs: dict[str, int], argv: list[str], limits: Limits, seccomp_fd: int | None,
                keep: dict[str, int]) -> list[str]:
    mb = 1 << 20
    cmd = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
           "--ro-bind", "/usr", "/usr"]
    for p in ("/lib", "/lib64", "/bin", "/sbin"):
        cmd += _readable_link_or_bind(p)
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.tmp_mb * mb), "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev", "--size", str(limits.tmp_mb * mb), "--tmpfs", "/tmp",
            "--size", str(limits.scratch_mb * mb), "--tmpfs", "/work"]
    for name, fd in inputs.items():
        cmd += ["--file", str(fd), f"/work/{name}"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    cmd += ["--chdir", "/work", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]
    if keep:
        script = '"$@"; rc=$?; ' + _keep_script(keep, limits.output_chars * 4) + "; exit $rc"
        return [*cmd, "/usr/bin/bash", "-c", script, "bash", *argv]  # dash only redirects fds 0-9
    return cmd + argv


def _unshare_argv(workdir: str, argv: list[str], limits: Limits, keep: dict[str, int]) -> list[str]:
    # Fallback: new user/pid/net/ipc/uts/mount namespaces; sized private /tmp and /dev/shm; the inputs copied from the
    # host workdir into a sized tmpfs scratch (then the host copy is gone from view: /tmp is shadowed); env cleared by
    # `env -i`. The host stays visible but the per-run uid cannot write to it (root-owned), and the network is gone.
    tmp, scratch = f"size={limits.tmp_mb}m", f"size={limits.scratch_mb}m"
    inner = (f"cd {workdir} && mount -t tmpfs -o {tmp} none /tmp && mount -t tmpfs -o {tmp} none /dev/shm "
             f"2>/dev/null; mkdir -p /tmp/.w && mount -t tmpfs -o {scratch} none /tmp/.w && cp -a . /tmp/.w && "
             'cd /tmp/.w && "$@"; rc=$?; ' + (_keep_script(keep, limits.output_chars * 4).replace(
                 "/work/", "/tmp/.w/") + "; " if keep else "") + "exit $rc")
    return ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--ipc", "--uts", "--mount",
            "--kill-child", "--", "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8",
            "/usr/bin/bash", "-c", inner, "bash", *argv]


def _preexec(limits: Limits, uid: int):  # noqa: ANN202 - returns a closure for Popen
    def apply() -> None:
        mem = limits.address_space_mb << 20
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


# The only environment the sandbox processes (bwrap / unshare themselves included) start with.
_BARE_ENV = {"PATH": "/usr/bin:/bin"}


def _launch(backend_name: str, files: dict[str, bytes], argv: list[str], stdin: bytes, limits: Limits,
            keep: list[str]) -> tuple[RunResult, dict[str, str]]:
    uid = _sandbox_uid()
    opened: list[Any] = []
    workdir = None
    try:
        fin = _memfile(stdin)
        fout, ferr = tempfile.TemporaryFile(prefix="align-sbx-"), tempfile.TemporaryFile(prefix="align-sbx-")
        kept = [tempfile.TemporaryFile(prefix="align-sbx-") for _ in keep]
        opened += [fin, fout, ferr, *kept]
        keep_fds = {name: fh.fileno() for name, fh in zip(keep, kept)}
        pass_fds: list[int] = list(keep_fds.values())
        if backend_name == "bwrap":
            inputs = {}
            for name, data in files.items():
                fh = _memfile(data)
                opened.append(fh)
                inputs[name] = fh.fileno()
            seccomp = seccomp_program()
            sfd = None
            if seccomp is not None:
                sh = _memfile(seccomp)
                opened.append(sh)
                sfd = sh.fileno()
            pass_fds += [*inputs.values(), *([sfd] if sfd is not None else [])]
            cmd = _bwrap_argv(inputs, argv, limits, sfd, keep_fds)
        else:
            workdir = tempfile.mkdtemp(prefix=f"align-sbx-{os.getpid()}-")
            for name, data in files.items():
                Path(workdir, name).write_bytes(data)
            if os.getuid() == 0:
                os.chown(workdir, uid, uid)
                for name in files:
                    os.chown(os.path.join(workdir, name), uid, uid)
            os.chmod(workdir, 0o700)
            cmd = _unshare_argv(workdir, argv, limits, keep_fds)
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, start_new_session=True, env=_BARE_ENV,
                                preexec_fn=_preexec(limits, uid), close_fds=True, pass_fds=pass_fds)
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
        cap = limits.output_chars

        def read(fh: Any) -> tuple[str, bool]:
            fh.seek(0)
            raw = fh.read(cap * 4 + 1)
            text = raw[: cap * 4].decode("utf-8", "replace")
            more = len(raw) > cap * 4 or len(text) > cap or fh.tell() >= limits.file_size_mb << 20
            return text[:cap], more

        out, truncated = read(fout)
        err, _ = read(ferr)
        kept_text = {name: read(fh)[0] for name, fh in zip(keep, kept)}
        return RunResult(None if timed_out else proc.returncode, out, err, timed_out, wall, truncated), kept_text
    finally:
        for fh in opened:
            fh.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


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


@functools.lru_cache(maxsize=1)
def protections() -> dict[str, Any]:
    """Which protections the working backend applies here: ``{"backend", "active": [...], "missing": [...]}``.
    Anything missing is logged once, as a warning; stages that grade with the sandbox put this in their manifest."""
    name = backend()
    bwrap = name == "bwrap"
    flags = {
        "namespaces (user, pid, net, ipc, uts, mount)": True,
        "no network": True,
        "host read-only (only /usr visible)" if bwrap else "host read-only (by file permissions)": bwrap or
        os.getuid() == 0,
        "sized tmpfs /tmp, /dev/shm counted in the memory budget": True,
        "scratch quota (sized tmpfs /work)": True,
        "clean environment (sandbox pid 1 included)": True,
        "rlimits (address space, cpu, processes, file size, open files)": True,
        "per-run unprivileged uid": os.getuid() == 0,
        "seccomp filter": bwrap and seccomp_program() is not None,
        "no nested user namespaces (--disable-userns)": bwrap,
    }
    missing = [k for k, v in flags.items() if not v]
    if missing:
        logger.warning("code sandbox (%s): these protections are NOT active on this host: %s%s", name,
                       "; ".join(missing), "" if seccomp_program() is not None else
                       " (seccomp needs libseccomp's Python bindings: pip install pyseccomp)")
    return {"backend": name, "active": [k for k, v in flags.items() if v], "missing": missing}


def sweep_orphans() -> int:
    """Kill sandboxes whose caller died: ``bwrap`` processes re-parented to init. bwrap's ``--die-with-parent`` has a
    start-up window (the caller killed before bwrap's inner process set its parent-death signal) in which a sandbox
    can outlive its caller; this sweep, run when a verifier pool starts, ends such leftovers. Returns how many."""
    killed = 0
    me = os.getuid()
    parent: dict[int, int] = {}
    roots = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv0 = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0", 1)[0]
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        ours = (200_000 <= uid < 260_000) if me == 0 else uid == me
        if argv0.endswith(b"bwrap") and fields[1] == "1" and ours and fields[0] != "Z":
            roots.append(int(entry))
    doomed = set(roots)
    grew = True
    while grew:  # every descendant too: bwrap's inner process (the sandbox's pid 1) would be re-parented, not killed
        grew = False
        for pid, ppid in parent.items():
            if ppid in doomed and pid not in doomed:
                doomed.add(pid)
                grew = True
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    if killed:
        logger.warning("killed %d sandbox processes left by a killed caller", killed)
    return killed


def sweep_stale_scratch() -> int:
    """Remove scratch dirs that a killed process left in the temp dir (``align-sbx-<pid>-*`` of a dead pid, and
    unnamed ones of older versions after an hour); returns how many. bwrap runs leave none: their files are unlinked."""
    removed = 0
    root = Path(tempfile.gettempdir())
    for p in list(root.glob("align-sbx-*")) + list(root.glob("align-io-*")):
        parts = p.name.split("-")
        try:
            pid = int(parts[2])
        except (IndexError, ValueError):
            pid = None
        try:
            stale = (pid is not None and not os.path.exists(f"/proc/{pid}")) or (
                pid is None and time.time() - p.stat().st_mtime > 3600)
        except OSError:
            continue
        if stale and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    if removed:
        logger.info("removed %d sandbox scratch dirs left by killed runs", removed)
    return removed


def check_ready() -> None:
    """Raise SandboxUnavailable (with a remedy) unless a sandbox backend works."""
    backend()


def _run_in(backend_name: str, code: str, stdin: bytes, limits: Limits, files: dict[str, str] | None = None,
            entry: str = "main.py", keep: dict[str, str] | None = None) -> RunResult:
    data = {name: text.encode("utf-8", "surrogatepass") for name, text in {entry: code, **(files or {})}.items()}
    if backend_name == "bwrap":
        argv = [SANDBOX_PYTHON, "-I", "-S", f"/work/{entry}"]
    else:  # the scratch dir's path is shadowed by the private /tmp: open the entry relative to the cwd
        boot = f"import sys;sys.argv=[{entry!r}];exec(compile(open({entry!r},encoding='utf-8').read(),{entry!r},'exec'))"
        argv = [SANDBOX_PYTHON, "-I", "-S", "-c", boot]
    names = list(keep or {})
    result, kept = _launch(backend_name, data, argv, stdin, limits, names)
    for name in names:
        keep[name] = kept[name]  # type: ignore[index]
    return result


def run_python(code: str, stdin: str = "", limits: Limits | None = None, files: dict[str, str] | None = None,
               entry: str = "main.py", keep: dict[str, str] | None = None) -> RunResult:
    """Run ``entry`` (``code``) with ``files`` beside it in the sandbox; ``keep``'s keys receive the files of those
    names that the program wrote into its scratch dir (at most ``output_chars`` each)."""
    stdin_bytes = stdin.encode("utf-8", "surrogatepass")
    return _run_in(backend(), code, stdin_bytes, limits or Limits(), files, entry, keep)

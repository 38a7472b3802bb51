"""The sandbox attacked as a policy would: secrets, memory, disk, processes, signals, namespaces, syscalls, output
tricks. Each program runs through ``sandbox.run_python`` or the ``code`` verifier exactly as a completion would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from rewards import get_verifier, sandbox
from tests.conftest import REPO

code = get_verifier("code")
SECRET = "s3cr3t-token-7f1e"


def run(src: str, **limits) -> sandbox.RunResult:
    return sandbox.run_python(src, limits=sandbox.Limits(**{"wall_s": 10.0, "cpu_s": 10, **limits}))


def block(src: str) -> str:
    return f"```python\n{src}\n```"


def _host_leftovers() -> list[str]:
    return [p for p in os.listdir(tempfile.gettempdir()) if p.startswith(("align-sbx-", "align-io-"))]


@pytest.fixture(autouse=True)
def planted_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", SECRET)


def test_no_secret_anywhere_in_proc():
    res = run("""
import os
found = []
for pid in os.listdir('/proc'):
    if pid.isdigit():
        for name in ('environ', 'cmdline'):
            try:
                if b's3cr3t' in open(f'/proc/{pid}/{name}', 'rb').read():
                    found.append(pid + '/' + name)
            except OSError:
                pass
print('LEAK' if found or 's3cr3t' in repr(dict(os.environ)) else 'clean', found)
print(open('/proc/1/environ', 'rb').read())
""")
    assert "clean" in res.stdout and SECRET not in res.stdout + res.stderr, res


@pytest.mark.parametrize("target", ["/tmp/bomb", "/dev/shm/bomb", "/work/bomb", "/dev/bomb"])
def test_memory_bomb_in_tmpfs_is_bounded(target):
    res = run(f"""
import errno
n = 0
try:
    with open({target!r}, 'wb') as fh:
        for _ in range(640):
            fh.write(b'x' * (1 << 20)); fh.flush(); n += 1
    print('WROTE', n)
except OSError as e:
    print('stopped', n, errno.errorcode[e.errno])
""")
    assert "WROTE" not in res.stdout, res
    assert "stopped" in res.stdout, res
    written = int(res.stdout.split()[1])
    assert written <= 40, res  # sized tmpfs (16 / 32 MiB), or a read-only /dev


def test_many_files_fill_only_the_scratch_quota():
    res = run("""
import os
n = 0
try:
    while n < 100000:
        with open(f'/work/f{n}', 'wb') as fh:
            fh.write(b'x' * 65536)
        n += 1
    print('NOQUOTA', n)
except OSError as e:
    print('quota after', n, e.errno)
""")
    assert "quota after" in res.stdout and int(res.stdout.split()[2]) * 65536 <= 33 << 20, res
    assert not _host_leftovers()


def test_address_space_counts_the_tmpfs_budget():
    lim = sandbox.Limits()
    assert lim.address_space_mb + 2 * lim.tmp_mb + lim.scratch_mb == lim.memory_mb
    res = run("x = bytearray(600 << 20)\nprint('ALLOCATED')")
    assert "ALLOCATED" not in res.stdout and res.returncode != 0


SYSCALLS = {
    "unshare(CLONE_NEWUSER)": "libc.unshare(0x10000000)",
    "unshare(CLONE_NEWNS)": "libc.unshare(0x00020000)",
    "mount tmpfs": "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)",
    "ptrace(ATTACH, 1)": "libc.ptrace(16, 1, 0, 0)",
    "ptrace(TRACEME)": "libc.ptrace(0, 0, 0, 0)",
    "keyctl": "libc.syscall(250, 1, 0, 0, 0)",  # x86_64 keyctl(KEYCTL_JOIN_SESSION_KEYRING)
    "bpf": "libc.syscall(321, 0, 0, 0)",
    "perf_event_open": "libc.syscall(298, 0, 0, -1, -1, 0)",
    "setns": "libc.setns(0, 0)",
    "chroot": "libc.chroot(b'/tmp')",
}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="raw syscall numbers are x86_64's")
@pytest.mark.parametrize("name", list(SYSCALLS))
def test_escape_syscalls_fail(name):
    if sandbox.seccomp_program() is None:
        pytest.skip("no seccomp bindings on this host (protections() reports it)")
    res = run(f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
r = {SYSCALLS[name]}
print('RESULT', r, ctypes.get_errno())
""")
    parts = res.stdout.split()
    assert parts[:1] == ["RESULT"] and parts[1] == "-1", res
    assert parts[2] in ("1", "38"), res  # EPERM from the filter (ENOSYS would also mean it never ran)


def test_host_files_are_not_visible():
    res = run("""
import os
seen = [p for p in ('/etc/passwd', '/etc/hostname', '/etc/shadow', '/root', '/home', '/var', '/opt', '/srv')
        if os.path.exists(p)]
print('SEEN', seen)
print(sorted(os.listdir('/')))
""")
    assert "SEEN []" in res.stdout, res


def test_signals_reach_only_the_sandbox():
    res = run("import os, signal\nos.kill(-1, signal.SIGKILL)")
    assert res.returncode is not None  # the run ended by itself; this process is alive to see it
    res = run("import os, signal\nfor pid in range(1, 400):\n    try:\n        if pid != os.getpid():\n"
              "            os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\nprint('done', os.getpid())")
    assert "done" in res.stdout  # host pids are not visible in the pid namespace


def test_symlinked_result_file_reads_nothing_of_the_host():
    meta = {"fn_name": "f", "tests": [{"args": [], "expected": 1}]}
    src = "import os\nos.symlink('/proc/1/environ', 'results.json')\nos._exit(0)\ndef f():\n    return 1"
    v = code(block(src), "", meta=meta)
    assert v.status == "wrong" and SECRET not in str(v.info), v


def test_nothing_left_after_a_killed_worker():
    """A worker killed in the middle of a sandboxed run leaves no process and no file on the host."""
    completion = block("import time\ntime.sleep(60)")
    script = f"""
from rewards import get_verifier
v = get_verifier("code")
print("go", flush=True)
v({completion!r}, "", meta={{"tests": [{{"stdin": "", "stdout": "x"}}]}}, wall_s=60)
"""
    before = set(_host_leftovers())
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "go"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _sandbox_pids(program="solution.py"):
        time.sleep(0.05)
    assert _sandbox_pids(program="solution.py"), "the sandboxed program never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _sandbox_pids():
        time.sleep(0.05)
    assert not _sandbox_pids(), "a sandboxed process outlived its killed caller"
    assert set(_host_leftovers()) <= before


def test_orphaned_sandbox_is_swept():
    """The start-up window of bwrap's --die-with-parent, forced: a sandbox whose caller is gone is killed by the
    sweep a new verifier pool runs."""
    if os.getuid() != 0:
        pytest.skip("the orphan is made with a sandbox uid, which needs root")
    # a sandbox started by an intermediate process that exits at once: bwrap is re-parented to init
    cmd = sandbox._bwrap_argv({}, ["/usr/bin/python3", "-I", "-S", "-c", "import time; time.sleep(60)"],
                              sandbox.Limits(), None, {})
    uid = sandbox._sandbox_uid()
    launcher = subprocess.Popen([sys.executable, "-c", "import os, subprocess, sys; "
                                 f"subprocess.Popen({[c for c in cmd if c != '--die-with-parent']!r}, "
                                 f"preexec_fn=lambda: (os.setgroups([]), os.setgid({uid}), os.setuid({uid})), "
                                 "start_new_session=True); os._exit(0)"])
    launcher.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not _sandbox_pids(program="time.sleep(60)"):
        time.sleep(0.05)
    assert _sandbox_pids(program="time.sleep(60)")
    assert sandbox.sweep_orphans() >= 1
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _sandbox_pids(program="time.sleep(60)"):
        time.sleep(0.05)
    assert not _sandbox_pids(program="time.sleep(60)")


def _sandbox_pids(program: str = "") -> list[str]:
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/status") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        state = next((ln.split()[1] for ln in lines if ln.startswith("State:")), "Z")
        uid = next((int(ln.split()[1]) for ln in lines if ln.startswith("Uid:")), -1)
        if state != "Z" and 200_000 <= uid < 260_000:
            try:
                if program.encode() in open(f"/proc/{p}/cmdline", "rb").read():
                    out.append(p)
            except OSError:
                pass
    return out


# ------------------------------------------------------------------------------------------------ output tricks

STDIO = {"tests": [{"stdin": "", "stdout": "42\n"}]}


@pytest.mark.parametrize("src, status", [
    ("print(42)", "ok"),
    ("print(42)\nprint('\\n' * 50000)\nprint(41)", "wrong"),  # right first line, padding, wrong line
    ("print(42)\nprint(' ' * 200000)", "output_limit"),  # past the cap: cannot be judged
    ("import sys\nwhile True:\n    sys.stdout.write('42\\n' * 1000)", "output_limit"),  # endless output
    ("print(42)\nimport sys\nsys.stdout.flush()\nimport os\nos.close(1)\nprint('x', file=sys.stderr)", "ok"),
])
def test_output_tricks(src, status):
    v = code(block(src), "", meta=STDIO, wall_s=3.0)
    assert v.status == status, v
    assert (v.score == 1.0) == (status == "ok")


def test_correct_long_output_passes():
    want = "".join(f"{i}\n" for i in range(30000))  # ~170k characters, more than the default cap
    v = code(block("for i in range(30000):\n    print(i)"), "", meta={"tests": [{"stdin": "", "stdout": want}]})
    assert v.status == "ok", v


def test_missing_protection_is_reported_loudly(monkeypatch, caplog):
    sandbox.protections.cache_clear()
    monkeypatch.setattr(sandbox, "seccomp_program", lambda: None)
    try:
        with caplog.at_level("WARNING", logger="rewards.sandbox"):
            report = sandbox.protections()
        assert "seccomp filter" in report["missing"] and "NOT active" in caplog.text and "seccomp" in caplog.text
    finally:
        sandbox.protections.cache_clear()


def test_full_protections_on_this_host():
    report = sandbox.protections()
    if report["backend"] != "bwrap" or sandbox.seccomp_program() is None:
        pytest.skip(f"bwrap with seccomp not available here: {report}")
    assert not [m for m in report["missing"] if "uid" not in m], report

"""code + sandbox: escapes, bombs, cheats, broken programs — one row per failure mode."""

from __future__ import annotations

import os
import time

import pytest

from rewards import get_verifier, sandbox

code = get_verifier("code")
ADD = {"fn_name": "add", "tests": [{"args": [1, 2], "expected": 3}, {"args": [-5, 5], "expected": 0}]}
STDIO = {"tests": [{"stdin": "3 4\n", "stdout": "7\n"}, {"stdin": "10 -2\n", "stdout": "8\n"}]}


def block(src: str) -> str:
    return f"Here you go:\n```python\n{src}\n```"


GOOD_ADD = "def add(a, b):\n    return a + b"
GOOD_STDIO = "a, b = map(int, input().split())\nprint(a + b)"


@pytest.mark.parametrize(
    "completion, meta, status",
    [
        (block(GOOD_ADD), ADD, "ok"),
        (block(GOOD_STDIO), STDIO, "ok"),
        ("<think>" + block("def add(a,b): return 0") + "</think>" + block(GOOD_ADD), ADD, "ok"),  # last block wins
        ("<think>" + block(GOOD_ADD) + "</think> done", ADD, "unparseable"),  # code only in the reasoning
        ("no code here", ADD, "unparseable"),
        (block("def add(a, b) return a+b"), ADD, "wrong"),  # syntax error
        (block("def add(a, b):\n    return str(a + b)"), ADD, "wrong"),  # wrong type
        (block("def add(a, b):\n    return float(a + b)"), ADD, "wrong"),  # float is not int
        (block("class E:\n    def __eq__(self, o): return True\ndef add(a, b):\n    return E()"), ADD, "wrong"),
        (block("class E(int):\n    def __eq__(self, o): return True\ndef add(a, b):\n    return E(0)"), ADD, "wrong"),
        (block("import os\nos._exit(0)"), ADD, "wrong"),
        (block("import sys\nsys.exit(0)"), ADD, "wrong"),
        (block("import os\ndef add(a, b):\n    os._exit(0)"), ADD, "wrong"),
        (block("print(7)"), STDIO, "wrong"),  # prints only part of the expected output
        (block("a, b = map(int, input().split())\nprint(a + b)\nprint('extra')"), STDIO, "wrong"),
        (block("import sys\nsys.exit(0)"), STDIO, "wrong"),  # exit status alone is not a pass
        (block("while True:\n    pass"), ADD, "timeout"),
        (block("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
               "while True:\n    pass"), STDIO, "timeout"),  # ignores signals
        (block("x = bytearray(4 << 30)\ndef add(a, b):\n    return a + b"), ADD, "wrong"),  # memory bomb
        (block(GOOD_ADD), {"fn_name": "add", "tests": []}, "error"),  # zero tests = data error
        (block(GOOD_ADD), None, "error"),
    ],
)
def test_code_table(completion, meta, status):
    v = code(completion, "", meta=meta, wall_s=2.0)
    assert v.status == status, v


def test_fork_bomb_is_contained():
    src = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    v = code(block(src), "", meta=STDIO, wall_s=2.0)
    assert v.status in ("timeout", "wrong")
    assert _no_sandbox_process_within(10)  # nothing survives: no process of a sandbox uid is left


def _no_sandbox_process_within(seconds: float) -> bool:
    """Poll until no process of a sandbox uid is alive (killed processes take a moment to be reaped)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_uid(p) >= 200_000 for p in os.listdir("/proc") if p.isdigit()):
            return True
        time.sleep(0.05)
    return False


def _uid(pid: str) -> int:
    """The uid of a live process (-1 for zombies: already dead, waiting for the host's init to reap them)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return -1
    if any(line.startswith("State:") and "Z" in line.split()[1] for line in lines):
        return -1
    return next((int(line.split()[1]) for line in lines if line.startswith("Uid:")), -1)


def test_escapes_are_blocked(tmp_path):
    marker = tmp_path / "pwned"
    os.environ["ALIGN_TEST_SECRET"] = "hunter2"
    probe = f"""
import os, socket, subprocess
out = []
for path in ["{marker}", "/usr/pwned", "/etc/pwned", "/root/pwned"]:
    try:
        open(path, "w").write("x"); out.append("WROTE " + path)
    except OSError:
        out.append("nowrite")
try:
    socket.create_connection(("127.0.0.1", 22), timeout=1); out.append("NET")
except OSError:
    out.append("nonet")
try:
    socket.create_connection(("1.1.1.1", 80), timeout=1); out.append("NET")
except OSError:
    out.append("nonet")
out.append("SECRET" if "hunter2" in repr(dict(os.environ)) else "nosecret")
subprocess.Popen(["/usr/bin/python3", "-c", "import time; time.sleep(30); open('{marker}2','w')"], start_new_session=True)
print(" ".join(out))
"""
    res = sandbox.run_python(probe, limits=sandbox.Limits(wall_s=5))
    assert "WROTE" not in res.stdout and "NET" not in res.stdout and "SECRET" not in res.stdout, res
    assert "nowrite" in res.stdout and "nosecret" in res.stdout, res
    assert not marker.exists() and not os.path.exists("/usr/pwned")
    assert _no_sandbox_process_within(10)  # the sleeper did not survive


def test_output_is_capped_and_decoded_safely():
    res = sandbox.run_python("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe' * 10)\nprint('x' * 10_000_000)",
                             limits=sandbox.Limits(output_chars=1000))
    assert len(res.stdout) <= 1000 and "\ufffd" in res.stdout


def test_no_sandbox_means_refusal(monkeypatch):
    from rewards import registry

    monkeypatch.setattr(sandbox, "SANDBOX_PYTHON", "/nonexistent/python3")
    sandbox.backend.cache_clear()
    try:
        with pytest.raises(sandbox.SandboxUnavailable, match="Remedy"):
            registry.get_verifier("code")
    finally:
        monkeypatch.undo()
        sandbox.backend.cache_clear()


def test_unshare_fallback_runs_and_blocks_network():
    if os.system("unshare --user --map-root-user --net true 2>/dev/null") != 0:
        pytest.skip("unshare with user namespaces is not available here")
    res = sandbox._run_in("unshare", "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n"
                          "    print('NET')\nexcept OSError:\n    print('nonet')", b"", sandbox.Limits())
    assert res.stdout.strip() == "nonet", res

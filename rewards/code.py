"""``code`` — run the completion's last fenced Python block against the row's tests, inside the OS sandbox.

Policy:
- Only the answer after the reasoning is graded; the program is its *last* fenced ```` ```python ```` (or bare ```` ``` ````)
  block. No block -> ``unparseable``.
- Row ``meta`` gives the tests, and a row without tests is a data error (``status="error"``):
  ``{"fn_name": "add", "tests": [{"args": [1, 2], "expected": 3}, ...]}`` calls the function in the sandbox; return
  values come out as a tagged encoding of *exact* types (bool is not int, tuple is not list, an object with an
  always-true ``==`` is not serialisable and fails) and are compared outside the sandbox, where the expected values
  stay: the program never sees them. Or ``{"tests": [{"stdin": "3 4\\n", "stdout": "7\\n"}, ...]}``: one run per test,
  whole-output comparison of every line (trailing spaces and final newlines ignored); the sandbox keeps twice the
  expected output, and a program that writes more than it keeps scores ``output_limit`` (a cut stream is never
  compared, so a right first line followed by padding cannot pass).
- Exit status alone never means pass: ``os._exit(0)`` or ``sys.exit(0)`` before the results are written fails.
- Score 1 only if every test passes (``partial=True`` gives the fraction); info has passed/total and the first failure.
- Runs happen in :mod:`rewards.sandbox` (bubblewrap, unshare fallback). If no sandbox can start,
  ``get_verifier("code")`` raises with a remedy; code is never run unsandboxed.

>>> from rewards import get_verifier
>>> v = get_verifier("code")
>>> v("```python\\ndef add(a, b):\\n    return a + b\\n```", "", meta={"fn_name": "add", "tests": [{"args": [1, 2], "expected": 3}]}).status
'ok'
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from typing import Any

from rewards import sandbox
from rewards.parsing import answer_section
from rewards.registry import register_verifier
from rewards.types import Verdict, ok, unparseable, wrong

MAX_CODE_CHARS = 50_000
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)```", re.S | re.I)

# Runs inside the sandbox (stdlib only). Reads the call arguments, never the expected values.
HARNESS = r'''
import json, sys
def enc(v, depth=0):
    if depth > 50:
        raise TypeError("too deeply nested")
    t = type(v)
    if v is None: return ["none"]
    if t is bool: return ["bool", v]
    if t is int: return ["int", str(v)]
    if t is float: return ["float", repr(v)]
    if t is str: return ["str", v]
    if t is list: return ["list", [enc(x, depth + 1) for x in v]]
    if t is tuple: return ["tuple", [enc(x, depth + 1) for x in v]]
    if t is dict: return ["dict", [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v.items()]]
    if t is set or t is frozenset: return [t.__name__, sorted((enc(x, depth + 1) for x in v), key=repr)]
    raise TypeError("unserialisable return type " + t.__name__)
spec = json.load(open("tests.json"))
ns = {"__name__": "solution"}
out = []
try:
    exec(compile(open("solution.py", encoding="utf-8").read(), "solution.py", "exec"), ns)
    fn = ns[spec["fn_name"]]
except BaseException as e:
    out = [{"error": "load: " + type(e).__name__ + ": " + str(e)[:200]}] * len(spec["calls"])
else:
    for call in spec["calls"]:
        try:
            out.append({"value": enc(fn(*call.get("args", []), **call.get("kwargs", {})))})
        except BaseException as e:
            out.append({"error": type(e).__name__ + ": " + str(e)[:200]})
with open("results.json.tmp", "w") as fh:
    json.dump(out, fh)
import os
os.replace("results.json.tmp", "results.json")
'''


def extract_program(completion: str) -> str | None:
    """The last fenced Python block after the reasoning, or None."""
    section = answer_section(completion)
    if section is None:
        return None
    blocks = _FENCE.findall(section)
    return blocks[-1] if blocks else None


def encode(value: Any, depth: int = 0) -> Any:
    """Host-side twin of the harness encoding, for the expected values (JSON types: arrays are lists)."""
    if depth > 50:
        raise TypeError("too deeply nested")
    if value is None:
        return ["none"]
    t = type(value)
    if t is bool:
        return ["bool", value]
    if t is int:
        return ["int", str(value)]
    if t is float:
        return ["float", repr(value)]
    if t is str:
        return ["str", value]
    if t is list:
        return ["list", [encode(v, depth + 1) for v in value]]
    if t is tuple:
        return ["tuple", [encode(v, depth + 1) for v in value]]
    if t is dict:
        return ["dict", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    raise TypeError(f"unsupported expected type {t.__name__}")


def same(expected: Any, got: Any) -> bool:
    """Exact-type equality of two encodings; floats compare with a 1e-9 relative tolerance."""
    if not isinstance(got, list) or not got or got[0] != expected[0]:
        return False
    tag = expected[0]
    if tag == "none":
        return True
    if tag == "float":
        try:
            a, b = float(expected[1]), float(got[1])
        except (TypeError, ValueError):
            return False
        return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if tag in ("list", "tuple"):
        return len(expected[1]) == len(got[1]) and all(same(e, g) for e, g in zip(expected[1], got[1]))
    if tag == "dict":
        if len(expected[1]) != len(got[1]):
            return False
        return all(same(ek, gk) and same(ev, gv) for (ek, ev), (gk, gv) in zip(expected[1], got[1]))
    return expected == got


def _normalize_output(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _data_error(reason: str) -> Verdict:
    return Verdict(0.0, "error", {"reason": f"data error: {reason}"})


def _function_tests(program: str, meta: dict[str, Any], limits: sandbox.Limits) -> tuple[int, int, str | None, str | None]:
    tests = meta["tests"]
    calls = [{"args": t.get("args", []), "kwargs": t.get("kwargs", {})} for t in tests]
    keep = {"results.json": ""}
    res = sandbox.run_python(
        HARNESS, files={"solution.py": program, "tests.json": json.dumps({"fn_name": meta["fn_name"], "calls": calls})},
        limits=limits, keep=keep,
    )
    if res.timed_out:
        return 0, len(tests), "time limit", "timeout"
    try:
        results = json.loads(keep["results.json"]) if keep["results.json"] else None
    except ValueError:
        results = None
    if not isinstance(results, list) or len(results) != len(tests):
        return 0, len(tests), f"no results (exit {res.returncode}): {res.stderr[-200:]}", None
    passed, first = 0, None
    for i, (test, r) in enumerate(zip(tests, results)):
        if isinstance(r, dict) and "value" in r and same(encode(test["expected"]), r["value"]):
            passed += 1
        elif first is None:
            first = f"test {i}: " + (r.get("error") if isinstance(r, dict) and "error" in r else "wrong value")
    return passed, len(tests), first, None


def _stdio_tests(program: str, meta: dict[str, Any], limits: sandbox.Limits) -> tuple[int, int, str | None, str | None]:
    """(passed, total, first failure, status override: ``timeout`` / ``output_limit`` when nothing passed for that
    reason). The whole stdout is compared: the sandbox keeps room for twice the expected output, and a program that
    writes more than it keeps cannot pass (``output_limit``): a cut-off stream is never compared."""
    passed, first, timed_out, over = 0, None, False, False
    for i, test in enumerate(meta["tests"]):
        want = test["stdout"]
        lim = replace(limits, output_chars=max(limits.output_chars, 2 * len(want) + 1024))
        res = sandbox.run_python(program, stdin=test.get("stdin", ""), limits=lim, entry="solution.py")
        timed_out |= res.timed_out
        over |= res.output_truncated
        if (not res.timed_out and not res.output_truncated and res.returncode == 0
                and _normalize_output(res.stdout) == _normalize_output(want)):
            passed += 1
        elif first is None:
            first = f"test {i}: " + ("time limit" if res.timed_out else "output over the sandbox's cap" if
                                     res.output_truncated else f"exit {res.returncode}, output differs")
    status = ("timeout" if timed_out else "output_limit" if over else None) if passed == 0 else None
    return passed, len(meta["tests"]), first, status


def _check_meta(meta: Any) -> str | None:
    if not isinstance(meta, dict) or not isinstance(meta.get("tests"), list):
        return "row meta must hold a 'tests' list"
    if not meta["tests"]:
        return "row has zero tests"
    for i, t in enumerate(meta["tests"]):
        if not isinstance(t, dict):
            return f"tests[{i}] must be a mapping"
        if "fn_name" in meta:
            if "expected" not in t:
                return f"tests[{i}] has no 'expected'"
            try:
                encode(t["expected"])
            except TypeError as exc:
                return f"tests[{i}].expected: {exc}"
        elif not isinstance(t.get("stdout"), str):
            return f"tests[{i}] needs 'stdout' (or give meta.fn_name for function tests)"
    return None


@register_verifier("code", runs="pool", timeout_s=30.0)  # a killable worker; several sandboxed runs per row
def verify(completion: str, answer: str = "", meta: dict[str, Any] | None = None, partial: bool = False,
           wall_s: float = 5.0, **row: Any) -> Verdict:
    """Score 1 when every test passes in the sandbox."""
    problem = _check_meta(meta)
    if problem:
        return _data_error(problem)
    program = extract_program(completion)
    if program is None:
        return unparseable("no fenced Python code block after the reasoning")
    if len(program) > MAX_CODE_CHARS:
        return wrong({"reason": "program too long", "chars": len(program)})
    limits = sandbox.Limits(wall_s=wall_s, cpu_s=max(1, math.ceil(wall_s)))
    run = _function_tests if "fn_name" in meta else _stdio_tests
    passed, total, first_failure, status = run(program, meta, limits)
    info = {"passed": passed, "total": total, "first_failure": first_failure}
    if status is not None:  # timeout / output_limit: nothing passed, for that reason
        return Verdict(0.0, status, info)
    if passed == total:
        return ok(info)
    return wrong(info, score=passed / total if partial else 0.0)


verify.check_ready = sandbox.check_ready  # get_verifier("code") refuses (with a remedy) when no sandbox starts

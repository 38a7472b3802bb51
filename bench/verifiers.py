"""Verifier benchmarks, every ratio against an anchor measured in the same run.

    python bench/verifiers.py [--n 4000] [--workers 2]

1. math checks/s: our ``math`` verifier through the TRL adapter's worker pool vs calling Math-Verify directly
   (``verify(parse(gold), parse(pred))`` in this process's main thread). Target: >= 1,000 checks/s on 2 cores.
2. worst case: seconds for adversarial math answers through our verifier (target <= 2 s each).
3. sandboxed programs/s (bubblewrap + seccomp + rlimits + sized tmpfs scratch per run) vs a plain unsandboxed
   subprocess runner.
   Target: >= 15 programs/s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def math_items(n: int, mix: str = "mixed") -> list[tuple[str, str]]:
    """Distinct (completion, gold) pairs: ``integer`` answers (GSM8K-like) or a ``mixed`` symbolic set."""
    items = []
    for i in range(n):
        kind = 0 if mix == "integer" else i % 4
        if kind == 0:
            items.append((f"The answer is \\boxed{{{i}}}", str(i)))
        elif kind == 1:
            items.append((f"so \\boxed{{\\frac{{{i}}}{{{i + 1}}}}}", f"{i}/{i + 1}"))
        elif kind == 2:
            items.append((f"<think>work</think> Answer: {i}.5", f"{2 * i + 1}/2"))
        else:
            items.append((f"\\boxed{{x^2 + {i}}}", f"{i} + x^2"))
    return items


def bench_math(n: int, workers: int, mix: str) -> dict[str, float]:
    from math_verify import parse, verify

    from rewards.pool import VerifierPool
    from rewards.trl_adapter import build_reward_functions

    items = math_items(n, mix)
    t0 = time.perf_counter()
    direct_ok = 0
    for completion, gold in items:
        pred = completion.split("</think>")[-1]
        direct_ok += bool(verify(parse(f"${gold}$"), parse(pred)))
    direct = n / (time.perf_counter() - t0)

    pool = VerifierPool(workers=workers)
    try:
        funcs, _ = build_reward_functions([{"name": "math", "timeout_s": 1.5}], pool=pool)
        warm = funcs[0](completions=["\\boxed{1}"] * workers * 2, answer=["1"] * workers * 2, verifier=["math"] * workers * 2)
        assert all(s == 1.0 for s in warm)
        t0 = time.perf_counter()
        scores = funcs[0](completions=[c for c, _ in items], answer=[g for _, g in items], verifier=["math"] * n)
        ours = n / (time.perf_counter() - t0)
    finally:
        pool.close()
    return {"direct_checks_per_s": direct, "ours_checks_per_s": ours, "ratio": ours / direct,
            "direct_accepted": direct_ok / n, "ours_accepted": sum(s == 1.0 for s in scores) / n}


ADVERSARIAL = [
    ("\\boxed{9^{9^{9^{9}}}}", "\\frac{1}{2}"),
    ("\\boxed{9^{9^{9^{9}}}}", "5"),
    ("\\boxed{(10^{10^{10}})!}", "y"),
    ("\\boxed{" + "{" * 900 + "1" + "}" * 900 + "}", "1"),
    ("\\boxed{" + "+".join(["x"] * 400) + "}", "400x"),
    ("x" * 2_000_000, "1"),
]


def bench_worst_case() -> dict[str, float]:
    from rewards import get_verifier

    v = get_verifier("math")
    v("\\boxed{1}", "1")  # start the shared pool outside the timing
    worst = 0.0
    for completion, gold in ADVERSARIAL:
        t0 = time.perf_counter()
        v(completion, gold)
        worst = max(worst, time.perf_counter() - t0)
    return {"worst_case_s": worst}


PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"


def bench_sandbox(n: int) -> dict[str, float]:
    from rewards import sandbox

    sandbox.check_ready()
    with tempfile.TemporaryDirectory() as d:
        prog = Path(d, "p.py")
        prog.write_text(PROGRAM)
        t0 = time.perf_counter()
        for i in range(n):
            out = subprocess.run(["/usr/bin/python3", "-I", "-S", str(prog)], input=f"{i} 1\n", capture_output=True,
                                 text=True, timeout=10)
            assert out.stdout.strip() == str(i + 1)
        plain = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(n):
        res = sandbox.run_python(PROGRAM, stdin=f"{i} 1\n")
        assert res.stdout.strip() == str(i + 1), res
    ours = n / (time.perf_counter() - t0)
    return {"plain_programs_per_s": plain, "sandboxed_programs_per_s": ours, "ratio": ours / plain,
            "backend": sandbox.backend()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--programs", type=int, default=100)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()
    for mix in ("integer", "mixed"):
        m = bench_math(args.n, args.workers, mix)
        print(f"math ({mix} answers, all distinct): direct Math-Verify {m['direct_checks_per_s']:.0f} checks/s | ours "
              f"via pool ({args.workers} workers) {m['ours_checks_per_s']:.0f} checks/s | ratio {m['ratio']:.2f} | "
              f"accepted direct {m['direct_accepted']:.2f} ours {m['ours_accepted']:.2f}  (target >= 1000 checks/s)")
    w = bench_worst_case()
    print(f"math worst case over {len(ADVERSARIAL)} adversarial answers: {w['worst_case_s']:.2f} s  (target <= 2 s)")
    s = bench_sandbox(args.programs)
    print(f"code: plain subprocess {s['plain_programs_per_s']:.1f} programs/s | sandboxed ({s['backend']}) "
          f"{s['sandboxed_programs_per_s']:.1f} programs/s | ratio {s['ratio']:.2f}  (target >= 15 programs/s)")


if __name__ == "__main__":
    main()

"""The skill ledger: every eval suite x every graded stage, with 95 % intervals and regressions flagged.

A staged pipeline is worth running when its final model keeps what each stage taught. The eval stage grades the
earlier stages' models on the same suites (``compare``) and its input model; the ledger lays those out in pipeline
order, each value with its 95 % Wilson interval, marks which stages trained on each suite's task (a stage whose data
uses the suite's recipe), and flags every value more than ``REGRESSION_DROP`` below the best earlier stage's as a
regression. It lives in the eval stage's manifest (``metrics.ledger``), in ``report.md``, in the end-of-run console
table, in ``bench/learning.py`` per seed and in the ablation report per variant.
"""

from __future__ import annotations

import math
from typing import Any

REGRESSION_DROP = 0.03
"""A drop of more than this (3 points of accuracy) from the best earlier stage is a regression."""


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``p`` over ``n`` trials.

    >>> [round(x, 3) for x in wilson(1.0, 200)]
    [0.981, 1.0]
    """
    if n == 0:
        return (0.0, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def build_ledger(graded: dict[str, dict[str, dict[str, Any]]], trained_by: dict[str, list[str]]) -> dict[str, Any]:
    """The ledger of ``graded`` (stage label -> suite -> result with ``accuracy`` and ``n``, in pipeline order);
    ``trained_by``: suite -> the stages whose data taught its task.

    >>> led = build_ledger({"sft": {"add": {"accuracy": 1.0, "n": 200}}, "rl": {"add": {"accuracy": 0.9, "n": 200}}},
    ...                    {"add": ["sft"]})
    >>> led["regressions"]
    [{'suite': 'add', 'stage': 'rl', 'value': 0.9, 'best_stage': 'sft', 'best': 1.0, 'drop': 0.1, 'trained': True}]
    """
    stages = list(graded)
    suites: dict[str, Any] = {}
    regressions: list[dict[str, Any]] = []
    names = list(dict.fromkeys(s for res in graded.values() for s in res))
    for suite in names:
        cells: dict[str, Any] = {}
        best: tuple[str, float] | None = None
        for stage in stages:
            r = graded[stage].get(suite)
            if not r or r.get("accuracy") is None:
                continue
            acc, n = float(r["accuracy"]), int(r.get("n") or 0)
            cell = {"accuracy": acc, "n": n, "ci95": [round(x, 4) for x in wilson(acc, n)]}
            # rounded first: 1.000 -> 0.970 is a drop of exactly 3 points (0.030000000000000027 in floats), not more
            drop = round(best[1] - acc, 9) if best is not None else 0.0
            if best is not None and drop > REGRESSION_DROP:
                cell["regression"] = {"best_stage": best[0], "best": best[1], "drop": round(drop, 4)}
                regressions.append({"suite": suite, "stage": stage, "value": acc, "best_stage": best[0],
                                    "best": best[1], "drop": round(drop, 4),
                                    "trained": bool(trained_by.get(suite))})
            if best is None or acc > best[1]:
                best = (stage, acc)
            cells[stage] = cell
        suites[suite] = {"trained_by": list(trained_by.get(suite, [])), "stages": cells}
    return {"stages": stages, "suites": suites, "regressions": regressions, "drop_threshold": REGRESSION_DROP}


def ledger_lines(ledger: dict[str, Any]) -> list[str]:
    """The ledger as a Markdown table: one row per suite, one column per stage (``value [low, high]``, a regression
    marked ``REGRESSION -x.xxx vs <stage>``), then the stages that trained on the suite."""
    stages = ledger.get("stages", [])
    lines = ["| suite | " + " | ".join(stages) + " | trained by |", "|---|" + "---|" * (len(stages) + 1)]
    for suite, entry in ledger.get("suites", {}).items():
        cells = []
        for stage in stages:
            c = entry["stages"].get(stage)
            if c is None:
                cells.append("-")
                continue
            text = f"{c['accuracy']:.3f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]"
            if "regression" in c:
                text += f" **REGRESSION -{c['regression']['drop']:.3f} vs {c['regression']['best_stage']}**"
            cells.append(text)
        lines.append(f"| {suite} | " + " | ".join(cells) + f" | {', '.join(entry['trained_by']) or '-'} |")
    regs = ledger.get("regressions", [])
    lines += ["", f"Regressions (a drop of more than {ledger.get('drop_threshold', REGRESSION_DROP) * 100:.0f} points "
              f"from the best earlier stage): {len(regs)}"
              + (", on trained suites: " + ", ".join(f"{r['suite']} at {r['stage']}" for r in regs if r["trained"])
                 if any(r["trained"] for r in regs) else "") + "."]
    return lines

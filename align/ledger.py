"""The skill ledger: every eval suite x every graded stage, with 95 % intervals and regressions flagged.

A staged pipeline is worth running when its final model keeps what each stage taught. The eval stage grades the
earlier stages' models on the same suites (``compare``) and its input model; the ledger lays those out in pipeline
order, each value with its 95 % Wilson interval, marks which stages trained on each suite's task (a stage whose data
uses the suite's recipe), and flags every value more than ``REGRESSION_DROP`` below the best earlier stage's as a
regression — marked recovered when a later stage gets back within the threshold of that best; the trained suites
whose last value stays below (``standing``) are what the run ends with. It lives in the eval stage's manifest
(``metrics.ledger``), in ``report.md``, in the end-of-run console table, in ``bench/learning.py`` per seed and in the
ablation report per variant.
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
    >>> [(r["stage"], r["best_stage"], r["drop"], r["trained"], r["recovered_at"]) for r in led["regressions"]]
    [('rl', 'sft', 0.1, True, None)]
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
    for reg in regressions:  # a later stage back within the threshold of that best recovers it; the last stage's stay
        later = stages[stages.index(reg["stage"]) + 1:]
        row = suites[reg["suite"]]["stages"]
        reg["recovered_at"] = next((s for s in later if s in row
                                    and round(reg["best"] - row[s]["accuracy"], 9) <= REGRESSION_DROP), None)
        row[reg["stage"]]["regression"]["recovered_at"] = reg["recovered_at"]
    return {"stages": stages, "suites": suites, "regressions": regressions, "drop_threshold": REGRESSION_DROP}


def standing(ledger: dict[str, Any]) -> list[dict[str, Any]]:
    """The regressions a run ends with: trained suites whose last graded value is more than the threshold below the
    best earlier stage's (a stage that dipped and a later one that got it back is not among them).

    >>> g = {"a": {"add": {"accuracy": 1.0, "n": 9}}, "b": {"add": {"accuracy": 0.5, "n": 9}},
    ...      "c": {"add": {"accuracy": 0.99, "n": 9}}}
    >>> led = build_ledger(g, {"add": ["a"]})
    >>> [(r["stage"], r["recovered_at"]) for r in led["regressions"]], standing(led)
    ([('b', 'c')], [])
    """
    return [r for r in ledger.get("regressions", []) if r["trained"] and r["stage"] == _last_graded(ledger, r["suite"])]


def _last_graded(ledger: dict[str, Any], suite: str) -> str | None:
    cells = ledger["suites"][suite]["stages"]
    return next((s for s in reversed(ledger["stages"]) if s in cells), None)


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
                reg = c["regression"]
                text += f" **REGRESSION -{reg['drop']:.3f} vs {reg['best_stage']}**" + (
                    f" (recovered by {reg['recovered_at']})" if reg.get("recovered_at") else "")
            cells.append(text)
        lines.append(f"| {suite} | " + " | ".join(cells) + f" | {', '.join(entry['trained_by']) or '-'} |")
    regs = ledger.get("regressions", [])
    lines += ["", f"Regressions (a drop of more than {ledger.get('drop_threshold', REGRESSION_DROP) * 100:.0f} points "
              f"from the best earlier stage): {len(regs)}"
              + (", on trained suites: " + ", ".join(
                  f"{r['suite']} at {r['stage']}" + (f" (recovered by {r['recovered_at']})" if r.get("recovered_at")
                                                     else "") for r in regs if r["trained"])
                 if any(r["trained"] for r in regs) else "") + ".",
              "Standing at the end (a trained suite whose final value is more than the threshold below its best "
              "earlier one): " + (", ".join(f"{r['suite']} ({r['value']:.3f} vs {r['best']:.3f} after "
                                            f"{r['best_stage']})" for r in standing(ledger)) or "none") + "."]
    return lines

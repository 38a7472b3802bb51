"""The skill ledger: values with Wilson intervals in pipeline order, every drop of more than 3 points from the best
earlier stage flagged (trained suites marked), and the Markdown table the report and console print."""

from __future__ import annotations

import pytest

from align.ledger import build_ledger, ledger_lines, wilson


def _res(acc: float, n: int = 100) -> dict:
    return {"accuracy": acc, "n": n}


def test_wilson_matches_hand_values():
    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0.0, 0) == (0.0, 1.0)


def test_drops_over_three_points_from_the_best_earlier_stage_are_regressions():
    graded = {"sft": {"add": _res(1.0), "math": _res(0.1)},
              "reasoning": {"add": _res(0.98), "math": _res(0.5)},   # -2 points: within tolerance
              "grpo": {"add": _res(0.96), "math": _res(0.45)}}       # -4 vs sft (the best earlier), -5 vs reasoning
    led = build_ledger(graded, {"add": ["sft"], "math": []})
    assert led["stages"] == ["sft", "reasoning", "grpo"]
    regs = {(r["suite"], r["stage"]): r for r in led["regressions"]}
    assert set(regs) == {("add", "grpo"), ("math", "grpo")}
    assert regs[("add", "grpo")]["best_stage"] == "sft" and regs[("add", "grpo")]["drop"] == pytest.approx(0.04)
    assert regs[("add", "grpo")]["trained"] and not regs[("math", "grpo")]["trained"]
    assert "regression" not in led["suites"]["add"]["stages"]["reasoning"]
    text = "\n".join(ledger_lines(led))
    assert "| add | 1.000 [0.96, 1.00] | 0.980 [0.93, 0.99] | 0.960 [0.90, 0.98] **REGRESSION -0.040 vs sft** | sft |" in text
    assert "Regressions (a drop of more than 3 points from the best earlier stage): 2, on trained suites: add at grpo." in text


def test_a_suite_missing_for_a_stage_is_a_dash_and_breaks_nothing():
    led = build_ledger({"a": {"x": _res(0.5)}, "b": {"y": _res(0.2)}}, {})
    assert led["regressions"] == []
    assert "| x | 0.500 [0.40, 0.60] | - | - |" in "\n".join(ledger_lines(led))


def test_a_drop_of_exactly_three_points_is_not_a_regression():
    # 1.0 - 0.97 is 0.030000000000000027 in floats: the line is "more than 3 points", so this is within it
    led = build_ledger({"sft": {"add": _res(1.0, 200)}, "long": {"add": _res(0.97, 200)},
                        "grpo": {"add": _res(0.965, 200)}}, {"add": ["sft"]})
    assert [(r["stage"], r["drop"]) for r in led["regressions"]] == [("grpo", 0.035)]

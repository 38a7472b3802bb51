"""The skill ledger: values with Wilson intervals in pipeline order, every drop of more than 3 points from the best
earlier stage flagged (trained suites marked), and the Markdown table the report and console print."""

from __future__ import annotations

import pytest

from align.ledger import build_ledger, ledger_lines, standing, wilson


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
    assert [r["suite"] for r in standing(led)] == ["add"]  # the untrained suite's drop is flagged, not held against
    assert "Standing at the end (a trained suite whose final value is more than the threshold below its best earlier " \
           "one): add (0.960 vs 1.000 after sft)." in text


def test_a_dip_a_later_stage_recovers_is_marked_and_does_not_stand():
    # a stage that disturbs a skill on purpose (a short retrieval stage between sft and reasoning) and one that brings
    # it back: flagged where it happened, marked recovered, and not a regression the run ends with
    graded = {"sft": {"add": _res(0.94)}, "recall": {"add": _res(0.4)}, "reasoning": {"add": _res(0.92)},
              "long": {"add": _res(0.995)}, "grpo": {"add": _res(0.99)}}
    led = build_ledger(graded, {"add": ["sft", "recall", "reasoning", "long", "grpo"]})
    assert [(r["stage"], r["best_stage"], r["recovered_at"]) for r in led["regressions"]] == [
        ("recall", "sft", "reasoning")]  # 0.92 is within 3 points of 0.94: back
    assert standing(led) == []
    text = "\n".join(ledger_lines(led))
    assert "0.400 [0.31, 0.50] **REGRESSION -0.540 vs sft** (recovered by reasoning)" in text
    assert "on trained suites: add at recall (recovered by reasoning)." in text and "Standing at the end" in text
    assert text.endswith("none.")
    # recovered to less than the threshold: it stands, at the last stage, against the best before it
    graded["long"]["add"], graded["grpo"]["add"] = _res(0.85), _res(0.86)
    led = build_ledger(graded, {"add": ["sft"]})
    assert [(r["stage"], r["recovered_at"]) for r in led["regressions"]] == [
        ("recall", "reasoning"), ("long", None), ("grpo", None)]
    assert [(r["stage"], r["best_stage"]) for r in standing(led)] == [("grpo", "sft")]


def test_a_suite_missing_for_a_stage_is_a_dash_and_breaks_nothing():
    led = build_ledger({"a": {"x": _res(0.5)}, "b": {"y": _res(0.2)}}, {})
    assert led["regressions"] == []
    assert "| x | 0.500 [0.40, 0.60] | - | - |" in "\n".join(ledger_lines(led))


def test_a_drop_of_exactly_three_points_is_not_a_regression():
    # 1.0 - 0.97 is 0.030000000000000027 in floats: the line is "more than 3 points", so this is within it
    led = build_ledger({"sft": {"add": _res(1.0, 200)}, "long": {"add": _res(0.97, 200)},
                        "grpo": {"add": _res(0.965, 200)}}, {"add": ["sft"]})
    assert [(r["stage"], r["drop"]) for r in led["regressions"]] == [("grpo", 0.035)]

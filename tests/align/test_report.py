"""Report details: models are named by the stage that wrote them; a plot whose values are all equal says so."""

from __future__ import annotations

from align.report import _flat_message, _plot_depth, model_label


def test_models_are_named_by_their_stage():
    assert model_label("/r/02_grpo/final") == "grpo"
    assert model_label("/r/base") == "base"
    assert model_label("/models/my-qwen") == "my-qwen"


def test_flat_depth_curve_is_a_message_not_lines(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert _flat_message(ax, [0.0, 0.0, 0.0], "accuracy at every depth")
    assert "nothing varies" in ax.texts[0].get_text() and not ax.lines
    assert not _flat_message(ax, [0.0, 0.5], "x")
    ev = {"stage": "eval", "input_model": "/r/02_grpo/final",
          "metrics": {"suites": {"needle": {"accuracy_by_depth": {"0.05": 0.0, "0.5": 0.0, "0.95": 0.0}}}}}
    assert _plot_depth(ev, tmp_path) is not None

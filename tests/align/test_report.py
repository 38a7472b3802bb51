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


def test_stale_stage_folders_are_not_part_of_the_report(tmp_path):
    """A stage rerun after an upstream rebuild leaves its old folder as ``NN_<stage>.stale``: the report, the bench
    summaries and the ledger read only the live folders."""
    from align.report import stage_manifest_paths

    for name in ("00_sft", "01_grpo.stale", "01_grpo", "02_eval.stale", "notes"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    assert [p.parent.name for p in stage_manifest_paths(tmp_path)] == ["00_sft", "01_grpo"]

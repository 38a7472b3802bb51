"""Run report: ``runs/<name>/report.md`` with the stage table, eval suites by stage, and PNG plots.

Built only from what a run folder holds (manifests, ``log_history.json`` / checkpoint ``trainer_state.json``), so
``python run_pipeline.py report runs/<name>`` regenerates it at any time, also for a copied or partial run.
Plots (``report/*.png``): loss or reward curve per stage, held-out accuracy by stage, eval suites by stage, needle
accuracy by depth, and the expert-load heatmap when a stage logged MoE telemetry (``metrics.moe``).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def stage_manifest_paths(run_dir: Path) -> list[Path]:
    """The manifests of a run's stage folders (``NN_<stage>``) in pipeline order. Folders moved aside as
    ``NN_<stage>.stale`` (an upstream stage was rebuilt, so their outputs no longer follow from the run) are left
    out."""
    return sorted(p for p in Path(run_dir).glob("[0-9][0-9]_*/manifest.json") if not p.parent.name.endswith(".stale"))


def _manifests(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in stage_manifest_paths(run_dir):
        m = json.loads(path.read_text())
        m["_dir"] = path.parent
        out.append(m)
    return out


def log_history(stage_dir: Path) -> list[dict[str, Any]]:
    """The trainer's log history of a stage: ``log_history.json``, else the newest checkpoint's trainer state."""
    path = stage_dir / "log_history.json"
    if path.is_file():
        return json.loads(path.read_text())
    states = sorted(stage_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return json.loads(states[-1].read_text()).get("log_history", []) if states else []


def _save(fig: Any, path: Path) -> str:
    """Lay out, write (PNG, 100 dpi) and close a figure; returns the file name for the report."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def _plot_curves(m: dict[str, Any], out: Path) -> str | None:
    import matplotlib.pyplot as plt

    hist = log_history(m["_dir"])
    keys = [k for k in ("reward", "loss") if any(k in h for h in hist)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(h["step"], h[key]) for h in hist if key in h and "step" in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("mean reward (sampled)" if key == "reward" else "training loss (nats/token)")
        ax.set_title(f"{m['stage']} ({m['kind']}): {key}")
        ax.grid(alpha=0.3)
    return _save(fig, out / f"curves_{m['stage']}.png")


def _plot_accuracy(train: list[dict[str, Any]], out: Path) -> str | None:
    import matplotlib.pyplot as plt

    pts = [(m["stage"], m["metrics"].get("heldout_accuracy_before"), m["metrics"].get("heldout_accuracy"))
           for m in train if m.get("metrics", {}).get("heldout_accuracy") is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(1.6 * len(pts) + 2, 3.2))
    xs = range(len(pts))
    ax.bar([x - 0.2 for x in xs], [p[1] or 0 for p in pts], width=0.4, label="before (input model)", color="#bbb")
    ax.bar([x + 0.2 for x in xs], [p[2] for p in pts], width=0.4, label="after", color="#3a7")
    ax.set_xticks(list(xs), [p[0] for p in pts])
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title("Held-out accuracy by stage (each stage's own held-out split)")
    ax.legend(fontsize=8)
    return _save(fig, out / "accuracy_by_stage.png")


def model_label(model_dir: str | Path | None) -> str:
    """A model's name in tables and plots: the stage that wrote it (``runs/x/02_grpo/final`` -> ``grpo``), ``base``,
    or the directory's name for a model from outside the run."""
    if not model_dir:
        return "input"
    path = Path(model_dir)
    if path.name == "final" and re.match(r"^\d+_", path.parent.name):
        return re.sub(r"^\d+_", "", path.parent.name)
    return path.name


def _graded_models(ev: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """model label -> {suite: result} for an eval manifest (compared stages, then the eval's input, by the name of
    the stage that wrote it)."""
    met = ev.get("metrics", {})
    by_stage = dict(met.get("by_stage", {}))
    label = model_label(ev.get("input_model"))
    return {**by_stage, (label if label not in by_stage else f"{label} (input)"): met.get("suites", {})}


def _flat_message(ax: Any, values: list[float], what: str) -> bool:
    """When every value is the same, say so on the axes instead of drawing lines on top of each other."""
    if len(set(round(v, 6) for v in values)) > 1:
        return False
    ax.text(0.5, 0.5, f"every {what} is {values[0]:.3f}:\nnothing varies to plot", ha="center", va="center",
            transform=ax.transAxes, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return True


def _plot_suites(ev: dict[str, Any], out: Path) -> str | None:
    import matplotlib.pyplot as plt

    graded = _graded_models(ev)
    suites = list(ev.get("metrics", {}).get("suites", {}))
    if not suites or not graded:
        return None
    fig, ax = plt.subplots(figsize=(1.4 * len(suites) * max(1, len(graded)) / 2 + 3, 3.4))
    width = 0.8 / len(graded)
    for j, (label, res) in enumerate(graded.items()):
        ax.bar([i + (j - (len(graded) - 1) / 2) * width for i in range(len(suites))],
               [res.get(s, {}).get("accuracy", 0) for s in suites], width=width, label=label)
    ax.set_xticks(range(len(suites)), suites)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (greedy)")
    ax.set_title(f"Eval suites by model ({ev['stage']})")
    ax.legend(fontsize=8)
    return _save(fig, out / f"suites_{ev['stage']}.png")


def _plot_depth(ev: dict[str, Any], out: Path) -> str | None:
    import matplotlib.pyplot as plt

    curves = [(label, suite, res["accuracy_by_depth"]) for label, graded in _graded_models(ev).items()
              for suite, res in graded.items() if res.get("accuracy_by_depth")]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.set_title("Retrieval accuracy by needle depth (position bias)")
    if _flat_message(ax, [v for _, _, by_depth in curves for v in by_depth.values()], "accuracy at every depth"):
        return _save(fig, out / f"needle_by_depth_{ev['stage']}.png")
    for label, suite, by_depth in curves:
        ds = sorted(by_depth, key=float)
        ax.plot([100 * float(d) for d in ds], [by_depth[d] for d in ds], marker="o", label=f"{suite}: {label}")
    ax.set_xlabel("needle depth in the context (%)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out / f"needle_by_depth_{ev['stage']}.png")


def plot_expert_load(m: dict[str, Any], out: Path, filename: str | None = None) -> str | None:
    """Heatmap layer x expert of the fraction of routed token-slots (``metrics.moe.layers``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = (m.get("metrics", {}).get("moe") or {}).get("layers")
    if not layers:
        return None
    names = [f"{n} ({layers[n].get('kind', '?')})" for n in layers]
    loads = [layers[n]["load"] for n in layers]
    fig, ax = plt.subplots(figsize=(0.5 * max(len(x) for x in loads) + 3, 0.5 * len(names) + 1.5))
    width = max(len(x) for x in loads)
    im = ax.imshow([x + [0.0] * (width - len(x)) for x in loads], aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("expert")
    ax.set_title(f"Expert load ({m['stage']}): fraction of routed token-slots per layer")
    fig.colorbar(im, ax=ax)
    return _save(fig, out / (filename or f"expert_load_{m['stage']}.png"))


def stage_table(manifests: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: stage, kind, steps, wall time, held-out accuracy before -> after, n, per task."""
    lines = ["| stage | kind | steps | wall s | held-out before | held-out after | n | per task (after) |",
             "|---|---|---|---|---|---|---|---|"]
    for m in manifests:
        met = m.get("metrics", {})
        tasks = ", ".join(f"{k} {_fmt(v['accuracy'])} ({v['n']})" for k, v in (met.get("heldout_by_verifier") or {}).items())
        lines.append(f"| {m['stage']} | {m['kind']} | {_fmt(m.get('steps'))} | {_fmt(m.get('wall_time_s'), 1)} | "
                     f"{_fmt(met.get('heldout_accuracy_before'))} | {_fmt(met.get('heldout_accuracy'))} | "
                     f"{_fmt(met.get('heldout_n'))} | {tasks} |")
    return lines


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md`` (and ``run_dir/report/*.png``); returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    run_dir = Path(run_dir)
    manifests = [m for m in _manifests(run_dir) if m.get("status") == "completed"]
    if not manifests:
        raise FileNotFoundError(f"{run_dir}: no completed stage (no NN_<stage>/manifest.json with status completed)")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    train = [m for m in manifests if m["kind"] != "eval"]
    evals = [m for m in manifests if m["kind"] == "eval"]
    lines = [f"# Run report: {run_dir.name}", "",
             f"Run folder `{run_dir}`; git commit {manifests[-1].get('git_commit') or 'unknown'}. "
             "Regenerate with `python run_pipeline.py report " + str(run_dir) + "`.", "", "## Stages", "",
             *stage_table(manifests), ""]
    total = sum(m.get("wall_time_s") or 0 for m in manifests)
    lines += [f"Total stage wall time: {total:.0f} s.", ""]
    plots = [p for p in [_plot_accuracy(train, out)] if p]
    for ev in evals:
        graded = _graded_models(ev)
        suites = list(ev["metrics"].get("suites", {}))
        lines += [f"## Eval: {ev['stage']}", "", "Greedy accuracy per suite (pass@k from sampled completions where "
                  "configured), graded by the training verifiers.", "",
                  "| suite | n | " + " | ".join(graded) + " |", "|---|---|" + "---|" * len(graded)]
        for s in suites:
            cells = []
            for res in graded.values():
                r = res.get(s, {})
                pk = r.get("pass_at_k") or {}
                cells.append(_fmt(r.get("accuracy")) + (f" (pass@{max(pk, key=int)} {_fmt(pk[max(pk, key=int)])})"
                                                          if pk else ""))
            lines.append(f"| {s} | {ev['metrics']['suites'][s]['n']} | " + " | ".join(cells) + " |")
        lines.append("")
        if ev["metrics"].get("ledger"):
            from align.ledger import ledger_lines

            lines += ["### Skill ledger", "", "Each graded model in pipeline order, greedy accuracy with its 95 % "
                      "Wilson interval; a drop of more than 3 points from the best earlier stage is a regression "
                      "(recovered when a later stage gets back within 3 points of that best).", "",
                      *ledger_lines(ev["metrics"]["ledger"]), ""]
        lines += ["| suite | statuses | mean length (tokens) |", "|---|---|---|"]
        for s, r in ev["metrics"].get("suites", {}).items():
            lines.append(f"| {s} | {', '.join(f'{k} {v}' for k, v in r.get('statuses', {}).items())} | "
                         f"{_fmt(r.get('mean_length'), 1)} |")
        lines.append("")
        plots += [p for p in (_plot_suites(ev, out), _plot_depth(ev, out)) if p]
    for m in train:
        plots += [p for p in (_plot_curves(m, out), plot_expert_load(m, out)) if p]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}](report/{p})" for p in plots] + [""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    logger.info("report: %s (%d plots)", path, len(plots))
    return path

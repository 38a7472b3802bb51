"""Ablation runner: every combination of ``--vary KEY=V1,V2`` values, one run folder per variant, one comparison.

``python run_pipeline.py ablate configs/x.yaml --vary model.router.aux_loss_coef=0,0.001 --vary seed=0,1``
runs the variants in order into ``runs/<name>-ablation/<variant>/`` and writes ``runs/<name>-ablation/report.md``
(a table of every stage's held-out accuracy and every eval suite per variant, plus ``ablation.png``).
Identical upstream stages are run once: before a variant runs, the longest chain of stages whose model, seed and
stage configs equal an earlier variant's is hard-linked from that variant's folder, and the pipeline's own
skip-by-hash check (same config, same input content) then skips them.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from align import checkpoint
from align.config import config_hash, load_config, to_dict
from align.ledger import standing
from align.pipeline import run_pipeline, stage_config_hash, stage_dir_name

logger = logging.getLogger(__name__)


def split_values(text: str) -> list[str]:
    """Split ``v1,v2`` on top-level commas (not inside [], {} or quotes).

    >>> split_values("0,1e-3"), split_values("[1, 2],{a: 1, b: 2},'x,y'")
    (['0', '1e-3'], ['[1, 2]', '{a: 1, b: 2}', "'x,y'"])
    """
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return [v for v in out if v]


def variants(vary: list[str]) -> list[list[str]]:
    """Every combination of the ``KEY=V1,V2`` options, as override lists (the first value of each key first)."""
    axes = []
    for item in vary:
        key, sep, values = item.partition("=")
        if not sep or not key or not split_values(values):
            raise ValueError(f"--vary {item!r}: expected KEY=V1,V2,...")
        axes.append([f"{key}={v}" for v in split_values(values)])
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def slug(overrides: list[str]) -> str:
    """A folder name for a variant: ``aux_loss_coef=0__seed=1`` (last key segment, safe characters)."""
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, _, v in (o.partition("=") for o in overrides)]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "__".join(parts)) or "base"


def _chain_keys(cfg: Any) -> list[str]:
    """Key of each stage's upstream chain: model, seed and every stage config up to and including it."""
    keys, acc = [], [to_dict(cfg.model), cfg.seed]
    for stage in cfg.stages:
        acc.append(stage_config_hash(cfg, stage))
        keys.append(config_hash(acc))
    return keys


def _link_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=os.link)  # files are only ever replaced by rename, never edited


def _share_upstream(cfg: Any, done: list[Any]) -> None:
    """Hard-link the longest completed chain of stages this variant shares with an earlier one."""
    keys = _chain_keys(cfg)
    best, best_k = None, -1
    for other in done:
        okeys = _chain_keys(other)
        k = -1
        while k + 1 < min(len(keys), len(okeys)) and keys[k + 1] == okeys[k + 1]:
            m = checkpoint.read_json(other.run_dir / stage_dir_name(k + 1, other.stages[k + 1]) / "manifest.json")
            if not m or m.get("status") != "completed":
                break
            k += 1
        if k > best_k:
            best, best_k = other, k
    if best is None or best_k < 0:
        return
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if (best.run_dir / "base").is_dir():
        _link_tree(best.run_dir / "base", cfg.run_dir / "base")
    for i in range(best_k + 1):
        name = stage_dir_name(i, cfg.stages[i])
        _link_tree(best.run_dir / name, cfg.run_dir / name)
    logger.info("ablation: %s shares stages 0..%d with %s", cfg.run_dir.name, best_k, best.run_dir.name)


def run_ablation(config: str, shared: list[str], vary: list[str]) -> Path:
    """Run every variant, then write the comparison; returns the comparison report path."""
    from align.report import write_report

    base = load_config(config, shared)
    root = base.run_dir.with_name(base.run_dir.name + "-ablation")
    done, results = [], []
    for overrides in variants(vary):
        name = slug(overrides)
        cfg = load_config(config, [*shared, *overrides, f"output_dir={root / name}"])
        _share_upstream(cfg, done)
        rows = run_pipeline(cfg, overwrite=True)
        write_report(cfg.run_dir)
        done.append(cfg)
        results.append((name, overrides, rows, cfg))
    return write_comparison(root, results)


def write_comparison(root: Path, results: list[tuple[str, list[str], list[dict[str, Any]], Any]]) -> Path:
    """``root/report.md`` + ``root/ablation.png``: held-out accuracy of every stage and eval suite per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns: list[str] = []
    table: dict[str, dict[str, float | None]] = {}
    ledgers: dict[str, dict[str, Any]] = {}
    for name, _, rows, cfg in results:
        vals: dict[str, float | None] = {}
        for r, stage in zip(rows, cfg.stages):
            vals[r["stage"]] = r["heldout_accuracy"]
            if stage.kind == "eval":
                m = checkpoint.read_json(cfg.run_dir / stage_dir_name(cfg.stages.index(stage), stage) / "manifest.json")
                for suite, res in (m or {}).get("metrics", {}).get("suites", {}).items():
                    vals[f"{r['stage']}:{suite}"] = res["accuracy"]
                if (m or {}).get("metrics", {}).get("ledger"):
                    ledgers[name] = m["metrics"]["ledger"]
        table[name] = vals
        columns += [c for c in vals if c not in columns]
    lines = [f"# Ablation: {root.name}", "", "Held-out greedy accuracy per stage (and per eval suite) for each variant; "
             "each variant's own report is in its folder.", "",
             "| variant | overrides | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name, overrides, _, _ in results:
        cells = ["-" if table[name].get(c) is None else f"{table[name][c]:.3f}" for c in columns]
        lines.append(f"| [{name}]({name}/report.md) | `{' '.join(overrides) or '(base)'}` | " + " | ".join(cells) + " |")
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(columns) * max(1, len(results)) / 2 + 3), 3.6))
    width = 0.8 / max(1, len(results))
    for j, (name, *_rest) in enumerate(results):
        ax.bar([i + (j - (len(results) - 1) / 2) * width for i in range(len(columns))],
               [table[name].get(c) or 0 for c in columns], width=width, label=name)
    ax.set_xticks(range(len(columns)), columns, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title(f"Ablation {root.name}: accuracy by stage and variant")
    ax.legend(fontsize=7)
    fig.tight_layout()
    root.mkdir(parents=True, exist_ok=True)
    fig.savefig(root / "ablation.png", dpi=100)
    plt.close(fig)
    lines += ["", "![accuracy by stage and variant](ablation.png)", ""]
    if ledgers:  # the skill ledgers side by side: each suite's value after the last graded stage, and regressions
        suites = list(dict.fromkeys(s for led in ledgers.values() for s in led["suites"]))
        lines += ["## Skill ledgers", "", "Each suite after the last graded stage (95 % interval), and the regressions "
                  "of each variant's ledger (a drop of more than 3 points from the best earlier stage): all, on "
                  "trained suites, and standing at the end (a trained suite the last stage leaves below its best).", "",
                  "| variant | " + " | ".join(suites) + " | regressions (trained; standing) |",
                  "|---|" + "---|" * (len(suites) + 1)]
        for name, led in ledgers.items():
            last = led["stages"][-1]
            cells = []
            for s in suites:
                c = led["suites"].get(s, {}).get("stages", {}).get(last)
                cells.append("-" if c is None else f"{c['accuracy']:.3f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]")
            regs = led["regressions"]
            lines.append(f"| {name} | " + " | ".join(cells)
                         + f" | {len(regs)} ({sum(r['trained'] for r in regs)}; {len(standing(led))}) |")
        lines.append("")
    path = root / "report.md"
    path.write_text("\n".join(lines))
    return path

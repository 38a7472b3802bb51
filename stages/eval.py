"""Evaluation: generate on held-out suites and grade with the training verifiers (``rewards.get_verifier``).

What it is here: for each suite in the stage's ``suites`` list (``data_recipes.suites``: arithmetic, math, code,
needle at 5/50/95 % depth, two-hop retrieval, instructions; or any recipe), the recipe's **held-out** split is
generated greedily (accuracy) and, with ``eval.samples: n``, ``n`` more completions per prompt are sampled at
``eval.temperature`` (pass@1 and pass@k with the unbiased estimator of Chen et al. 2021). Every completion is graded
by its row's verifier (or the suite's ``verifier``), exactly as in training: statuses are counted, the mean completion
length (tokens) is reported, and rows that carry a needle ``depth`` also report accuracy by depth (position bias).
Trains nothing: ``final_dir`` is the input model, which the next stage (if any) starts from. Skipped on rerun like any
stage (same config and input model).

Launch: ``python run_pipeline.py configs/default.yaml --only eval --init-from DIR``.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

from align import evaluation, modeling
from align.config import EvalStageConfig
from align.stage import StageContext, StageResult
from data_recipes.formats import with_system_prompt
from data_recipes.registry import resolve_recipe
from data_recipes.schema import DataError
from data_recipes.suites import SUITES
from rewards.grading import GradingReport, grade_rows

logger = logging.getLogger(__name__)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 0, 4), pass_at_k(4, 2, 4)
    (0.25, 0.5, 0.0, 1.0)
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def suite_rows(suite: Any, seed: int, switch: bool = True) -> tuple[list[dict[str, Any]], int | None]:
    """The held-out rows of a suite, each in the suite's thinking mode (its ``thinking:``, else the built-in suite's;
    only where the template has the switch, ``switch``), and its generation budget (None: the stage's)."""
    recipe, kwargs, verifier, budget = suite.recipe, dict(suite.kwargs), suite.verifier, suite.max_new_tokens
    mode = suite.thinking
    if suite.recipe is None:
        recipe, base_kwargs, base_verifier, base_budget, base_mode = SUITES[suite.name]
        kwargs = {**base_kwargs, **kwargs}
        verifier = verifier or base_verifier
        budget = budget or base_budget
        mode = base_mode if mode is None and switch else mode
    try:
        rows = resolve_recipe(recipe)(split="heldout", n=suite.n, seed=seed, **kwargs)
    except (TypeError, ValueError) as exc:
        raise DataError(f"suite {suite.name!r} (recipe {recipe!r}, kwargs {kwargs}): {exc}") from None
    if verifier:
        rows = [{**r, "verifier": verifier} for r in rows]
    if mode is not None:
        rows = [{**r, "thinking": mode} for r in rows]
    return rows, budget


def grade_suite(model: Any, tok: Any, rows: list[dict[str, Any]], max_new_tokens: int, batch_size: int,
                samples: int, temperature: float) -> dict[str, Any]:
    """Greedy accuracy, pass@k over ``samples`` sampled completions, statuses, mean length, accuracy by depth."""
    pairs = [evaluation.prompt_and_gold(r) for r in rows]
    prompts = [p for p, _ in pairs]
    modes = evaluation.row_modes(rows)
    greedy = evaluation.generate(model, tok, prompts, max_new_tokens, batch_size, desc="eval greedy", modes=modes)
    verdicts = grade_rows(rows, greedy)  # the training verifiers, their budgets, through the one grading path
    report = GradingReport.build(rows, greedy, verdicts)
    lengths = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in greedy]
    out: dict[str, Any] = {
        "n": report.n, "accuracy": report.accuracy, "statuses": report.statuses,
        "mean_length": sum(lengths) / len(lengths), "verifiers": sorted(report.by_verifier),
        "examples": report.examples,
    }
    by_depth: dict[float, list[bool]] = defaultdict(list)
    for r, v in zip(rows, verdicts):
        depth = (r.get("meta") or {}).get("depth") if isinstance(r.get("meta"), dict) else None
        if isinstance(depth, int | float):
            by_depth[round(float(depth), 3)].append(v.accepted)
    if by_depth and len(by_depth) <= 20:
        out["accuracy_by_depth"] = {str(d): sum(a) / len(a) for d, a in sorted(by_depth.items())}
    if samples:
        sampled = evaluation.generate(model, tok, prompts, max_new_tokens, batch_size, desc="eval sampled", modes=modes,
                                      do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                      num_return_sequences=samples)
        sampled_verdicts = grade_rows([r for r in rows for _ in range(samples)], sampled)
        correct = [sum(v.accepted for v in sampled_verdicts[i * samples : (i + 1) * samples]) for i in range(len(rows))]
        ks = sorted({1, samples} | {2**e for e in range(1, 8) if 2**e < samples})
        out["pass_at_k"] = {str(k): sum(pass_at_k(samples, c, k) for c in correct) / len(rows) for k in ks}
        out["samples"], out["temperature"] = samples, temperature
    return out


def grade_model(model_dir: Any, cfg: Any, seed: int, chat_template: str | None = None,
                system_prompt: str | None = None, samples: int | None = None) -> dict[str, Any]:
    """Every suite of ``cfg.suites`` on the model in ``model_dir``: ``{suite name: grade_suite result}``; ``samples``
    (default ``cfg.eval.samples``) sampled completions per prompt for pass@k."""
    from align.thinking import has_switch, mode_problem

    model, tok = modeling.load_model(model_dir, chat_template=chat_template)
    model.config.output_router_logits = False
    switch = has_switch(tok)
    out: dict[str, Any] = {}
    for suite in cfg.suites:
        rows, budget = suite_rows(suite, seed, switch)
        problem = mode_problem(rows, switch, f"suite {suite.name!r}", str(model_dir))
        if problem:
            raise DataError(problem)
        if system_prompt:
            rows = [with_system_prompt(r, system_prompt) for r in rows]
        res = grade_suite(model, tok, rows, budget or cfg.eval.max_new_tokens, cfg.eval.batch_size,
                          cfg.eval.samples if samples is None else samples, cfg.eval.temperature)
        logger.info("eval %s on %s: accuracy %.3f (n=%d)%s", suite.name, model_dir, res["accuracy"], res["n"],
                    f", pass@k {res['pass_at_k']}" if "pass_at_k" in res else "")
        out[suite.name] = res
    return out


def skill_ledger(cfg: EvalStageConfig, ctx: StageContext, by_stage: dict[str, Any], suites: dict[str, Any]) -> dict:
    """The skill ledger (``align.ledger``) of the graded models in pipeline order (compared stages in the order the
    pipeline ran them, then this stage's input), each suite marked with the stages whose data used its recipe (read
    from their manifests)."""
    import json
    import re

    from align.ledger import build_ledger
    from align.report import model_label

    def folder(model_dir: Any) -> Any:
        return model_dir.parent if model_dir.name == "final" else None

    # pipeline order, not the folders' names: a skipped stage's model may live in another run folder (one copied or
    # moved), whose path sorts anywhere
    graded = {name: by_stage[name] for name in ctx.final_dirs if name in by_stage}
    label = model_label(ctx.init_dir)
    if label not in graded:
        graded[label] = suites
    recipes: dict[str, set[str]] = {}  # stage -> recipes its data used
    for name in graded:
        d = folder(ctx.final_dir_of(name)) if name in by_stage else folder(ctx.init_dir)
        manifest = d / "manifest.json" if d is not None else None
        if manifest is not None and manifest.is_file() and re.match(r"^\d+_", d.name):
            sources = (json.loads(manifest.read_text()).get("data") or {}).get("sources") or []
            recipes[name] = {s.get("recipe") for s in sources if s.get("recipe")}
    trained_by = {}
    for suite in cfg.suites:
        recipe = suite.recipe or SUITES[suite.name][0]
        trained_by[suite.name] = [name for name in graded if recipe in recipes.get(name, set())]
    return build_ledger(graded, trained_by)


def run(cfg: EvalStageConfig, ctx: StageContext) -> StageResult:
    """Grade the input model (and the ``compare`` stages' final models) on every suite; trains nothing."""
    from align.checkpoint import is_main_process

    if not is_main_process():  # one rank grades; the others wait at the pipeline's barrier
        return StageResult(final_dir=ctx.init_dir, steps=0, metrics={}, extra={})
    suites = grade_model(ctx.init_dir, cfg, ctx.seed, ctx.chat_template, ctx.system_prompt)
    by_stage: dict[str, Any] = {}
    for name in cfg.compare:
        final = ctx.final_dir_of(name)
        if not (final / "config.json").is_file():
            logger.warning("eval: stage %s has no final model at %s; not compared", name, final)
            continue
        graded = suites if final.resolve() == ctx.init_dir.resolve() else grade_model(
            final, cfg, ctx.seed, ctx.chat_template, ctx.system_prompt, samples=cfg.compare_samples)
        by_stage[name] = {k: {m: v[m] for m in ("accuracy", "n", "pass_at_k", "accuracy_by_depth") if m in v}
                          for k, v in graded.items()}
    n = sum(s["n"] for s in suites.values())
    ledger = skill_ledger(cfg, ctx, by_stage, suites)
    metrics = {"suites": suites, "by_stage": by_stage, "ledger": ledger,
               "heldout_accuracy": sum(s["accuracy"] * s["n"] for s in suites.values()) / n, "heldout_n": n,
               "heldout_by_verifier": {k: {"accuracy": v["accuracy"], "n": v["n"]} for k, v in suites.items()}}
    return StageResult(final_dir=ctx.init_dir, steps=0, metrics=metrics, extra={"suites": list(suites)})

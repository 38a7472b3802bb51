"""Reasoning-trace tuning: SFT on assistant turns that carry a ``<think>…</think>`` trace before the answer.

What it is here: the same objective as ``sft`` (assistant-only cross-entropy + MoE aux loss, on TRL's SFTTrainer,
through the same helpers — not a subclass), on rows whose assistant turn reasons first. The traces come from
``traces.source``:

- ``recipe``: the traces the data recipe writes (e.g. column-by-column arithmetic);
- ``self``: rejection sampling, as in DeepSeek-R1's later SFT stages — sample ``k`` completions per training prompt
  from the *input* model (temperature ``traces.temperature``), keep the ones that the row's own verifier and every
  verifier in ``traces.verifiers`` (default ``think_format``) accept, and train on those. The acceptance rate goes
  into the manifest; a run where nothing is accepted stops with an error instead of training on nothing.

Launch: ``python run_pipeline.py configs/default.yaml --only reasoning [--init-from DIR]``.
"""

from __future__ import annotations

import logging
from typing import Any

from align import evaluation, training
from align.config import ReasoningStageConfig
from align.stage import StageContext, StageResult
from data_recipes import DataError, build_rows
from rewards.grading import grade_rows

logger = logging.getLogger(__name__)


def sample_accepted_traces(model: Any, tok: Any, rows: list[dict[str, Any]], traces: Any) -> tuple[list[dict], dict]:
    """Rejection sampling: chat rows built from the sampled completions every verifier accepts, plus stats."""
    rows = rows[: traces.max_prompts]
    pairs = [evaluation.prompt_and_gold(r) for r in rows]
    samples = evaluation.generate(
        model, tok, [p for p, _ in pairs], traces.max_new_tokens, batch_size=max(1, 256 // traces.k),
        desc="rejection sampling", modes=evaluation.row_modes(rows), do_sample=True, temperature=traces.temperature,
        top_k=0,
        num_return_sequences=traces.k,
    )
    # every sample must pass its row's own verifier and every trace filter (the one grading path, with budgets)
    expanded = [row for row in rows for _ in range(traces.k)]
    passed = [v.accepted for v in grade_rows(expanded, samples)]
    for name in traces.verifiers:
        passed = [p and v.accepted for p, v in zip(passed, grade_rows(expanded, samples, verifier=name))]
    accepted: list[dict[str, Any]] = []
    for i, (row, (prompt, _)) in enumerate(zip(rows, pairs)):
        for j in range(i * traces.k, (i + 1) * traces.k):
            if passed[j]:
                accepted.append({**row, "messages": [*prompt, {"role": "assistant", "content": samples[j]}]})
    stats = {"sampled": len(samples), "accepted": len(accepted),
             "acceptance_rate": len(accepted) / len(samples) if samples else 0.0}
    return accepted, stats


def run(cfg: ReasoningStageConfig, ctx: StageContext) -> StageResult:
    """Run the reasoning stage ``cfg`` in ``ctx``; returns the finalized result."""
    source = cfg.traces.source if cfg.traces else "recipe"

    # data: recipe rows (their assistant turns carry traces when source=recipe; only prompts are used when self)
    rows = build_rows(cfg.data, "train", ctx.seed, cfg.row_schema("train"), ctx.system_prompt)
    heldout = evaluation.heldout_rows(cfg, ctx)

    # model: the input model (also the sampler for self-generated traces)
    model, tok, coef = training.prepare_model(ctx, cfg)
    rows, heldout = training.resolve_modes(cfg, ctx, tok, rows), training.resolve_modes(cfg, ctx, tok, heldout)
    metrics: dict[str, Any] = {"aux_loss_coef": coef, "trace_source": source}
    evaluation.grade_before(model, tok, cfg, heldout, metrics)
    if source == "self":
        # replayed rows are an earlier task's own demonstrations (often another mode): kept, not re-sampled
        demos = [r for r in rows if r.get("replay")]
        rows, stats = sample_accepted_traces(model, tok, [r for r in rows if not r.get("replay")], cfg.traces)
        stats["replay_rows"] = len(demos)
        metrics["rejection_sampling"] = stats
        logger.info("rejection sampling: %d of %d samples accepted (%.1f%%), plus %d replayed rows", stats["accepted"],
                    stats["sampled"], 100 * stats["acceptance_rate"], len(demos))
        rows += demos
        if not stats["accepted"]:
            raise DataError(f"stage {cfg.name!r}: rejection sampling accepted no sample; raise traces.k or "
                            "traces.temperature, or start from a stronger model")

    # trainer: SFT on the traces
    trainer, out = training.train_sft(model, tok, rows, cfg, ctx, coef)

    # finalize and grade
    return training.finish_stage(trainer, out, tok, cfg, ctx, heldout, metrics,
                                 {"n_train": len(rows), "n_heldout": len(heldout)})

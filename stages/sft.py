"""Supervised fine-tuning on chat rows, on TRL's ``SFTTrainer``.

What it is here: next-token cross-entropy on the assistant turns only (``assistant_only_loss``, via the
``{% generation %}`` markers of our chat template; the end-of-turn token is inside them, so the model learns to stop),
plus the MoE load-balancing aux loss weighted by the stage's router policy (``aux_loss_coef``; TRL adds it and logs
``aux_loss``). Optional LoRA on attention / experts / router, merged into plain weights at finalize. After training,
the held-out split is graded greedily by each row's verifier.

Launch: ``python run_pipeline.py configs/default.yaml --only sft [--init-from DIR]``.
"""

from __future__ import annotations

import logging
from typing import Any

from align import evaluation, training
from align.config import SftStageConfig
from align.stage import StageContext, StageResult
from data_recipes import build_rows

logger = logging.getLogger(__name__)


def run(cfg: SftStageConfig, ctx: StageContext) -> StageResult:
    """Run the SFT stage ``cfg`` (a StageConfig) in ``ctx`` (a StageContext); returns the finalized result."""
    # data: train rows for the trainer, held-out rows for grading (disjoint by construction)
    train_rows = build_rows(cfg.data, "train", ctx.seed, cfg.kind, ctx.system_prompt)
    heldout = evaluation.heldout_rows(cfg, ctx)

    # model: plain HF dir in, router policy applied
    model, tok, coef = training.prepare_model(ctx, cfg)
    train_rows = training.resolve_modes(cfg, ctx, tok, train_rows)
    heldout = training.resolve_modes(cfg, ctx, tok, heldout)
    metrics: dict[str, Any] = {"aux_loss_coef": coef}
    evaluation.grade_before(model, tok, cfg, heldout, metrics)

    # trainer: our defaults, then the YAML's trainer block (TRL fields, validated at config load)
    trainer, out = training.train_sft(model, tok, train_rows, cfg, ctx, coef)

    # finalize: plain HF dir (LoRA merged), then grade the held-out split with the final weights
    return training.finish_stage(trainer, out, tok, cfg, ctx, heldout, metrics,
                                 {"n_train": len(train_rows), "n_heldout": len(heldout)})

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

from align import checkpoint, evaluation, modeling, moe, training
from align.checkpoint import StageResult
from data_recipes import build_rows

logger = logging.getLogger(__name__)


def run(cfg: Any, ctx: Any) -> StageResult:
    """Run the SFT stage ``cfg`` (a StageConfig) in ``ctx`` (a StageContext); returns the finalized result."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    # data: train rows for the trainer, held-out rows for grading (disjoint by construction)
    train_rows = build_rows(cfg.data, "train", ctx.seed, cfg.kind)
    heldout_rows = build_rows(cfg.data, "heldout", ctx.seed, cfg.kind) if cfg.data.n_heldout else []

    # model: plain HF dir in, router policy applied
    model, tok = modeling.load_model(ctx.init_dir)
    logger.info("%s", modeling.describe(model))
    coef = moe.apply_router_policy(model, ctx.router.aux_loss_coef)
    metrics: dict[str, Any] = {"aux_loss_coef": coef}
    if cfg.eval.before and heldout_rows:
        metrics["heldout_accuracy_before"] = evaluation.grade_heldout(
            model, tok, heldout_rows, cfg.eval.max_new_tokens, cfg.eval.batch_size
        )["accuracy"]
    if cfg.lora is not None:
        model = training.wrap_lora(model, cfg.lora)

    # trainer: our defaults, then the YAML's trainer block (TRL fields, validated at config load)
    args = SFTConfig(
        **{
            **training.trainer_defaults(ctx.stage_dir, ctx.seed),
            "assistant_only_loss": True,
            "packing": False,
            "router_aux_loss_coef": coef,
            **cfg.trainer,
        }
    )
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in train_rows])
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tok,
        callbacks=[training.CompleteCheckpointCallback()],
    )
    out = training.train(trainer, ctx.stage_dir)

    # finalize: plain HF dir (LoRA merged), then grade the held-out split with the final weights
    final = checkpoint.finalize(trainer.model, tok, ctx.stage_dir / "final")
    model, tok = modeling.load_model(final)
    graded = evaluation.grade_heldout(model, tok, heldout_rows, cfg.eval.max_new_tokens, cfg.eval.batch_size)
    metrics.update(
        heldout_accuracy=graded["accuracy"], heldout_n=graded["n"], heldout_status=graded["status_counts"],
        heldout_examples=graded["examples"], train_loss=out.training_loss,
        **training.loss_summary(trainer.state.log_history),
    )
    return StageResult(final_dir=final, steps=trainer.state.global_step, metrics=metrics,
                       extra={"n_train": len(train_rows), "n_heldout": len(heldout_rows)})

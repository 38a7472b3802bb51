"""GRPO with rule-based verifier rewards, on TRL's ``GRPOTrainer``.

What it is here: for each prompt, ``num_generations`` completions are sampled from the current policy (HF
generation on CPU; TRL's vLLM mode where configured); each is scored by the verifiers in the stage's ``verifiers``
list (a row is scored by the verifier its ``verifier`` column names; shaping terms with ``all_rows``), the weighted sum
is the reward, and the advantage is the reward minus its group mean (scaled by the group std unless
``scale_rewards`` says otherwise). The loss is TRL's (``loss_type``, default ``dapo``: token-level normalisation over
the batch), with the clipped importance ratio; ``importance_sampling_level: sequence`` gives GSPO; ``beta > 0``
adds a KL term to the input model (rebuilt from its directory). Rewards never raise: a verifier error or timeout is
that sample's status and costs its reward only (``rewards.trl_adapter``).

Our MoE defaults (override any in ``trainer:``), with the reason for each:
- ``router_aux_loss_coef`` comes from the router policy; ``configs/default.yaml`` sets 0 for RL: the balancing loss
  pulls routing toward uniform while the policy gradient is tiny, and measured runs learned faster without it.
  The coefficient is logged each step (``aux_loss`` when non-zero).
- ``router.freeze`` (off by default) freezes router weights so RL moves experts and attention only.
- ``output_router_logits`` is switched off in the model config before training: TRL's rollout generates on padded
  batches, where router-logit outputs crash the load-balancing loss (STACK-NOTES); TRL still requests router logits
  itself in the loss forward when the aux loss is on.
- ``beta = 0`` (no reference model): cheaper on CPU and the clip already bounds the update; set ``beta`` to log KL.
- ``num_generations = 8``, ``temperature = 1.0``, ``max_completion_length = 64``: groups large enough to keep reward
  variance on a tiny model, completions long enough for an arithmetic trace.

Launch: ``python run_pipeline.py configs/default.yaml --only grpo [--init-from DIR]``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

from align import training
from align.checkpoint import StageResult
from data_recipes import build_rows
from rewards.think_format import template_prefills_think
from rewards.trl_adapter import build_reward_functions

logger = logging.getLogger(__name__)

GRPO_DEFAULTS: dict[str, Any] = {
    "num_generations": 8,
    "per_device_train_batch_size": 32,
    "max_completion_length": 64,
    "temperature": 1.0,
    "beta": 0.0,
    "learning_rate": 1e-5,
    "logging_steps": 5,
    "save_steps": 50,
}


def run(cfg: Any, ctx: Any) -> StageResult:
    """Run the GRPO stage ``cfg`` in ``ctx``; returns the finalized result."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    # data: prompt rows (prompt, answer, verifier, meta); meta travels as JSON text (Arrow needs one column type)
    rows = build_rows(cfg.data, "train", ctx.seed, cfg.kind)
    heldout = training.heldout_rows(cfg, ctx)
    dataset = Dataset.from_list([
        {"prompt": r["prompt"], "answer": r["answer"], "verifier": r["verifier"],
         "meta": json.dumps(r["meta"]) if r.get("meta") is not None else ""}
        for r in rows
    ])

    # model: router policy, then router logits off for the rollout
    model, tok, coef = training.prepare_model(ctx, cfg)
    metrics: dict[str, Any] = {"aux_loss_coef": coef, "router_frozen": ctx.router.freeze}
    training.grade_before(model, tok, cfg, heldout, metrics)
    model.config.output_router_logits = False
    if cfg.lora is not None:
        model = training.wrap_lora(model, cfg.lora)

    # rewards: one TRL reward function per verifier spec, weights to GRPOConfig. Whether the chat template pre-fills
    # <think> is decided once here from the template, not guessed per sample.
    specs = list(cfg.verifiers)
    rendered = tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False)
    if template_prefills_think(rendered):
        specs = [replace(s, kwargs={"prefilled": True, **s.kwargs}) if s.name == "think_format" else s for s in specs]
    reward_funcs, weights = build_reward_functions(specs)

    # trainer
    args = GRPOConfig(**{
        **training.trainer_defaults(ctx.stage_dir, ctx.seed),
        **GRPO_DEFAULTS,
        "router_aux_loss_coef": coef,
        "reward_weights": weights,
        **cfg.trainer,
    })
    trainer = GRPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                          reward_funcs=reward_funcs, callbacks=[training.CompleteCheckpointCallback()])
    out = training.train(trainer, ctx.stage_dir)

    # finalize and grade; per-verifier success rates and status counts go into the manifest
    metrics["verifiers"] = {f.__name__: f.stats.summary() for f in reward_funcs}
    metrics.update(reward_summary(trainer.state.log_history))
    return training.finish_stage(trainer, out, tok, cfg, ctx, heldout, metrics,
                                 {"n_train": len(rows), "n_heldout": len(heldout),
                                  "verifier_specs": [s.name for s in cfg.verifiers]})


def reward_summary(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """First and last logged mean reward (and KL when logged)."""
    rewards = [r["reward"] for r in log_history if "reward" in r]
    out: dict[str, Any] = {}
    if rewards:
        out.update(reward_first=rewards[0], reward_last=rewards[-1])
    kl = [r["kl"] for r in log_history if "kl" in r]
    if kl:
        out["kl_last"] = kl[-1]
    return out

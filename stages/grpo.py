"""GRPO with rule-based verifier rewards, on TRL's ``GRPOTrainer``.

What it is here: for each prompt, ``num_generations`` completions are sampled from the current policy (HF
generation on CPU; TRL's vLLM mode where configured); each is scored by the verifiers in the stage's ``verifiers``
list (a row is scored by the verifier its ``verifier`` column names; shaping terms with ``all_rows``), the weighted sum
is the reward, and the advantage is the reward minus its group mean (scaled by the group std unless
``scale_rewards`` says otherwise). The loss is TRL's (``loss_type``, default ``dapo``: token-level normalisation over
the batch), with the clipped importance ratio; ``importance_sampling_level: sequence`` gives GSPO; ``beta > 0``
adds a KL term to the input model (rebuilt from its directory). Rewards never raise: a verifier error or timeout is
that sample's status and costs its reward only (``rewards.trl_adapter``).

Our MoE defaults (``GrpoStageConfig.trainer_defaults``; override any in ``trainer:``), with the reason for each:
- ``router_aux_loss_coef`` comes from the router policy; ``configs/default.yaml`` sets 0 for RL: the balancing loss
  pulls routing toward uniform while the policy gradient is tiny, and measured runs learned faster without it.
  The coefficient is logged each step (``aux_loss`` when non-zero).
- ``router.freeze`` (off by default) freezes router weights so RL moves experts and attention only.
- ``output_router_logits`` is switched off in the model config before training: TRL's rollout generates on padded
  batches, where router-logit outputs crash the load-balancing loss; TRL still requests router logits
  itself in the loss forward when the aux loss is on.
- ``beta = 0`` (no reference model): cheaper on CPU and the clip already bounds the update; set ``beta`` to log KL.
- ``num_generations = 8``, ``max_completion_length = 64``: groups large enough to keep reward variance on a tiny
  model, completions long enough for an arithmetic trace.
- ``temperature = 0.3``: measured on the default model (BENCHMARKS.md), sampling at 1.0 spends the update on tail
  samples the greedy policy never produces; at 0.3 the groups with reward variance are exactly the problems where the
  model hesitates between answers, which is what moves greedy accuracy (+7 points vs -6 at 1.0, same steps).
- ``learning_rate = 1e-4``: on a tiny model Adam turns the noise of a policy gradient into full-size steps; a
  random-reward control at 3e-4 takes held-out accuracy from 0.53 to 0 in 100 steps, so RL runs well below the
  SFT rate.
- Rollout batches grouped by prompt length (stage key ``group_by_length``, on by default): each generation batch
  holds prompts of one token length, so none is left-padded.

Launch: ``python run_pipeline.py configs/default.yaml --only grpo [--init-from DIR]``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import torch
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from align import evaluation, training
from align.config import GrpoStageConfig
from align.lora import wrap_lora
from align.stage import StageContext, StageResult
from align.thinking import render_prompt, row_thinking
from align.validate import fit_rows, token_limit
from data_recipes import build_rows
from rewards.think_format import template_prefills_think
from rewards.trl_adapter import build_reward_functions

logger = logging.getLogger(__name__)

def run(cfg: GrpoStageConfig, ctx: StageContext) -> StageResult:
    """Run the GRPO stage ``cfg`` in ``ctx``; returns the finalized result."""
    from datasets import Dataset
    from trl import GRPOConfig

    # data: prompt rows (prompt, answer, verifier, meta); meta travels as JSON text (Arrow needs one column type)
    rows = build_rows(cfg.data, "train", ctx.seed, cfg.kind, ctx.system_prompt)
    heldout = evaluation.heldout_rows(cfg, ctx)

    # model: router policy, then router logits off for the rollout
    model, tok, coef = training.prepare_model(ctx, cfg)
    rows, heldout = training.resolve_modes(cfg, ctx, tok, rows), training.resolve_modes(cfg, ctx, tok, heldout)
    # TRL does not truncate GRPO prompts: a prompt longer than the model's positions would be generated from anyway
    limit = token_limit(cfg.kind, cfg.trainer_settings(), getattr(model.config, "max_position_embeddings", None))
    rows = fit_rows(rows, tok, cfg.kind, limit, f"stage {cfg.name!r}")
    # every other column travels as JSON text too, so a verifier reads the whole row (``row=``). Prompts go in as the
    # text the template renders in each row's mode (TRL applies one set of template kwargs to a whole batch; a
    # reasoning row and a non-thinking replay row differ); AlignGRPOTrainer tokenizes them as apply_chat_template would.
    own = {"prompt", "answer", "verifier", "meta", "messages"}
    dataset = Dataset.from_list([
        {"prompt": render_prompt(tok, r["prompt"], row_thinking(r)), "answer": r["answer"], "verifier": r["verifier"],
         "meta": json.dumps(r["meta"]) if r.get("meta") is not None else "",
         "columns": json.dumps({k: v for k, v in r.items() if k not in own}, default=str)}
        for r in rows
    ])
    metrics: dict[str, Any] = {"aux_loss_coef": coef, "router_frozen": ctx.router.freeze}
    evaluation.grade_before(model, tok, cfg, heldout, metrics)
    model.config.output_router_logits = False
    if cfg.lora is not None:
        model = wrap_lora(model, cfg.lora)

    # rewards: one TRL reward function per verifier spec, weights to GRPOConfig. Whether the chat template pre-fills
    # <think> is decided once here from the template, not guessed per sample.
    specs = list(cfg.verifiers)
    rendered = render_prompt(tok, [{"role": "user", "content": "x"}], True)
    if template_prefills_think(rendered):
        specs = [replace(s, kwargs={"prefilled": True, **s.kwargs}) if s.name == "think_format" else s for s in specs]
    reward_funcs, weights = build_reward_functions(specs)

    # trainer
    args = GRPOConfig(**{
        **training.trainer_defaults(ctx.stage_dir, ctx.seed),
        **cfg.trainer_defaults,
        "router_aux_loss_coef": coef,
        "reward_weights": weights,
        **cfg.trainer,
    })
    lengths = prompt_lengths(tok, dataset["prompt"]) if cfg.group_by_length else None
    trainer = AlignGRPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                               reward_funcs=reward_funcs, callbacks=[training.CompleteCheckpointCallback()],
                               prompt_lengths=lengths, routing_replay=cfg.routing_replay)
    out = training.train(trainer, ctx.stage_dir, ctx)

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


def prompt_lengths(tok: Any, prompts: list[Any]) -> list[int]:
    """Token length of each prompt as the rollout sees it (chat template with the generation prompt)."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(len(tok(p, add_special_tokens=False)["input_ids"]))
        else:
            out.append(len(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]))
    return out


class LengthGroupedRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` with every chunk of ``batch_size`` prompts drawn from one prompt length.

    Within each length the order is shuffled; full chunks of one length are shuffled together; what is left over
    per length (fewer than ``batch_size``) is pooled, sorted by length and chunked, so nothing is dropped that TRL
    would keep and only those few pooled chunks need padding. The repeat pattern (``mini_repeat_count`` copies of a
    prompt, ``repeat_count`` passes over a chunk) is TRL's.
    """

    def __init__(self, lengths: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lengths = lengths
        if not self.shuffle:
            self.generator = torch.Generator()
            self.generator.manual_seed(self.seed or 0)

    def chunks(self) -> list[list[int]]:
        """The prompt chunks of one pass, in the order they are yielded."""
        order = torch.randperm(self.num_samples, generator=self.generator).tolist()
        by_len: dict[int, list[int]] = {}
        for i in order:
            by_len.setdefault(self.lengths[i], []).append(i)
        full, rest = [], []
        for length in sorted(by_len):
            idx = by_len[length]
            cut = len(idx) - len(idx) % self.batch_size
            full += [idx[i:i + self.batch_size] for i in range(0, cut, self.batch_size)]
            rest += idx[cut:]
        rest.sort(key=lambda i: self.lengths[i])
        full += [rest[i:i + self.batch_size] for i in range(0, len(rest) - self.batch_size + 1, self.batch_size)]
        perm = torch.randperm(len(full), generator=self.generator).tolist()
        return [full[i] for i in perm]

    def __iter__(self):  # noqa: ANN204 - same signature as torch's Sampler
        for chunk in self.chunks():
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index


class AlignGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with length-grouped rollout batches (``prompt_lengths``; None: TRL's sampler) and routing
    replay (``routing_replay``: ``none`` | ``measure`` | ``replay``, see :mod:`align.replay`)."""

    def __init__(self, *args: Any, prompt_lengths: list[int] | None = None, routing_replay: str = "none",
                 **kwargs: Any) -> None:
        self._prompt_lengths = prompt_lengths
        super().__init__(*args, **kwargs)
        self.replay = None
        if routing_replay != "none":
            from align.replay import RoutingReplay

            self.replay = RoutingReplay(self.model)
            self._replay_mode = routing_replay

    def _tokenize_prompts(self, prompts: list) -> Any:
        # Prompts arrive rendered (each row in its thinking mode, see run): tokenize them as apply_chat_template does,
        # without the tokenizer's own special tokens (the template already wrote any BOS; TRL's plain-text path would
        # add a second one).
        if prompts and isinstance(prompts[0], str):
            return self.processing_class(text=prompts, add_special_tokens=False)["input_ids"], None, {}
        return super()._tokenize_prompts(prompts)

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        base = super()._get_train_sampler(dataset)
        if self._prompt_lengths is None or (dataset is not None and len(dataset) != len(self._prompt_lengths)):
            return base
        return LengthGroupedRepeatSampler(
            self._prompt_lengths, data_source=base.data_source, mini_repeat_count=base.mini_repeat_count,
            batch_size=base.batch_size, repeat_count=base.repeat_count, shuffle=base.shuffle, seed=base.seed)

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        if self.replay is not None and self.model.training:
            # the scoring pass whose routing is recorded; its log-probs are the old policy's
            ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
            mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
            with torch.no_grad(), self.replay.active("record"):
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, ids, mask, out["completion_ids"].size(1),
                    batch_size=self.args.per_device_train_batch_size)
            if out.get("old_per_token_logps") is None:
                out["old_per_token_logps"] = logps
        return out

    def _compute_loss(self, model: Any, inputs: Any) -> Any:
        if self.replay is None:
            return super()._compute_loss(model, inputs)
        with self.replay.active(self._replay_mode):
            loss = super()._compute_loss(model, inputs)
        agreement = self.replay.agreement()
        if agreement is not None:
            self._metrics["train"]["routing/agreement"].append(agreement)
        return loss

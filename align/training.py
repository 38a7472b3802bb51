"""Helpers every training stage shares (functions, not a base class): TRL config defaults, callbacks, LoRA."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from align.checkpoint import is_main_process, mark_complete

logger = logging.getLogger(__name__)


def trainer_defaults(stage_dir: Path, seed: int) -> dict[str, Any]:
    """Our defaults for any TRL config; the stage's ``trainer:`` block overrides them.

    CPU: ``use_cpu=True`` (no_cuda no longer exists; under DeepSpeed on CPU it is also what makes the world size
    right) and fp32 without gradient checkpointing, which is faster than TRL's bf16 + checkpointing for tiny models
    (bench/preset_speed.py).
    """
    from align.distributed import device_args

    return {
        "output_dir": str(stage_dir),
        **device_args(),
        "activation_checkpointing": False,  # transformers 5's name (gradient_checkpointing is deprecated)
        "report_to": "none",
        "logging_steps": 10,
        "save_steps": 100,
        "save_total_limit": 2,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
    }


# Below this many rows a worker pool costs more than it saves (starting it is ~0.5 s; TRL prepares ~1,600 rows a
# second in one process on the 2 cores here: 24,000 rows in 15.2 s, 8.1 s with 2 workers, bench/prep_speed.py).
PREP_POOL_MIN_ROWS = 4000


def prep_processes(n_rows: int) -> int:
    """Processes for TRL's dataset preparation (chat template, tokenization, labels; ``dataset_num_proc``): the cores
    this process may use, shared with the other ranks on this machine, at most 8; 1 for small datasets."""
    if n_rows < PREP_POOL_MIN_ROWS:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


class ZeroSelfTestCallback(TrainerCallback):
    """Under DeepSpeed ZeRO-3: the start-up self-test (``align.distributed.zero3_self_test``) on the trainer's engine,
    once, before the first step (after a resume's checkpoint load); its result lands in ``trainer.zero3_self_test``."""

    def __init__(self, trainer: Any, timeout_s: float) -> None:
        self.trainer, self.timeout_s = trainer, timeout_s

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from align.distributed import zero3_self_test

        engine = getattr(self.trainer, "model_wrapped", None)
        if engine is None or getattr(engine, "zero_optimization_stage", lambda: 0)() != 3:
            return
        self.trainer.zero3_self_test = zero3_self_test(engine, self.timeout_s)


class CompleteCheckpointCallback(TrainerCallback):
    """Marks each checkpoint complete after the Trainer finished writing it (see ``align.checkpoint``)."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if is_main_process():
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                mark_complete(ckpt)


def train(trainer: Any, stage_dir: Path, ctx: Any = None) -> Any:
    """``trainer.train()``, resuming from the stage's last *complete* checkpoint if there is one.

    With the stage context ``ctx``: MoE telemetry, the router's bias updates and the layer snapshot run as a
    callback (``align.telemetry``; its summary lands in ``trainer.moe_summary`` for the manifest), and the live
    ``/stats`` monitor serves while training when ``monitor.port`` is set (main process only).
    """
    from transformers.trainer_callback import ProgressCallback

    from align import modeling
    from align.checkpoint import is_main_process, last_complete_checkpoint
    from align.console import quiet_progress_callback
    from align.distributed import zero_stage
    from align.moe import is_moe

    if any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)  # the bar stays; the per-step dicts go to the run log
        trainer.add_callback(quiet_progress_callback())
    resume = last_complete_checkpoint(stage_dir)
    if resume:
        logger.info("resuming from %s", resume)
    if zero_stage() == 3:
        timeout = ctx.distributed.self_test_timeout_s if ctx is not None else 120.0
        trainer.add_callback(ZeroSelfTestCallback(trainer, timeout))
    callback = monitor = None
    if ctx is not None:
        mon_cfg = ctx.monitor
        if mon_cfg.port is not None and is_main_process():
            from align.monitor import Monitor

            monitor = Monitor(mon_cfg.port, stage_dir.name)
        telemetry = is_moe(trainer.model) and (mon_cfg.telemetry or ctx.router.bias_update > 0)
        if telemetry or monitor or mon_cfg.snapshot:
            from align.telemetry import MoeCallback

            callback = MoeCallback(trainer.model, bias_gamma=ctx.router.bias_update, snapshot=mon_cfg.snapshot,
                                   monitor=monitor, telemetry=telemetry)
            trainer.add_callback(callback)
    try:
        if resume is not None:
            use_strict_checkpoint_loading(trainer)
            stop_at_max_steps(trainer)
        with modeling.typed_checkpoint_configs():
            return trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        if callback is not None:
            trainer.moe_summary = callback.summary()
            callback.close()
        if monitor is not None:
            monitor.close()


def use_strict_checkpoint_loading(trainer: Any) -> None:
    """Make the trainer's resume load a single-process / DDP checkpoint's weights through
    ``checkpoint.load_checkpoint_weights`` (key conversion, strict) instead of its own non-strict ``load_state_dict``.
    DeepSpeed restores its own engine checkpoint and PEFT its adapter files; those paths stay TRL's."""
    from peft import PeftModel

    from align.checkpoint import load_checkpoint_weights

    original = trainer._load_from_checkpoint

    def load(resume_from_checkpoint: str, model: Any = None) -> None:
        model = trainer.model if model is None else model
        if isinstance(model, PeftModel) or getattr(trainer, "is_deepspeed_enabled", False):
            return original(resume_from_checkpoint, model)
        load_checkpoint_weights(model, Path(resume_from_checkpoint))

    trainer._load_from_checkpoint = load


def stop_at_max_steps(trainer: Any) -> None:
    """Run no epoch once ``max_steps`` is reached. HF Trainer resumed from a checkpoint that already holds the last
    step (a stage killed while writing ``final/``) skips the trained batches and then runs one step more before it
    checks the limit (7 of 6). Guarding the epoch keeps the checkpoint's weights exactly, on every backend (DeepSpeed
    has restored its engine by then)."""
    original = trainer._run_epoch

    def run_epoch(*args: Any, **kwargs: Any) -> Any:
        state = trainer.state
        if state.max_steps and state.global_step >= state.max_steps:
            logger.info("step %d of %d already trained: nothing left to run", state.global_step, state.max_steps)
            trainer.control.should_training_stop = True
            return None
        return original(*args, **kwargs)

    trainer._run_epoch = run_epoch


def loss_summary(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """First and last logged training loss (and aux loss) from a Trainer's ``state.log_history``."""
    losses = [r["loss"] for r in log_history if "loss" in r]
    aux = [r["aux_loss"] for r in log_history if "aux_loss" in r]
    out: dict[str, Any] = {}
    if losses:
        out.update(train_loss_first=losses[0], train_loss_last=losses[-1])
    if aux:
        out.update(aux_loss_first=aux[0], aux_loss_last=aux[-1])
    return out


def prepare_model(ctx: Any, cfg: Any) -> tuple[Any, Any, float]:
    """Load the stage's input model, apply the router policy (aux-loss coefficient, frozen router)."""
    from align import modeling, moe
    from align.distributed import zero_stage

    model, tok = modeling.load_model(ctx.init_dir, chat_template=ctx.chat_template)
    logger.info("%s", modeling.describe(model))
    if ctx.distributed.ep > 1:  # AutoEP swaps the MoE blocks inside deepspeed.initialize (the trainer's first step)
        import functools

        from align.expert_parallel import install_autoep

        install_autoep()
        # every forward of an expert-parallel layer is an all-to-all over the ranks: a rank whose rollouts all ended
        # must keep stepping until every rank is done (transformers does this by itself only under ZeRO-3 / FSDP).
        # One-rank generation (grading) passes synced_gpus=False explicitly.
        model.generate = functools.partial(model.generate, synced_gpus=True)
    if zero_stage() == 3:  # before any DeepSpeed engine (TRL wraps a reference model while the trainer is built)
        moe.mark_zero3_leaves(model)
    coef = moe.apply_router_policy(model, ctx.router.aux_loss_coef)
    if ctx.router.top_k is not None:
        moe.set_top_k(model, ctx.router.top_k)
        logger.info("router policy: top-%d routing", ctx.router.top_k)
    if ctx.router.freeze:
        frozen = moe.freeze_routers(model)
        logger.info("router policy: %d router weight tensors frozen", frozen)
    if cfg.freeze:
        n, numel = freeze_parameters(model, cfg.freeze, f"stages.{cfg.name}.freeze")
        total = sum(p.numel() for p in model.parameters())
        logger.info("freeze: %d parameter tensors (%.1f%% of the weights) not trained in this stage", n,
                    100 * numel / max(total, 1))
    return model, tok, coef


def freeze_parameters(model: Any, patterns: tuple[str, ...], where: str) -> tuple[int, int]:
    """Stop gradients to every parameter whose name matches one of ``patterns`` (``fnmatch`` globs); returns
    (tensors, elements) frozen. ``align.config.freeze_problems`` (a glob matching nothing, or everything) raise."""
    import fnmatch

    from align.config import ConfigError, freeze_problems

    named = list(model.named_parameters())
    problems = freeze_problems([n for n, _ in named], patterns, where, "the model")
    if problems:
        raise ConfigError("; ".join(problems))
    frozen = [p for n, p in named if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    for p in frozen:
        p.requires_grad_(False)
    return len(frozen), sum(p.numel() for p in frozen)


def resolve_modes(cfg: Any, ctx: Any, tok: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stage's rows with their thinking modes (``align.thinking.resolve``: the row's, its source's, what its
    assistant turn shows, the kind's default), refused when the template cannot express a mode they ask for."""
    from align.thinking import resolve

    return resolve(rows, cfg.thinking_default, tok, f"stage {cfg.name!r}", str(ctx.init_dir))


def train_sft(model: Any, tok: Any, rows: list[dict[str, Any]], cfg: Any, ctx: Any, coef: float) -> tuple[Any, Any]:
    """SFT on chat rows with TRL's SFTTrainer (assistant-only loss, MoE aux loss); returns (trainer, train output)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if cfg.lora is not None:
        from align.lora import wrap_lora

        model = wrap_lora(model, cfg.lora)
    args = SFTConfig(
        **{
            **trainer_defaults(ctx.stage_dir, ctx.seed),
            "router_aux_loss_coef": coef,
            "dataset_num_proc": prep_processes(len(rows)),
            **cfg.trainer_settings(),
        }
    )
    from align.validate import fit_rows

    rows = fit_rows(rows, tok, "sft", args.max_length, f"stage {cfg.name!r}")  # TRL would truncate: drop instead
    from align.thinking import row_thinking, template_kwargs

    # each row rendered in its mode: TRL passes a row's chat_template_kwargs to the template (Qwen3's enable_thinking)
    moded = any(row_thinking(r) is not None for r in rows)
    dataset = Dataset.from_list([{"messages": r["messages"],
                                  **({"chat_template_kwargs": template_kwargs(row_thinking(r))} if moded else {})}
                                 for r in rows])
    trainer_cls = SFTTrainer
    if cfg.ordered_batches:
        sampler = GroupedBatchSampler([r.get("batch_group", 0) for r in rows], [r.get("phase", 0) for r in rows],
                                      args.per_device_train_batch_size, ctx.seed, cfg.group_batch_sizes())

        class trainer_cls(SFTTrainer):  # noqa: N801 - TRL's trainer, its sampler ours
            def _get_train_sampler(self, train_dataset: Any = None) -> Any:
                if train_dataset is not None and len(train_dataset) != len(sampler.groups):
                    raise RuntimeError(f"batch groups: {len(sampler.groups)} rows grouped, the trainer has "
                                       f"{len(train_dataset)}")
                return sampler

            def get_train_dataloader(self) -> Any:
                if not sampler.sizes:
                    return super().get_train_dataloader()
                # batches of several sizes: the sampler yields whole micro-batches (a batch_sampler); accelerate
                # hands each rank every N-th of them, as it does the fixed-size chunks of the plain path
                from torch.utils.data import DataLoader

                self._get_train_sampler(self.train_dataset)  # its row-count check
                dataset = self._remove_unused_columns(self.train_dataset, description="Training")
                loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                                    num_workers=self.args.dataloader_num_workers,
                                    pin_memory=self.args.dataloader_pin_memory)
                return self.accelerator.prepare(loader)

    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tok,
                          callbacks=[CompleteCheckpointCallback()])
    return trainer, train(trainer, ctx.stage_dir, ctx)


class GroupedBatchSampler:
    """A train sampler for curricula and batch groups: consecutive ``batch_size`` indices are one micro-batch of one
    batch group (``SourceConfig.batch_group``; ``data_recipes.mixture.grouped_batches``), the sources' phases in
    order (``SourceConfig.phase``), a fresh shuffle each epoch (seeded by ``seed`` and the epoch, so every rank draws
    the same order and accelerate hands each rank whole batches). With ``sizes`` (group -> its own batch size,
    ``SourceConfig.batch_size``) it is a batch sampler: it yields the micro-batches themselves, ``len`` counts them.
    The trainer sets the epoch on a resume; without that the epoch counts up per pass."""

    def __init__(self, groups: list[int], phases: list[int], batch_size: int, seed: int,
                 sizes: dict[int, int] | None = None) -> None:
        self.groups, self.phases, self.batch_size, self.seed, self.epoch = groups, phases, batch_size, seed, 0
        self.sizes = dict(sizes or {})

    def _order(self, epoch: int) -> list[Any]:
        """The epoch's micro-batches (with ``sizes``) or flat row order (without: the trainer cuts the batches)."""
        import random

        from data_recipes.mixture import grouped_batch_order, grouped_batches

        rng = random.Random(f"batch_groups/{self.seed}/{epoch}")
        if self.sizes:
            return grouped_batches(self.groups, self.phases, self.batch_size, rng, self.sizes)
        return grouped_batch_order(self.groups, self.phases, self.batch_size, rng)

    def __len__(self) -> int:
        return len(self._order(0))  # batches or rows; neither count depends on the shuffle

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> GroupedBatchSampler:
        """Itself: accelerate passes the trainer's epoch (a resume) through ``BatchSamplerShard.batch_sampler.sampler``
        when this batch sampler is split over several ranks; without it only the one-rank path would get it."""
        return self

    def __iter__(self) -> Any:
        order = self._order(self.epoch)
        self.epoch += 1
        return iter(order)


def finish_stage(trainer: Any, out: Any, tok: Any, cfg: Any, ctx: Any, heldout: list[dict[str, Any]],
                 metrics: dict[str, Any], extra: dict[str, Any]) -> Any:
    """Finalize to ``final/`` (plain HF dir, LoRA merged), grade the held-out rows with it, build the StageResult."""
    from align import checkpoint, evaluation, modeling
    from align.stage import StageResult

    final = checkpoint.finalize_trained(trainer, tok, ctx)
    if not checkpoint.is_main_process():  # rank 0 grades and writes; the others wait at the pipeline's barrier
        return StageResult(final_dir=final, steps=trainer.state.global_step, metrics=metrics, extra=extra)
    checkpoint.write_json_atomic(ctx.stage_dir / "log_history.json", trainer.state.log_history)  # report curves
    model, tok = modeling.load_model(final)
    graded = evaluation.grade_heldout(model, tok, heldout, cfg.eval.max_new_tokens, cfg.eval.batch_size)
    metrics.update(
        heldout_s=graded["seconds"],  # of the stage's wall time, what grading took (not training)
        heldout_accuracy=graded["accuracy"], heldout_n=graded["n"], heldout_status=graded["statuses"],
        heldout_by_verifier=graded["by_verifier"], **({"moe": trainer.moe_summary} if getattr(trainer, "moe_summary", None) else {}),
        **({"zero3_self_test": trainer.zero3_self_test} if getattr(trainer, "zero3_self_test", None) else {}),
        **({"expert_parallel": trainer.expert_parallel} if getattr(trainer, "expert_parallel", None) else {}),
        heldout_examples=graded["examples"], train_loss=getattr(out, "training_loss", None),
        **loss_summary(trainer.state.log_history),
    )
    if metrics.get("moe") and checkpoint.is_main_process():  # layer x expert heatmap in the stage folder
        from align.report import plot_expert_load

        plot_expert_load({"stage": ctx.stage_dir.name, "metrics": metrics}, ctx.stage_dir, "expert_load.png")
    return StageResult(final_dir=final, steps=trainer.state.global_step, metrics=metrics, extra=extra)



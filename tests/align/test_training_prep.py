"""TRL's dataset preparation in a worker pool: how many processes a stage asks for (a stage's own
``trainer.dataset_num_proc`` wins), and that the pool (forked after torch has run in this process, as in a stage) gives
the same token ids and labels as one process."""

from __future__ import annotations

import os


def test_prep_processes_one_for_small_datasets_the_cores_shared_by_ranks_for_large(monkeypatch):
    from align import training

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert training.prep_processes(training.PREP_POOL_MIN_ROWS - 1) == 1
    assert training.prep_processes(training.PREP_POOL_MIN_ROWS) == 6
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 ranks on 6 cores: one process each
    assert training.prep_processes(100_000) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert training.prep_processes(100_000) == 8  # capped


def test_a_worker_pool_prepares_the_same_ids_and_labels_as_one_process(tmp_path):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from align import modeling
    from align.thinking import row_thinking, template_kwargs
    from align.training import trainer_defaults
    from data_recipes.registry import resolve_recipe

    tok = modeling.build_tokenizer()
    cls, kwargs = modeling.PRESETS["tiny-deepseek-v4"]((len(tok) + 7) // 8 * 8, tok)
    model = AutoModelForCausalLM.from_config(cls(**kwargs))
    model(input_ids=torch.randint(0, 50, (2, 8)))  # torch's threads are up before the pool forks, as in a stage
    rows = resolve_recipe("needle")(split="train", n=150, seed=0, context_chars=[10, 40], style="trace")
    rows += resolve_recipe("arithmetic")(split="train", n=150, seed=0, digits=2, ops=["+"])
    dataset = Dataset.from_list([{"messages": r["messages"], "chat_template_kwargs": template_kwargs(row_thinking(r))}
                                 for r in rows])
    prepared = []
    for n in (1, 2):
        args = SFTConfig(**{**trainer_defaults(tmp_path / str(n), 0), "dataset_num_proc": n})
        prepared.append(SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok).train_dataset)
    one, pool = prepared
    assert len(one) == len(pool) == 300
    assert one["input_ids"] == pool["input_ids"] and one["labels"] == pool["labels"]
    assert any(label != -100 for label in one["labels"][0])


class _Stop(Exception):
    pass


def _stage_prep_processes(tmp_path, monkeypatch, overrides: list[str]) -> int | None:
    """The ``dataset_num_proc`` train_sft hands TRL for the smoke sft stage (60 rows, the pool's threshold lowered)."""
    import trl

    from align import training
    from align.config import load_config
    from align.pipeline import ensure_base
    from align.stage import StageContext
    from align.training import prepare_model, resolve_modes, train_sft
    from data_recipes import build_rows
    from tests.conftest import SMOKE

    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "stages.sft.data.n_train=60", *overrides])
    stage = cfg.stages[0]
    ctx = StageContext(cfg.run_dir, tmp_path / "00_sft", ensure_base(cfg), 0, cfg.router_for(stage), cfg.monitor,
                       cfg.distributed, {}, None, None)
    ctx.stage_dir.mkdir()
    model, tok, coef = prepare_model(ctx, stage)
    rows = resolve_modes(stage, ctx, tok, build_rows(stage.data, "train", 0, stage.kind))
    seen: list[int | None] = []

    def stub(*args, **kwargs):
        seen.append(kwargs["args"].dataset_num_proc)
        raise _Stop

    monkeypatch.setattr(trl, "SFTTrainer", stub)
    monkeypatch.setattr(training, "PREP_POOL_MIN_ROWS", 10)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    try:
        train_sft(model, tok, rows, stage, ctx, coef)
    except _Stop:
        pass
    return seen[0]


def test_a_stage_asks_for_the_pool_and_the_stages_own_setting_wins(tmp_path, monkeypatch):
    assert _stage_prep_processes(tmp_path / "a", monkeypatch, []) == 3
    assert _stage_prep_processes(tmp_path / "b", monkeypatch, ["stages.sft.trainer.dataset_num_proc=1"]) == 1

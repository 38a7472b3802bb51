"""Batch groups and curricula through TRL: the micro-batches SFTTrainer trains on each hold one source group (short
sums or long needle contexts, never both), so long rows stop padding short ones; phases come in order; a stage without
either keeps TRL's mixed sampling."""

from __future__ import annotations

from tests.conftest import SMOKE

SOURCES = ("[{recipe: arithmetic, kwargs: {digits: 2, ops: ['+']}}, "
           "{recipe: needle, weight: 0.5, kwargs: {context_chars: [150, 200], style: trace}, batch_group: 1}]")


def _trained_batches(tmp_path, sources: str) -> list[list[int]]:
    """Token counts of the rows in each micro-batch the sft stage trained on (6 steps of 8 rows)."""
    from align.config import load_config
    from align.pipeline import ensure_base
    from align.stage import StageContext
    from align.training import prepare_model, resolve_modes, train_sft
    from data_recipes import build_rows

    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", f"stages.sft.data.sources={sources}",
                              "stages.sft.data.n_train=60", "stages.sft.trainer.max_steps=6",
                              "stages.sft.trainer.per_device_train_batch_size=8", "stages.sft.trainer.save_steps=100"])
    stage = cfg.stages[0]
    ctx = StageContext(cfg.run_dir, tmp_path / "00_sft", ensure_base(cfg), 0, cfg.router_for(stage), cfg.monitor,
                       cfg.distributed, {}, None, None)
    ctx.stage_dir.mkdir()
    model, tok, coef = prepare_model(ctx, stage)
    seen: list[list[int]] = []

    def record(module, args, kwargs):
        if module.training:
            seen.append(kwargs["attention_mask"].sum(-1).tolist())

    model.register_forward_pre_hook(record, with_kwargs=True)
    rows = resolve_modes(stage, ctx, tok, build_rows(stage.data, "train", 0, stage.kind))
    train_sft(model, tok, rows, stage, ctx, coef)
    return seen


def test_each_micro_batch_holds_one_group_and_ungrouped_stages_mix(tmp_path):
    grouped = _trained_batches(tmp_path / "g", SOURCES)
    assert len(grouped) == 6
    kinds = [{n > 100 for n in batch} for batch in grouped]  # a needle row is > 150 tokens, a sum < 20
    # 40 sums and 20 needle rows: 5 + 2 one-group batches and one mixed batch of the remainders per epoch
    assert sum(k == {True, False} for k in kinds) <= 1, grouped
    assert {True} in kinds and {False} in kinds
    mixed = _trained_batches(tmp_path / "m", SOURCES.replace(", batch_group: 1", ""))
    assert sum({n > 100 for n in batch} == {True, False} for batch in mixed) >= 4, mixed  # TRL's random batches


def test_a_curriculum_trains_its_phases_in_order(tmp_path):
    # 40 sums in phase 0, 20 needle rows in phase 1, batches of 8: five batches of sums, then needle rows
    phased = _trained_batches(tmp_path, SOURCES.replace("batch_group: 1", "phase: 1"))
    assert [{n > 100 for n in batch} for batch in phased] == [{False}] * 5 + [{True}], phased


def test_a_group_with_its_own_batch_size_trains_in_batches_of_that_size(tmp_path):
    # 40 sums in batches of 20 (their group's batch_size), 20 needle rows in the trainer's 8: per epoch two batches
    # of sums, two of 8 needle rows and one of the 4 left over; 6 steps run into the second epoch
    sized = _trained_batches(tmp_path, SOURCES.replace("ops: ['+']}}", "ops: ['+']}, batch_size: 20}"))
    assert len(sized) == 6
    sizes = sorted((len(b), {n > 100 for n in b} == {True}) for b in sized[:5])
    assert sizes == [(4, True), (8, True), (8, True), (20, False), (20, False)], sized


def test_one_batch_group_has_one_batch_size():
    import pytest

    from align.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"sources\[1\]\.batch_size: 16, but sources\[0\] of the same batch group"):
        load_config(SMOKE, ["stages.sft.data.sources=[{recipe: arithmetic, batch_size: 8}, "
                            "{recipe: arithmetic, kwargs: {digits: 3}, batch_size: 16}]"])

"""Config errors name the key and the file; TRL fields are checked; overrides address stages by name."""

from __future__ import annotations

import pytest

from align.config import ConfigError, load_config
from tests.conftest import SMOKE


def write(tmp_path, text):
    p = tmp_path / "x.yaml"
    p.write_text(text)
    return p


BASE = """
name: t
stages:
  - name: sft
    kind: sft
    data:
      sources: [{recipe: arithmetic}]
    trainer: {TRAINER}
"""


@pytest.mark.parametrize(
    "text, needles",
    [
        ("name: t\nmodle: {}\nstages: []\n", ["unknown key 'modle'", "did you mean model"]),
        (BASE.replace("{TRAINER}", "{}").replace("sources:", "sourcse:"), ["stages[0].data", "sourcse", "sources"]),
        (BASE.replace("{TRAINER}", "{}").replace("kind: sft", "kind: sfx"), ["stages[0].kind", "'sfx'"]),
        (BASE.replace("{TRAINER}", "{}") + "seed: abc\n", ["seed", "expected an integer", "'abc'"]),
        (BASE.replace("{TRAINER}", "{learning_rate: 0}"), ["trainer.learning_rate", "must be > 0"]),
        (BASE.replace("{TRAINER}", "{learning_rate: -1.0e-4}"), ["trainer.learning_rate", "must be > 0"]),
        (BASE.replace("{TRAINER}", "{gradient_accumulation_steps: 0}"), ["gradient_accumulation_steps", "> 0"]),
        (BASE.replace("{TRAINER}", '{learning_rate: "1e-5"}'), ["learning_rate", "string '1e-5'", "unquoted"]),
        (BASE.replace("{TRAINER}", "{learnin_rate: 1.0e-5}"), ["unknown TRL", "learnin_rate", "learning_rate"]),
        (BASE.replace("{TRAINER}", "{output_dir: /tmp/x}"), ["output_dir", "set by align"]),
        (BASE.replace("{TRAINER}", "{}").replace("sources: [{recipe: arithmetic}]", "sources: []"), ["sources"]),
        (BASE.replace("{TRAINER}", "{}").replace("[{recipe: arithmetic}]", "[{recipe: a, weight: -1}]"), ["weight", "> 0"]),
        (BASE.replace("{TRAINER}", "{}") + "model: {router: {aux_loss_coef: -1}}\n", ["model.router.aux_loss_coef", ">= 0"]),
        ("name: t\nstages: [\n", ["invalid YAML"]),
        # a curriculum (sources in phases) trains in order: a sampler that mixes the phases, or a kind that samples
        # its own batches, is refused
        (BASE.replace("{TRAINER}", "{train_sampling_strategy: random}").replace(
            "[{recipe: arithmetic}]", "[{recipe: arithmetic}, {recipe: needle, phase: 1}]"),
         ["trainer.train_sampling_strategy", "phase", "drop this key"]),
        (BASE.replace("{TRAINER}", "{}").replace("[{recipe: arithmetic}]", "[{recipe: arithmetic, phase: -1}]"),
         ["phase", ">= 0"]),
        (BASE.replace("{TRAINER}", "{}").replace("kind: sft", "kind: grpo\n    verifiers: [{name: exact}]").replace(
            "[{recipe: arithmetic}]", "[{recipe: arithmetic, phase: 1}]"), ["phase", "grpo stage"]),
        # batch groups: the stage draws its own batches, so no other sampler, and not in a kind that samples its own
        (BASE.replace("{TRAINER}", "{train_sampling_strategy: group_by_length}").replace(
            "[{recipe: arithmetic}]", "[{recipe: arithmetic}, {recipe: needle, batch_group: 1}]"),
         ["trainer.train_sampling_strategy", "batch_group", "drop this key"]),
        (BASE.replace("{TRAINER}", "{}").replace("[{recipe: arithmetic}]", "[{recipe: arithmetic, batch_group: -2}]"),
         ["batch_group", ">= 0"]),
        (BASE.replace("{TRAINER}", "{}").replace("kind: sft", "kind: grpo\n    verifiers: [{name: exact}]").replace(
            "[{recipe: arithmetic}]", "[{recipe: arithmetic, batch_group: 1}]"), ["batch_group", "grpo stage"]),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, text, needles):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, msg


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-5 as a string; our loader reads it as the float the user meant.
    cfg = load_config(write(tmp_path, BASE.replace("{TRAINER}", "{learning_rate: 1e-5}")))
    assert cfg.stages[0].trainer["learning_rate"] == pytest.approx(1e-5)


def test_overrides_address_stages_by_name(tmp_path):
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "stages.sft.trainer.learning_rate=3e-4", "seed=7"])
    assert cfg.stages[0].trainer["learning_rate"] == pytest.approx(3e-4)
    assert cfg.seed == 7 and cfg.run_dir == tmp_path
    with pytest.raises(ConfigError, match="no stage named 'nope'"):
        load_config(SMOKE, ["stages.nope.trainer.max_steps=1"])
    with pytest.raises(ConfigError, match="unknown key 'sed'"):
        load_config(SMOKE, ["sed=1"])


def test_distributed_block_is_validated(tmp_path):
    cfg = load_config(SMOKE, ["distributed.nproc=2", "distributed.zero=2"])
    assert (cfg.distributed.nproc, cfg.distributed.zero) == (2, 2)
    with pytest.raises(ConfigError, match="zero.*not one of 0"):
        load_config(SMOKE, ["distributed.zero=1"])
    with pytest.raises(ConfigError, match="nproc"):
        load_config(SMOKE, ["distributed.nproc=0"])


def test_config_is_frozen():
    cfg = load_config(SMOKE)
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]


def test_phases_and_batch_groups_make_the_stage_draw_its_own_batches(tmp_path):
    phased = BASE.replace("{TRAINER}", "{}").replace("[{recipe: arithmetic}]",
                                                     "[{recipe: arithmetic}, {recipe: needle, phase: 1}]")
    grouped = phased.replace("phase: 1", "batch_group: 1")
    plain = BASE.replace("{TRAINER}", "{}")
    assert [load_config(write(tmp_path, t)).stages[0].ordered_batches for t in (phased, grouped, plain)] == \
        [True, True, False]
    # the order is the sampler's (align.training.GroupedBatchSampler), not a TRL setting
    assert "train_sampling_strategy" not in load_config(write(tmp_path, phased)).stages[0].trainer_settings()

"""Typed, frozen, strict pipeline configuration.

Defaults live here; YAML only overrides. Every field has a docstring-style comment. Errors name the key and the file:
an unknown key lists close matches, a wrong type or an impossible value says what was expected. TRL's own settings
pass through each stage's ``trainer:`` block to ``trl.SFTConfig`` / ``trl.GRPOConfig`` unchanged, but they are still
checked here against the TRL dataclass (unknown field, a string where TRL declares a number, learning rate <= 0,
zero accumulation...).

YAML numbers: PyYAML follows YAML 1.1 and reads ``1e-5`` (no dot) as a *string*. Our loader resolves floats the
YAML 1.2 way, so ``1e-5`` is the float a user meant; a quoted ``"1e-5"`` stays a string and is refused where a number
is expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from rewards.trl_adapter import VerifierSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the file."""


ADDED_LATER = {"hash": "omit at default"}
"""Field metadata of an option added after run folders were made without it: ``to_dict(for_hash=True)`` leaves it out while it is
at its default, so a stage that does not use it keeps the hash it had and an existing run still skips its finished
stages and resumes."""


# ----------------------------------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class RouterPolicy:
    """How the MoE router is trained in a stage (one place for every router setting)."""

    aux_loss_coef: float | None = None
    """Load-balancing aux-loss weight; None keeps the architecture's own coefficient, 0 disables it."""
    freeze: bool = False
    """Freeze the router (gate) weights: RL then cannot move routing, only experts and attention."""
    bias_update: float = 0.0
    """Aux-loss-free balancing (DeepSeek-V3): after each optimizer step every learned top-k router's correction bias
    moves by this much toward balanced load; 0 disables it. Only routers with ``e_score_correction_bias``
    (DeepSeek-V3/V4) have one."""
    top_k: int | None = None
    """Ablation: experts per token (``num_experts_per_tok``) for this stage and the models it writes; None keeps the
    model's."""

    def __post_init__(self) -> None:
        if self.aux_loss_coef is not None and self.aux_loss_coef < 0:
            raise ValueError("aux_loss_coef: must be >= 0")
        if self.bias_update < 0:
            raise ValueError("bias_update: must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k: must be >= 1")


@dataclass(frozen=True)
class MonitorConfig:
    """Training-time observability."""

    port: int | None = None
    """Serve live JSON at ``http://127.0.0.1:<port>/stats`` while a stage trains (main process only); off if None."""
    telemetry: bool = True
    """Expert-load telemetry (router hooks) logged each logging step and kept in each manifest (``metrics.moe``)."""
    snapshot: bool = True
    """Layer snapshot (gradient norm, update/weight ratio per module group) on logging steps."""

    def __post_init__(self) -> None:
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ValueError("port: must be in 0..65535")


@dataclass(frozen=True)
class DistributedConfig:
    """How the orchestrator launches stages on several processes (``--nproc`` / ``--zero`` override it).

    With ``nproc`` > 1, every stage runs as its own ``accelerate launch`` job with ``configs/accelerate/<zero>.yaml``
    (``zero`` 0: plain DDP, 2: ZeRO-2, 3: ZeRO-3). A run already started by ``accelerate launch`` ignores this block.
    """

    nproc: int = 1
    """Processes per stage (GPUs on a GPU node; CPU ranks with gloo otherwise)."""
    zero: int = 3
    """DeepSpeed ZeRO stage for multi-process runs: 0 (plain DDP), 2 or 3."""
    ep: int = 1
    """Expert parallelism (DeepSpeed AutoEP, ``align.expert_parallel``): each MoE layer's routed experts split over
    ``ep`` ranks, ZeRO over the rest; 1 = off. Needs ``nproc`` divisible by it and ``zero`` 2 or 3."""
    self_test_timeout_s: float = 120.0
    """Bound on the ZeRO-3 start-up self-test (one forward/backward, ranks routed to different experts)."""

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise ValueError("nproc: must be at least 1")
        if self.zero not in (0, 2, 3):
            raise ValueError(f"zero: {self.zero!r} is not one of 0 (plain DDP), 2, 3")
        if self.self_test_timeout_s <= 0:
            raise ValueError("self_test_timeout_s: must be positive")
        if self.ep < 1:
            raise ValueError("ep: must be at least 1 (1 = no expert parallelism)")
        if self.ep > 1 and self.nproc % self.ep:
            raise ValueError(f"ep: {self.ep} does not divide nproc {self.nproc} (experts are split over ep ranks, "
                             "ZeRO data parallelism over nproc / ep groups)")
        if self.ep > 1 and self.zero not in (2, 3):
            raise ValueError(f"ep: expert parallelism runs with zero 2 or 3, got zero {self.zero} (AutoEP is a "
                             "DeepSpeed feature; plain DDP has none)")


@dataclass(frozen=True)
class ModelConfig:
    """The backbone the first stage starts from."""

    preset: str | None = "tiny-deepseek-v4"
    """Name of a built-in tiny preset (see ``align.modeling.PRESETS``); ignored when ``path`` is set."""
    path: str | None = None
    """A local Hugging Face model directory (any MoE checkpoint: Qwen3-MoE, Mixtral, DeepSeek-V3/V4...)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Fields of the preset's transformers config to change (e.g. ``hidden_size``)."""
    router: RouterPolicy = field(default_factory=RouterPolicy)
    """Router policy for every stage, unless a stage sets its own ``router``."""
    chat_template: str | None = None
    """The chat template every stage uses instead of the tokenizer's own: a template file (Jinja) or a built-in name
    (``align.modeling.CHAT_TEMPLATES``: ``align``, ``plain`` — a ``role: content`` template for base models). Needed
    for a base model without a template; SFT's assistant-only loss needs ``{% generation %}`` markers in it."""
    system_prompt: str | None = None
    """A system turn put before every training, held-out and eval conversation that has none of its own."""

    def __post_init__(self) -> None:
        if not self.preset and not self.path:
            raise ValueError("preset: set model.preset or model.path")


@dataclass(frozen=True)
class SourceConfig:
    """One data source of a stage's mixture: a recipe (by name or import path) or a local file/dir."""

    recipe: str | None = None
    """Registered recipe name, ``pkg.mod:fn`` or ``file.py:fn``."""
    path: str | None = None
    """A local ``.jsonl`` / ``.json`` (rows or one array) / ``.parquet`` / ``.csv`` file, a saved ``datasets``
    directory, or a ``load_dataset``-style folder of such files (``train*.jsonl``, ``data/train-*.parquet``...)."""
    columns: dict[str, str] = field(default_factory=dict)
    """File sources: align's column -> the file's column, e.g. ``{prompt: problem, answer: solution}``."""
    verifier: str | None = None
    """File sources: the verifier of every row that names none (instead of a per-row ``verifier`` column)."""
    split: str = "train"
    """File sources: the split of a ``DatasetDict`` or a ``load_dataset``-style folder to read."""
    weight: float = 1.0
    """Relative share of the mixture."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the recipe."""
    replay: bool = False
    """Rows of an earlier stage's task, mixed in against forgetting: a reasoning stage does not require a
    ``<think>`` trace in them (they are checked as plain SFT rows). Give them the mode they were taught in
    (``thinking: false`` for answer-only rows), so the model keeps both modes apart."""
    thinking: bool | None = None
    """The mode of this source's rows that name none (``align.thinking``): true = the model reasons in ``<think>``
    first, false = the template's non-thinking prompt and a direct answer. Default: what the row's assistant turn
    shows (a ``<think>`` block or not), else the stage kind's (grpo: thinking)."""

    phase: int = 0
    """Curriculum (SFT and reasoning stages): the training rows of phase 0 sources come first, shuffled together,
    then those of phase 1, and so on, every epoch (the stage's own sampler, ``align.training.GroupedBatchSampler``,
    instead of TRL's random one). E.g. short contexts until a skill forms, then long ones."""

    batch_group: int = 0
    """SFT and reasoning stages: rows of sources in different batch groups never share a micro-batch. Each micro-batch
    is drawn from one group (sources of a group mix as usual), the groups' batches shuffled together and reshuffled
    every epoch; a group's remainder of fewer than one batch is mixed. For sources of very different lengths: a
    400-character needle row no longer pads 63 two-digit sums to its width. Not transformers' ``group_by_length``,
    which sorts by exact length: where length tells the answer (``-17`` vs ``9``) its batches are not i.i.d., and an
    sft stage of 2-digit sums with needle replay did not learn with it (held-out 0.013; BENCHMARKS.md, session 8)."""

    batch_size: int | None = field(default=None, metadata=ADDED_LATER)
    """SFT and reasoning stages: the micro-batch size of this source's batch group (default: the trainer's
    ``per_device_train_batch_size``; every source of a group that sets it must agree). Short rows in big batches,
    long ones in small: 64 two-digit sums are ~770 padded tokens, 8 needle rows of 400 characters over 3,000. Each
    micro-batch is one optimizer step (times ``gradient_accumulation_steps``), whatever its size."""

    def __post_init__(self) -> None:
        if self.phase < 0:
            raise ValueError(f"phase: must be >= 0, got {self.phase}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.batch_group < 0:
            raise ValueError(f"batch_group: must be >= 0, got {self.batch_group}")
        if (self.recipe is None) == (self.path is None):
            raise ValueError("recipe: give exactly one of recipe or path")
        if self.recipe is not None and (self.columns or self.verifier):
            raise ValueError("columns: columns and verifier apply to file sources (path), not recipes")
        if self.weight <= 0:
            raise ValueError("weight: must be > 0")


@dataclass(frozen=True)
class DataConfig:
    """A stage's training and held-out rows."""

    sources: tuple[SourceConfig, ...] = ()
    """Mixture components."""
    n_train: int = 1000
    """Training rows drawn from the mixture by weight, before dedup and filters (a file source with fewer rows than
    its share gives all it has, with a warning; a recipe asked for more distinct problems than it holds is refused).
    A stage whose ``max_steps`` needs more rows goes round them again, reshuffled (epochs)."""
    n_heldout: int = 200
    """Held-out rows (disjoint from training by construction) graded after the stage."""
    dedup: bool = True
    """Drop exact duplicate rows (counts are logged)."""
    max_chars: int | None = None
    """Drop rows whose rendered text is longer than this."""
    heldout_fraction: float = 0.1
    """For file sources: the share of rows (by a hash of the prompt) reserved for the held-out split."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources: at least one data source is required")
        if not 1 <= self.n_train <= MAX_ROWS:
            raise ValueError(f"n_train: must be in 1..{MAX_ROWS:,} (rows are built in memory), got {self.n_train}")
        if not 0 <= self.n_heldout <= MAX_ROWS:
            raise ValueError(f"n_heldout: must be in 0..{MAX_ROWS:,}, got {self.n_heldout}")
        if not 0.01 <= self.heldout_fraction < 1:
            raise ValueError("heldout_fraction: must be in [0.01, 1) (splits are drawn in 1 % buckets)")
        sizes: dict[int, tuple[int, int]] = {}  # batch group -> (source index, its batch_size)
        for i, src in enumerate(self.sources):
            if src.batch_size is None:
                continue
            first = sizes.setdefault(src.batch_group, (i, src.batch_size))
            if first[1] != src.batch_size:
                raise ValueError(f"sources[{i}].batch_size: {src.batch_size}, but sources[{first[0]}] of the same "
                                 f"batch group ({src.batch_group}) has {first[1]}; a group has one batch size")


@dataclass(frozen=True)
class LoraConfig:
    """Optional LoRA adapters (merged into plain weights at finalize)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[Literal["attention", "experts", "router", "mlp"], ...] = ("attention", "experts", "router")
    """Module groups that get adapters."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError("r: must be >= 1")


@dataclass(frozen=True)
class EvalConfig:
    """Held-out grading after a stage (greedy decoding, graded by the rows' verifiers)."""

    max_new_tokens: int = 16
    batch_size: int = 64
    before: bool = False
    """Also grade the stage's input model, to show what the stage bought."""
    data: DataConfig | None = None
    """Held-out rows to grade (their ``heldout`` split); default: the stage's own data. Give every stage the same
    block to compare stages on one problem set."""

    samples: int = 0
    """eval stages: sampled completions per prompt on top of the greedy one (0: greedy only); gives pass@k."""
    temperature: float = 1.0
    """eval stages: sampling temperature for ``samples``."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens: must be >= 1")
        if self.samples < 0:
            raise ValueError("samples: must be >= 0")
        if self.temperature <= 0:
            raise ValueError("temperature: must be > 0")


@dataclass(frozen=True)
class SuiteConfig:
    """One evaluation suite of an ``eval`` stage: a recipe's held-out split, graded by its rows' verifiers."""

    name: str
    """A built-in suite (``data_recipes.suites.SUITES``: arithmetic, math, code, needle, needle_long, two_hop,
    instructions), or any name when ``recipe`` is given."""
    recipe: str | None = None
    """Recipe name or import path; default: the built-in suite's."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Recipe keyword arguments (merged over the built-in suite's)."""
    n: int = 100
    """Problems in the suite."""
    verifier: str | None = None
    """Grade every row with this verifier instead of the row's own (e.g. ``math`` for arithmetic answers)."""
    max_new_tokens: int | None = None
    """Generation budget; default: the built-in suite's, else the stage's ``eval.max_new_tokens``."""
    thinking: bool | None = None
    """Grade in thinking (true) or non-thinking (false) mode (``align.thinking``); default: the built-in suite's
    (``data_recipes.suites.SUITES``), else the template's default."""

    def __post_init__(self) -> None:
        from data_recipes.suites import SUITES

        if self.recipe is None and self.name not in SUITES:
            close = difflib.get_close_matches(self.name, list(SUITES), n=3)
            raise ValueError(f"name: {self.name!r} is not a built-in suite ({', '.join(SUITES)})"
                             + (f"; did you mean {close[0]!r}?" if close else "") + "; or give a recipe")
        if self.n < 1:
            raise ValueError("n: must be >= 1")


@dataclass(frozen=True)
class TracesConfig:
    """Where a reasoning stage's ``<think>`` traces come from."""

    source: Literal["recipe", "self"] = "recipe"
    """``recipe``: the traces the data provides. ``self``: rejection sampling — sample ``k`` completions per prompt
    from the input model and keep those every verifier in ``verifiers`` accepts (DeepSeek-R1's later SFT data)."""
    k: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 64
    max_prompts: int = 512
    """Prompts sampled from (the training rows' prompts, in order)."""
    verifiers: tuple[str, ...] = ("think_format",)
    """Verifiers that must all accept a sample, on top of each row's own ``verifier``."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_prompts < 1 or self.max_new_tokens < 1:
            raise ValueError("k: k, max_prompts and max_new_tokens must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature: must be > 0")


@dataclass(frozen=True)
class StageConfig:
    """What every stage kind has; ``name`` addresses it on the command line. Each kind adds its own options in a
    subclass (``STAGE_CONFIGS``); the YAML ``kind`` picks the class, so an option of another kind is an error."""

    name: str
    kind: str
    """Stage kind = module in ``stages/`` = key of ``STAGE_CONFIGS`` and ``stages.STAGES``."""
    data: DataConfig | None = None
    """Training rows (and the held-out split graded after the stage)."""
    trainer: dict[str, Any] = field(default_factory=dict)
    """Passed through to the kind's TRL config class (``trainer_config``)."""
    lora: LoraConfig | None = None
    router: RouterPolicy | None = None
    """Overrides ``model.router`` for this stage."""
    freeze: tuple[str, ...] = field(default=(), metadata=ADDED_LATER)
    """Parameter-name globs (``fnmatch``: ``*.mlp.*``, ``model.embed_tokens.*``) this stage does not train; each must
    match a parameter of the stage's input model. E.g. teach attention a longer context without moving the experts
    that hold an earlier stage's skills."""
    eval: EvalConfig = field(default_factory=EvalConfig)

    trainer_config: ClassVar[str | None] = None
    """``module:Class`` of the TRL config the ``trainer`` block feeds (None: the kind trains nothing)."""
    trainer_defaults: ClassVar[dict[str, Any]] = {}
    """The kind's own defaults for that TRL config (the stage module's docstring says why); ``trainer`` overrides."""
    needs_data: ClassVar[bool] = True
    thinking_default: ClassVar[bool | None] = None
    """The mode of this kind's prompt-only rows that name none, where the chat template has the switch (rows with an
    assistant turn take the mode it shows: a ``<think>`` block or not; ``align.thinking``)."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError("name: letters, digits, '_', '-' and '.' only")
        if self.needs_data and self.data is None:
            raise ValueError(f"data: a {self.kind} stage needs a data block")
        if self.freeze and self.trainer_config is None:
            raise ValueError(f"freeze: a stage of kind {self.kind!r} trains nothing")
        if self.freeze and self.lora is not None:
            raise ValueError("freeze: a LoRA stage trains only its adapters already; drop freeze or lora")
        for i, pattern in enumerate(self.freeze):
            if not pattern.strip():
                raise ValueError(f"freeze[{i}]: an empty pattern")
        if self.ordered_batches:
            keys = "data.sources.phase / batch_group / batch_size"
            if self.trainer_config != "trl:SFTConfig":
                raise ValueError(f"{keys}: phases and batch groups need an sft or reasoning stage; a {self.kind} "
                                 "stage samples its own batches")
            if "train_sampling_strategy" in self.trainer:
                raise ValueError(f"trainer.train_sampling_strategy: phases and batch groups ({keys}) draw the "
                                 "stage's batches themselves; another sampler would undo them, drop this key")

    @property
    def ordered_batches(self) -> bool:
        """Whether the stage draws its own batches: sources in phases (``SourceConfig.phase``, a curriculum) or in
        batch groups (``SourceConfig.batch_group``); ``align.training.GroupedBatchSampler`` does both."""
        return self.data is not None and any(s.phase or s.batch_group or s.batch_size for s in self.data.sources)

    def group_batch_sizes(self) -> dict[int, int]:
        """Batch group -> its own micro-batch size (``SourceConfig.batch_size``), for the groups that set one."""
        return {s.batch_group: s.batch_size for s in (self.data.sources if self.data else ()) if s.batch_size}

    def row_schema(self, split: str) -> str:
        """The row schema (``data_recipes.schema`` kind) of this stage's ``split`` rows ("train" | "heldout")."""
        return self.kind

    def trainer_settings(self) -> dict[str, Any]:
        """The kind's defaults with the stage's ``trainer`` block over them (align's device defaults not included)."""
        return {**self.trainer_defaults, **self.trainer}


@dataclass(frozen=True)
class SftStageConfig(StageConfig):
    """``sft``: supervised fine-tuning on chat rows."""

    kind: Literal["sft"] = "sft"
    trainer_config: ClassVar[str | None] = "trl:SFTConfig"
    trainer_defaults: ClassVar[dict[str, Any]] = {"assistant_only_loss": True, "packing": False}


@dataclass(frozen=True)
class ReasoningStageConfig(StageConfig):
    """``reasoning``: SFT on assistant turns that reason in ``<think>`` first."""

    kind: Literal["reasoning"] = "reasoning"
    traces: TracesConfig | None = None
    """Where the traces come from (default: the recipe's)."""
    trainer_config: ClassVar[str | None] = "trl:SFTConfig"
    trainer_defaults: ClassVar[dict[str, Any]] = {"assistant_only_loss": True, "packing": False}
    thinking_default: ClassVar[bool | None] = True

    def row_schema(self, split: str) -> str:
        # held-out rows are graded by prompt + gold, and self-generated traces start from plain prompt rows
        if split == "heldout" or (self.traces is not None and self.traces.source == "self"):
            return "sft"
        return "reasoning"


@dataclass(frozen=True)
class GrpoStageConfig(StageConfig):
    """``grpo``: GRPO with verifier rewards."""

    kind: Literal["grpo"] = "grpo"
    verifiers: tuple[VerifierSpec, ...] = ()
    """Reward terms (any name ``rewards.get_verifier`` resolves, with weight, kwargs, time budget)."""
    routing_replay: Literal["none", "measure", "replay"] = "none"
    """Record each MoE layer's expert selections in a scoring pass over every rollout batch and replay them in the
    update passes of the same batch (``replay``), or only log how many tokens would keep their experts
    (``measure``); ``routing/agreement`` is logged either way (``align.replay``). (Not on/off: YAML reads those
    as booleans.)"""
    group_by_length: bool = True
    """Every rollout batch holds prompts of one token length, so no prompt is left-padded (DeepSeek-V4's compressed
    attention is not padding-neutral; equal lengths also waste no compute on padding)."""
    trainer_config: ClassVar[str | None] = "trl:GRPOConfig"
    thinking_default: ClassVar[bool | None] = True
    trainer_defaults: ClassVar[dict[str, Any]] = {  # MoE/CPU defaults; stages/grpo.py's docstring gives each reason
        "num_generations": 8,
        "per_device_train_batch_size": 32,
        "max_completion_length": 64,
        "temperature": 0.3,
        "beta": 0.0,
        "learning_rate": 1e-4,
        "logging_steps": 5,
        "save_steps": 50,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.verifiers:
            raise ValueError("verifiers: a grpo stage needs at least one verifier")


@dataclass(frozen=True)
class EvalStageConfig(StageConfig):
    """``eval``: grade the input model (and earlier stages') on held-out suites; trains nothing."""

    kind: Literal["eval"] = "eval"
    suites: tuple[SuiteConfig, ...] = ()
    """The suites to generate and grade."""
    compare: tuple[str, ...] = ()
    """Earlier stages (by name) whose final models are graded on the same suites too (what each stage bought); the
    eval stage's input model is always graded."""
    compare_samples: int | None = None
    """Sampled completions per prompt for the ``compare`` stages' models (default: ``eval.samples``, as the input
    model). 0 grades them greedy only: the skill ledger reads greedy accuracy, and sampling is most of an eval's cost."""
    needs_data: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.suites:
            raise ValueError("suites: an eval stage needs at least one suite")
        if self.compare_samples is not None and self.compare_samples < 0:
            raise ValueError(f"compare_samples: must be >= 0, got {self.compare_samples}")
        if self.trainer:
            raise ValueError("trainer: an eval stage trains nothing; remove the trainer block")

    def row_schema(self, split: str) -> str:
        return "eval"


# Closed set: stage kind -> its options class (the kind's module in stages/ is stages.STAGES[kind]).
STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "sft": SftStageConfig,
    "reasoning": ReasoningStageConfig,
    "grpo": GrpoStageConfig,
    "eval": EvalStageConfig,
}


@dataclass(frozen=True)
class PipelineConfig:
    """The whole run."""

    name: str = "default"
    """Run name; the run folder is ``runs/<name>`` unless ``output_dir`` is set."""
    output_dir: str | None = None
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: tuple[StageConfig, ...] = ()
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages: at least one stage is required")
        for i, st in enumerate(self.stages):
            earlier = {s.name for s in self.stages[:i] if s.trainer_config is not None}
            for name in getattr(st, "compare", ()):
                if name not in earlier:
                    raise ValueError(f"stages[{i}].compare: {name!r} is not an earlier training stage "
                                     f"({', '.join(sorted(earlier)) or 'none'})")
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stages: duplicate stage names {dupes}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.name

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"no stage named {name!r}; stages are {[s.name for s in self.stages]}")

    def router_for(self, stage: StageConfig) -> RouterPolicy:
        return stage.router or self.model.router


# --------------------------------------------------------------------------------------------------- YAML loading


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (``1e-5`` is a float, not a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# YAML 1.2 integers: PyYAML's YAML 1.1 resolver reads ``010`` as octal 8, ``0b11`` as 3 and ``1:30`` as 90. Here a run
# of digits is decimal (``010`` is 10), hex is ``0x..``, octal must be written ``0o..``; anything else stays a string.
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:int"]
    for ch, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML with our loader; syntax errors name the source and line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a","b","c"], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    key, _, raw = item.partition("=")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: bad key path {key!r}")
    return key.split("."), parse_yaml(raw, f"override {item!r}") if raw != "" else ""


def apply_override(raw: dict[str, Any], path: list[str], value: Any, source: str) -> None:
    """Set ``value`` at ``path`` in the raw config dict; stages are addressed by their ``name``."""
    node: Any = raw
    for i, part in enumerate(path):
        last = i == len(path) - 1
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            match = [s for s in node if isinstance(s, dict) and s.get("name") == part]
            if not match:
                names = [s.get("name") for s in node if isinstance(s, dict)]
                raise ConfigError(f"{source}: {where}: no stage named {part!r}; stages are {names}")
            if last:
                raise ConfigError(f"{source}: {where}: cannot replace a whole stage from the command line")
            node = match[0]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"{source}: {where}: cannot set a key inside a {type(node).__name__}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read a pipeline YAML (default: ``configs/default.yaml``), apply ``key.path=value`` overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = parse_yaml(path.read_text(), str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    if not overrides:
        return build_config(raw, str(path))
    import copy

    build_config(copy.deepcopy(raw), str(path))  # the file alone: its own errors name the file
    for item in overrides:  # then each override in turn: an error it introduces names the override
        keys, value = parse_override(item)
        apply_override(raw, keys, value, f"{path} (override {item!r})")
        try:
            cfg = build_config(copy.deepcopy(raw), f"{path} (override {item!r})")
        except ConfigError as exc:
            raise ConfigError(str(exc)) from None
    return cfg


def build_config(raw: dict[str, Any], source: str = "<dict>") -> PipelineConfig:
    """Validate a raw dict into a PipelineConfig, including each stage's TRL ``trainer`` block."""
    cfg = _build(PipelineConfig, raw, "", source)
    for i, stage in enumerate(cfg.stages):
        check_trainer_block(stage.kind, stage.trainer, f"stages[{i}]({stage.name}).trainer", source)
    return cfg


def _build(cls: type, data: Any, where: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where or 'top level'}: expected a mapping, got {type(data).__name__}")
    if cls is StageConfig:  # the kind picks the options class
        kind = data.get("kind")
        if kind not in STAGE_CONFIGS:
            raise ConfigError(f"{source}: {where}.kind: {kind!r} is not one of {list(STAGE_CONFIGS)}")
        cls = STAGE_CONFIGS[kind]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            owners = [k for k, c in STAGE_CONFIGS.items() if key in {f.name for f in dataclasses.fields(c)}]
            if issubclass(cls, StageConfig) and owners:
                raise ConfigError(f"{source}: {key_path}: only {'/'.join(owners)} stages take {key!r} (this stage "
                                  f"is {data.get('kind')})")
            close = difflib.get_close_matches(str(key), list(fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown key {key_path!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, key_path, source)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: {where or 'top level'}: missing required key(s) {missing}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        msg = str(exc)
        key, _, rest = msg.partition(": ")
        key_path = f"{where}.{key}" if where and rest else (where or key)
        raise ConfigError(f"{source}: {key_path}: {rest or msg}") from None


def _coerce(tp: Any, value: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if len(errors) == 1 else f"{source}: {where}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {where}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            hint = " (quoted numbers are strings; write it unquoted)" if _looks_numeric(value) else ""
            raise ConfigError(f"{source}: {where}: expected a number, got {type(value).__name__} {value!r}{hint}")
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{source}: {where}: unsupported type {tp}")  # pragma: no cover - a bug in our dataclasses


def _looks_numeric(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------- TRL trainer blocks

# Fields align sets itself; a trainer block may not override them.
OWNED_TRAINER_KEYS = {"output_dir", "resume_from_checkpoint", "overwrite_output_dir"}
_POSITIVE = {"learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs"}
_NON_ZERO = {"max_steps", "save_steps", "logging_steps"}
MAX_STEPS = 100_000_000
"""More optimizer steps than any post-training run takes: a larger ``max_steps`` is a typo (an extra digit or two)."""
MAX_ROWS = 10_000_000
"""Most rows a ``DataConfig`` may ask a split for (rows are built in memory before training)."""


def trainer_config_class(kind: str) -> type | None:
    """The TRL config class a ``kind`` stage's ``trainer`` block feeds (None: the kind trains nothing)."""
    import importlib

    spec = STAGE_CONFIGS[kind].trainer_config
    if spec is None:
        return None
    mod, _, name = spec.partition(":")
    return getattr(importlib.import_module(mod), name)


def check_trainer_block(kind: str, block: dict[str, Any], where: str, source: str) -> None:
    """Reject what TRL would silently accept: unknown fields, numbers given as strings, impossible values."""
    config_cls = trainer_config_class(kind)
    if config_cls is None:
        return
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for key, value in block.items():
        key_path = f"{where}.{key}"
        if key in OWNED_TRAINER_KEYS:
            raise ConfigError(f"{source}: {key_path}: set by align (the stage folder); remove it")
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{source}: unknown TRL {config_cls.__name__} field {key_path!r}{hint}")
        default = fields[key].default
        numeric_default = isinstance(default, int | float) and not isinstance(default, bool)
        if numeric_default and isinstance(value, str):
            raise ConfigError(
                f"{source}: {key_path}: expected a number, got the string {value!r}"
                + (" (quoted numbers are strings; write it unquoted)" if _looks_numeric(value) else "")
            )
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{source}: {key_path}: expected true/false, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{source}: {key_path}: expected a finite number, got {value!r}")
        if key == "max_steps" and isinstance(value, int) and not -1 <= value <= MAX_STEPS:
            raise ConfigError(f"{source}: {key_path}: {value} is not a step count (1..{MAX_STEPS:,}, or -1 to train "
                              "num_train_epochs)")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if key in _POSITIVE and value <= 0:
                raise ConfigError(f"{source}: {key_path}: must be > 0, got {value}")
            if key in _NON_ZERO and value == 0:
                raise ConfigError(f"{source}: {key_path}: must not be 0")


# ---------------------------------------------------------------------------------------------------- utilities


def freeze_problems(names: list[str], patterns: tuple[str, ...], where: str, model: str) -> list[str]:
    """What is wrong with ``patterns`` (a stage's ``freeze`` globs) for a model with parameters ``names``: a glob that
    matches nothing, or globs that match everything (the stage would train nothing). Checked before the weights load
    (``align.validate``, on a meta-device build) and at load (``align.training.freeze_parameters``)."""
    problems = [f"{where}[{i}]: {p!r} matches no parameter of {model} (names look like {', '.join(names[:3])}, ...)"
                for i, p in enumerate(patterns) if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if names and all(any(fnmatch.fnmatchcase(n, p) for p in patterns) for n in names):
        problems.append(f"{where}: matches every parameter of {model}; the stage would train nothing")
    return problems


def to_dict(obj: Any, for_hash: bool = False) -> Any:
    """A dataclass config as plain YAML/JSON-able data; ``for_hash``: fields marked ``ADDED_LATER`` are left out while
    at their default."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name), for_hash) for f in dataclasses.fields(obj)
                if not (for_hash and f.metadata.get("hash") == ADDED_LATER["hash"] and getattr(obj, f.name) == f.default)}
    if isinstance(obj, tuple | list):
        return [to_dict(v, for_hash) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, for_hash) for k, v in obj.items()}
    return obj


def config_hash(obj: Any) -> str:
    """Stable short hash of a config object (or any JSON-able data)."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dump_yaml(cfg: PipelineConfig) -> str:
    """The resolved config as YAML (what ``--dry-run`` prints and the run folder keeps)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)

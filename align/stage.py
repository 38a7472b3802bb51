"""The stage contract: what a stage gets (``StageContext``), what it returns (``StageResult``), what it is (``Stage``).

A stage kind is a module ``stages/<kind>.py`` with one public ``run(cfg, ctx) -> StageResult``; ``cfg`` is its
options class from ``align.config`` (``SftStageConfig``...), ``ctx`` is a ``StageContext``: only what a stage may use,
never the whole pipeline config. Shared work goes through functions in ``align/`` (torchtune's rule: the interface
is not a vehicle for code reuse). Adding a kind: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from align.config import DistributedConfig, MonitorConfig, RouterPolicy


@dataclass(frozen=True)
class StageContext:
    """What a stage may use beyond its own config."""

    run_dir: Path
    """The run folder (``runs/<name>``)."""
    stage_dir: Path
    """This stage's folder (``NN_<stage>``): checkpoints, ``final/``, manifest."""
    init_dir: Path
    """The plain Hugging Face model dir this stage starts from."""
    seed: int
    router: RouterPolicy
    """The router policy in force for this stage (its own ``router:`` or ``model.router``)."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    final_dirs: Mapping[str, Path] = field(default_factory=dict)
    """Earlier stages' output model dirs by stage name, in pipeline order (what ``final_dir_of`` answers)."""
    chat_template: str | None = None
    """Template text replacing the tokenizer's own (``model.chat_template``), or None."""
    system_prompt: str | None = None
    """``model.system_prompt``: pass it to ``build_rows`` so every conversation starts with it."""

    def final_dir_of(self, name: str) -> Path:
        """The output model dir of the earlier stage ``name``."""
        if name not in self.final_dirs:
            raise KeyError(f"no earlier stage named {name!r} (earlier: {', '.join(self.final_dirs) or 'none'})")
        return self.final_dirs[name]


@dataclass
class StageResult:
    """What a stage returns to the pipeline."""

    final_dir: Path
    """The model the next stage starts from (a training stage's ``final/``; an eval stage's input)."""
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """More manifest fields (data recipe and hash, verifier versions...)."""


class Stage(Protocol):
    """``run(cfg, ctx) -> StageResult``: every entry of ``stages.STAGES``."""

    def __call__(self, cfg: Any, ctx: StageContext) -> StageResult: ...

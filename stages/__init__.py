"""Stage kinds: ``STAGES[kind](cfg, ctx) -> StageResult``. Kind = module name = YAML ``kind``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _lazy(module: str) -> Callable[..., Any]:
    # Stages import TRL; resolve the module only when the stage runs so `--dry-run` and `--list-*` stay fast.
    def run(cfg: Any, ctx: Any) -> Any:
        import importlib

        return importlib.import_module(f"stages.{module}").run(cfg, ctx)

    run.__name__ = f"{module}.run"
    return run


STAGES: dict[str, Callable[..., Any]] = {
    "sft": _lazy("sft"),
    "reasoning": _lazy("reasoning"),
    "grpo": _lazy("grpo"),
    "eval": _lazy("eval"),
}

"""What a person watching a run reads: one log format, a run log file, quiet third-party noise, stage banners.

- ``setup_logging``: every library logger through one formatter on the console (INFO; DEBUG with ``--verbose``) and,
  once the run folder is known, everything at DEBUG in ``<run>/run.log`` (``add_run_log``): the trainer's per-step
  dicts go there (``QuietProgressCallback``), not between the progress bars.
- Known noise is silenced at its source, each with the reason beside it (no blanket filter).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"


def quiet_known_noise() -> None:
    """Silence third-party messages that say nothing about the run, each at its source."""
    # transformers 5 renamed gradient_checkpointing -> activation_checkpointing; TRL still reads the old property on
    # every model it wraps, which warns once per trainer. We set activation_checkpointing ourselves.
    warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)
    # DeepSpeed logs "Setting accelerator to CPU ... we were unable to detect it" on every CPU import. Naming the
    # accelerator it would pick anyway keeps that line away; a GPU machine is left to detect its own.
    if "DS_ACCELERATOR" not in os.environ:
        try:
            import torch

            if not torch.cuda.is_available():
                os.environ["DS_ACCELERATOR"] = "cpu"
        except ImportError:  # pragma: no cover - torch is a dependency
            pass


def setup_logging(verbose: bool = False) -> None:
    """Console logging through one formatter; noise quieted."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(console)
    root.setLevel(logging.DEBUG)
    for noisy in ("urllib3", "matplotlib", "PIL", "filelock", "fsspec", "httpx", "asyncio", "torch", "deepspeed",
                  "transformers", "datasets", "accelerate", "trl", "peft", "git"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    quiet_known_noise()


def add_run_log(run_dir: Path) -> Path:
    """Also write everything (DEBUG, the trainer's per-step dicts included) to ``<run>/run.log``; returns its path."""
    path = Path(run_dir) / "run.log"
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    handler.setLevel(logging.DEBUG)
    root.addHandler(handler)
    return path


def quiet_progress_callback() -> type:
    """A ``ProgressCallback`` whose per-step dicts go to the log (DEBUG: the run log, the console with --verbose)
    instead of being written between the progress bars."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgressCallback(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201 - HF's signature
            if state.is_world_process_zero and logs:
                logging.getLogger("align.trainer").debug("step %d: %s", state.global_step, logs)

    return QuietProgressCallback

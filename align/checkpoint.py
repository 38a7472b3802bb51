"""Stage results, manifests, complete-checkpoint detection and finalisation.

HF Trainer writes ``checkpoint-N`` non-atomically, and on resume takes the highest-numbered one without checking it
(STACK-NOTES). We mark a checkpoint complete *after* the Trainer has saved it (a marker listing every file and its
size); on resume, a checkpoint without a valid marker is moved aside to ``incomplete-checkpoint-N`` (kept, not
deleted) and the next one down is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.distributed import barrier, init_distributed, is_main_process  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

MARKER = "align_complete.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class StageResult:
    """What a stage returns to the pipeline."""

    final_dir: Path
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """More manifest fields (data recipe and hash, verifier versions...)."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temp file and rename, so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    """Parsed JSON, or None if missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def mark_complete(ckpt: Path) -> None:
    """Record every file of a saved checkpoint with its size."""
    files = {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != MARKER}
    write_json_atomic(ckpt / MARKER, {"files": files, "time": time.time()})


def is_complete(ckpt: Path) -> bool:
    """A checkpoint is complete when its marker exists and every listed file has its recorded size."""
    marker = read_json(ckpt / MARKER)
    if not marker or "files" not in marker:
        return False
    for rel, size in marker["files"].items():
        p = ckpt / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return read_json(ckpt / "trainer_state.json") is not None


def last_complete_checkpoint(stage_dir: Path) -> Path | None:
    """The highest-numbered complete ``checkpoint-N``; incomplete ones above it are moved aside."""
    ckpts = sorted(
        (p for p in stage_dir.glob("checkpoint-*") if p.is_dir() and _CKPT.match(p.name)),
        key=lambda p: int(_CKPT.match(p.name).group(1)),
        reverse=True,
    )
    for ckpt in ckpts:
        if is_complete(ckpt):
            return ckpt
        aside = ckpt.with_name(f"incomplete-{ckpt.name}")
        n = 1
        while aside.exists():
            aside = ckpt.with_name(f"incomplete-{ckpt.name}.{n}")
            n += 1
        logger.warning("%s is incomplete (killed mid-save?); moved aside to %s", ckpt, aside.name)
        if is_main_process():
            ckpt.rename(aside)
    return None


def dir_hash(path: Path, big: int = 256 << 20) -> str:
    """Content hash of a model directory (files over ``big`` bytes are hashed by size + first/last MiB)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if not p.is_file() or p.name in (MARKER, "manifest.json"):
            continue
        size = p.stat().st_size
        h.update(f"{p.relative_to(path)}\0{size}\0".encode())
        with p.open("rb") as fh:
            if size <= big:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def finalize(model: Any, tok: Any, out_dir: Path) -> Path:
    """Save a plain HF model dir (LoRA merged) + tokenizer atomically (to ``out_dir.tmp`` then rename)."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's behaviour."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("align", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "math-verify"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The repository commit of the code that ran, if it is a git checkout."""
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None

"""Shared fixtures: a smoke config and one finished smoke run reused by several tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.yaml"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_cli(*args: str, timeout: int = 600, **kw):
    """Run ``run_pipeline.py`` in a subprocess (the user's entry point)."""
    import subprocess

    return subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), *args], capture_output=True, text=True, timeout=timeout,
        cwd=REPO, **kw,
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A completed smoke pipeline (in-process), shared by the tests that only read it."""
    from align.config import load_config
    from align.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("smoke")
    cfg = load_config(SMOKE, [f"output_dir={out}"])
    rows = run_pipeline(cfg)
    return cfg, out, rows

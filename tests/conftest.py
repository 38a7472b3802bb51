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


VOCABS = ("ggml-vocab-qwen2.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-deepseek-llm.gguf")
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"


@pytest.fixture(scope="session")
def bpe_vocab_dir():
    """A folder with real BPE/SentencePiece vocabularies (Qwen2, Llama SPM, DeepSeek LLM) as llama.cpp ships them.

    Taken at test time from the llama-cpp-python *source* package on PyPI (cached under ``~/.cache/align``; set
    ``ALIGN_TEST_VOCAB`` to a folder holding the three files instead); never fetched by align itself. Skips when
    neither the cache nor PyPI is reachable."""
    import shutil
    import subprocess
    import tarfile
    import tempfile

    folder = Path(os.environ.get("ALIGN_TEST_VOCAB") or Path.home() / ".cache" / "align" / "test-vocab")
    if all((folder / v).is_file() for v in VOCABS):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                              LLAMA_CPP_SDIST, "-d", tmp], capture_output=True, text=True, timeout=600)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if got.returncode != 0 or not sdists:
            pytest.skip(f"cannot fetch {LLAMA_CPP_SDIST} for its vocabularies: {got.stderr.strip()[-300:]}")
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                if Path(member.name).name in VOCABS:
                    with tar.extractfile(member) as src, (folder / Path(member.name).name).open("wb") as dst:
                        shutil.copyfileobj(src, dst)
    missing = [v for v in VOCABS if not (folder / v).is_file()]
    if missing:
        pytest.skip(f"{LLAMA_CPP_SDIST} does not ship {missing}")
    return folder

"""Generation for grading, and held-out grading: greedy completions graded by each row's verifier through the one
grading path (``rewards.grading``), exactly as in training."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from align import moe
from rewards.grading import GradingReport, grade_rows, row_gold

logger = logging.getLogger(__name__)


def row_modes(rows: list[dict[str, Any]]) -> list[bool | None]:
    """Each row's thinking mode (``align.thinking``), for ``generate``."""
    from align.thinking import row_thinking

    return [row_thinking(r) for r in rows]


def prompt_and_gold(row: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    """The prompt messages and the gold answer of a row (``rewards.grading.row_gold``)."""
    return row.get("prompt") or row["messages"][:-1], row_gold(row)


@torch.no_grad()
def generate(model: Any, tok: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int,
             desc: str = "generate", modes: list[bool | None] | None = None, **gen_kwargs: Any) -> list[str]:
    """Decode completions for chat prompts (left-padded batches, router logits off), each rendered in its mode
    (``modes``: thinking / non-thinking / None = the template's default, ``align.thinking``)."""
    from align.thinking import render_prompt

    was_training = model.training
    model.eval()
    tok.padding_side = "left"
    texts = [render_prompt(tok, p, m) for p, m in zip(prompts, modes or [None] * len(prompts), strict=True)]
    # Batch only prompts of equal token length: left padding is not neutral for every architecture (DeepSeek-V4's
    # compressed-sparse-attention layers pool pad positions into their blocks: logits move by ~0.1 when a prompt is
    # left-padded), so greedy grading never pads. Results come back in the input order.
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    buckets: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        buckets.setdefault(n, []).append(i)
    batches = [ids[k : k + batch_size] for ids in buckets.values() for k in range(0, len(ids), batch_size)]
    n_ret = int(gen_kwargs.get("num_return_sequences", 1))
    out: list[list[str]] = [[] for _ in texts]
    # one rank generates alone (grading): never wait for the other ranks, even under a ZeRO-3 trainer config
    gen_kwargs = {"do_sample": False, "synced_gpus": False, **gen_kwargs}
    with moe.generation_mode(model):
        for idx in tqdm(batches, desc=desc, leave=False):
            batch = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            seq = model.generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                **gen_kwargs,
            )
            decoded = tok.batch_decode(seq[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for j, i in enumerate(idx):
                out[i] = decoded[j * n_ret : (j + 1) * n_ret]
    model.train(was_training)
    return [c for group in out for c in group]


def grade_heldout(model: Any, tok: Any, rows: list[dict[str, Any]], max_new_tokens: int, batch_size: int) -> dict[str, Any]:
    """Greedy held-out grading: ``GradingReport`` as a dict (``accuracy``, ``n``, ``statuses``, ``by_verifier`` —
    accuracy per verifier, i.e. per task family of a mixture — ``examples``) and ``seconds`` (what it took)."""
    if not rows:
        return {**GradingReport().as_dict(), "seconds": 0.0}
    t0 = time.perf_counter()
    completions = generate(model, tok, [prompt_and_gold(r)[0] for r in rows], max_new_tokens, batch_size,
                           desc="held-out", modes=row_modes(rows))
    report = GradingReport.build(rows, completions, grade_rows(rows, completions)).as_dict()
    return {**report, "seconds": round(time.perf_counter() - t0, 2)}


def heldout_rows(cfg: Any, ctx: Any) -> list[dict[str, Any]]:
    """The rows a stage is graded on: ``eval.data``'s held-out split if set, else the stage's own."""
    from data_recipes import build_rows

    system = getattr(ctx, "system_prompt", None)
    if cfg.eval.data is not None:
        return build_rows(cfg.eval.data, "heldout", ctx.seed, "eval", system)
    return build_rows(cfg.data, "heldout", ctx.seed, cfg.row_schema("heldout"), system) if cfg.data.n_heldout else []


def grade_before(model: Any, tok: Any, cfg: Any, heldout: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """If ``eval.before``: grade the input model too (``heldout_accuracy_before``)."""
    if cfg.eval.before and heldout:
        graded = grade_heldout(model, tok, heldout, cfg.eval.max_new_tokens, cfg.eval.batch_size)
        metrics["heldout_before_s"] = graded["seconds"]  # grading time, part of the stage's wall time
        metrics["heldout_accuracy_before"] = graded["accuracy"]
        metrics["heldout_by_verifier_before"] = graded["by_verifier"]

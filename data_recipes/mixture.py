"""Build a stage's rows: weighted mixture of recipes and local files, schema check, dedup and length filters."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from data_recipes.registry import resolve_recipe
from data_recipes.schema import DataError, validate_rows
from data_recipes.splits import in_heldout

logger = logging.getLogger(__name__)


def row_key(row: dict[str, Any]) -> str:
    """Canonical identity of a row's prompt (``prompt`` if present, else every message but the last)."""
    prompt = row.get("prompt") or row.get("messages", [])[:-1]
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def read_file_rows(path: str | Path) -> tuple[list[Any], list[int] | None]:
    """Rows of a JSONL / Parquet file or a saved ``datasets`` dir, with JSONL line numbers.

    JSONL is parsed with ``json`` line by line rather than through ``datasets``, which silently converts a mixed
    string/number column ("1e3" -> 1000.0, "007" -> 7; STACK-NOTES): answers must stay the strings they were.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if path.is_dir():
        from datasets import load_from_disk

        return list(load_from_disk(str(path))), None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist(), None
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: unsupported data file type {path.suffix!r} (use .jsonl, .parquet or a datasets dir)")
    rows, lines = [], []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from None
            lines.append(lineno)
    return rows, lines


def _source_rows(src: Any, split: str, n: int, seed: int, kind: str, heldout_fraction: float) -> list[dict]:
    if kind == "reasoning" and getattr(src, "replay", False):
        kind = "sft"  # replayed rows of an earlier task: no trace required
    if src.recipe is not None:
        try:
            rows = resolve_recipe(src.recipe)(split=split, n=n, seed=seed, **src.kwargs)
        except (TypeError, ValueError) as exc:
            raise DataError(f"recipe {src.recipe!r} (kwargs {src.kwargs}): {exc}") from None
        validate_rows(rows, kind, f"recipe {src.recipe!r}")
        return rows[:n]
    rows, lines = read_file_rows(src.path)
    validate_rows(rows, kind, str(src.path), lines)
    mine = [r for r in rows if in_heldout(row_key(r), heldout_fraction) == (split == "heldout")]
    if len(mine) < n:
        logger.warning("%s: %d %s rows available, %d asked for; using all", src.path, len(mine), split, n)
    return mine[:n]


def build_rows(data: Any, split: str, seed: int, kind: str) -> list[dict[str, Any]]:
    """The rows of ``split`` ("train" | "heldout") for a stage's ``DataConfig``, mixed by weight."""
    n_total = data.n_train if split == "train" else data.n_heldout
    if n_total == 0:
        return []
    weights = [s.weight for s in data.sources]
    shares = [int(n_total * w / sum(weights)) for w in weights]
    shares[-1] += n_total - sum(shares)
    rows: list[dict[str, Any]] = []
    for i, (src, n) in enumerate(zip(data.sources, shares)):
        if n > 0:
            rows.extend(_source_rows(src, split, n, seed + 1000 * i, kind, data.heldout_fraction))
    before = len(rows)
    if data.dedup:
        seen: set[str] = set()
        unique = []
        for r in rows:
            key = json.dumps(r.get("messages") or r.get("prompt"), sort_keys=True, ensure_ascii=False)
            if key not in seen:
                seen.add(key)
                unique.append(r)
        rows = unique
    dropped_dupes = before - len(rows)
    dropped_long = 0
    if data.max_chars is not None:
        kept = [r for r in rows if len(json.dumps(r.get("messages") or r.get("prompt"))) <= data.max_chars]
        dropped_long = len(rows) - len(kept)
        rows = kept
    logger.info(
        "data %s: %d rows (%d exact duplicates dropped, %d over max_chars dropped)", split, len(rows), dropped_dupes,
        dropped_long,
    )
    if not rows:
        raise DataError(f"{split} split is empty after dedup and filters")
    return rows

"""Build a stage's rows: weighted mixture of recipes and local files, schema check, dedup and length filters."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from data_recipes.formats import normalize_rows, with_system_prompt
from data_recipes.registry import resolve_recipe
from data_recipes.schema import DataError, validate_rows
from data_recipes.splits import in_heldout

logger = logging.getLogger(__name__)


def row_key(row: dict[str, Any]) -> str:
    """Canonical identity of a row's prompt (``prompt`` if present, else every message but the last)."""
    prompt = row.get("prompt") or row.get("messages", [])[:-1]
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def read_file_rows(path: str | Path, split: str = "train") -> tuple[list[Any], list[int] | None]:
    """Rows of a JSONL / JSON-array / Parquet file or a saved ``datasets`` dir, with JSONL line numbers.

    JSONL is parsed with ``json`` line by line rather than through ``datasets``, which silently converts a mixed
    string/number column ("1e3" -> 1000.0, "007" -> 7): answers must stay the strings they were. Text files are
    UTF-8, with or without a byte-order mark; anything unreadable is a ``DataError`` naming the file (and line).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if path.is_dir():
        if any((path / marker).is_file() for marker in ("dataset_info.json", "dataset_dict.json", "state.json")):
            return _read_dataset_dir(path, split), None
        return _read_data_folder(path, split)
    if path.suffix == ".csv":
        return _read_csv(path)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
        if not rows:
            raise DataError(f"{path}: the file has no rows")
        return rows, None
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: unsupported data file type {path.suffix!r} (use .jsonl, .json, .parquet, .csv, a "
                        "saved datasets dir or a folder of such files)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is not part of the data
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}: line {line}, column {col} (byte {exc.start}): not UTF-8 text "
                        f"(byte 0x{raw[exc.start]:02x})") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    if path.suffix == ".json" and text.lstrip().startswith("["):  # one JSON array of rows
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from None
        if not rows:
            raise DataError(f"{path}: the JSON array has no rows")
        return rows, None
    rows, lines = [], []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from None
        lines.append(lineno)
    return rows, lines


DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def _read_data_folder(path: Path, split: str) -> tuple[list[Any], list[int] | None]:
    """A ``load_dataset``-style folder: the files of ``split`` (``train.jsonl``, ``train-00000-of-00002.parquet``,
    ``data/train/...``), read in name order; their rows concatenated."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
    mine = [p for p in files if p.name.startswith(split) or split in p.relative_to(path).parts[:-1]]
    if not mine:
        found = ", ".join(str(p.relative_to(path)) for p in files[:8]) or "no data files"
        raise DataError(f"{path}: no files of split {split!r} (looked for {split}*{{.jsonl,.json,.parquet,.csv}} and "
                        f"{split}/ folders; found: {found})")
    rows: list[Any] = []
    for f in mine:
        rows.extend(read_file_rows(f)[0])
    logger.info("%s: split %r from %d file(s), %d rows", path, split, len(mine), len(rows))
    return rows, None


def _read_csv(path: Path) -> tuple[list[Any], list[int]]:
    """Rows of a CSV file with a header line (every value a string; line numbers kept for errors)."""
    import csv
    import io

    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: byte {exc.start}: not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise DataError(f"{path}: the file is empty (a CSV needs a header line)")
    rows, lines = [], []
    try:
        for row in reader:
            if None in row:
                raise DataError(f"{path}: line {reader.line_num}: more fields than the header's {len(reader.fieldnames)}")
            rows.append(dict(row))
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: {exc}") from None
    if not rows:
        raise DataError(f"{path}: the file has a header but no rows")
    return rows, lines


def _read_dataset_dir(path: Path, split: str = "train") -> list[Any]:
    """A ``datasets.save_to_disk`` dir: a Dataset, or a DatasetDict's ``split`` (the splits it has are named in the
    error when it lacks that one)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a saved datasets directory ({exc})") from None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: a DatasetDict without a {split!r} split (splits: {', '.join(ds)}); set the "
                            f"source's split: to one of them")
        logger.info("%s: a DatasetDict; using its %r split (%d rows)", path, split, len(ds[split]))
        ds = ds[split]
    assert isinstance(ds, Dataset)
    if len(ds) == 0:
        raise DataError(f"{path}: the dataset has no rows")
    return list(ds)


def _source_rows(src: Any, split: str, n: int, seed: int, kind: str, heldout_fraction: float) -> list[dict]:
    if kind == "reasoning" and getattr(src, "replay", False):
        kind = "sft"  # replayed rows of an earlier task: no trace required
    if src.recipe is not None:
        try:
            rows = resolve_recipe(src.recipe)(split=split, n=n, seed=seed, **src.kwargs)
        except (TypeError, ValueError) as exc:
            raise DataError(f"recipe {src.recipe!r} (kwargs {src.kwargs}): {exc}") from None
        validate_rows(rows, kind, f"recipe {src.recipe!r}")
        return _with_source_marks(rows[:n], src)
    rows, lines = read_file_rows(src.path, getattr(src, "split", "train"))
    rows = normalize_rows(rows, str(src.path), getattr(src, "columns", None), getattr(src, "verifier", None), lines)
    validate_rows(rows, kind, str(src.path), lines)
    mine = [r for r in rows if in_heldout(row_key(r), heldout_fraction) == (split == "heldout")]
    if len(mine) < n:
        logger.warning("%s: %d %s rows available, %d asked for; using all", src.path, len(mine), split, n)
    return _with_source_marks(mine[:n], src)


def _with_source_marks(rows: list[dict[str, Any]], src: Any) -> list[dict[str, Any]]:
    """The source's ``thinking:`` on every row that names no mode of its own (``align.thinking``); rows of a
    ``replay`` source are marked ``replay`` (demonstrations of an earlier task: kept as they are, never re-sampled)."""
    mode = getattr(src, "thinking", None)
    if getattr(src, "phase", 0):
        rows = [{**r, "phase": src.phase} for r in rows]
    if getattr(src, "batch_group", 0):
        rows = [{**r, "batch_group": src.batch_group} for r in rows]
    if getattr(src, "replay", False):
        rows = [{**r, "replay": True} for r in rows]
    if mode is None:
        return rows
    return [r if r.get("thinking") is not None else {**r, "thinking": mode} for r in rows]


def build_rows(data: Any, split: str, seed: int, kind: str, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """The rows of ``split`` ("train" | "heldout") for a stage's ``DataConfig``, mixed by weight; ``system_prompt``
    (``model.system_prompt``) becomes the first turn of every conversation without one."""
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
        names = ", ".join(s.path or s.recipe for s in data.sources)
        raise DataError(f"{split} split is empty after dedup and filters (sources: {names})")
    if system_prompt:
        rows = [with_system_prompt(r, system_prompt) for r in rows]
    return rows


def grouped_batches(groups: list[int], phases: list[int], batch_size: int, rng: random.Random,
                    sizes: dict[int, int] | None = None) -> list[list[int]]:
    """Row indices as micro-batches, each of one batch group (sources' ``batch_group``) and ``sizes[group]`` rows
    (``batch_size`` for a group not in ``sizes``), phases in order, each phase's batches shuffled. The remainders of a
    phase's groups (fewer than a batch each) are pooled into mixed batches of ``batch_size``; what is left of those,
    under one batch, opens the next phase's pool (the last batch of all may be short).

    >>> batches = grouped_batches([0, 0, 0, 0, 1, 1, 1, 1], [0] * 8, 2, random.Random(0), sizes={0: 4})
    >>> sorted(len(b) for b in batches), all(len({i >= 4 for i in b}) == 1 for b in batches)
    ([2, 2, 4], True)
    """
    sizes = sizes or {}
    out: list[list[int]] = []
    carry: list[int] = []
    for phase in sorted(set(phases)):
        rows = [i for i, p in enumerate(phases) if p == phase]
        batches: list[list[int]] = []
        rest = list(carry)
        for group in sorted({groups[i] for i in rows}):
            members = [i for i in rows if groups[i] == group]
            rng.shuffle(members)
            size = sizes.get(group, batch_size)
            full = len(members) // size * size
            batches += [members[k : k + size] for k in range(0, full, size)]
            rest += members[full:]
        rng.shuffle(rest)
        full = len(rest) // batch_size * batch_size
        batches += [rest[k : k + batch_size] for k in range(0, full, batch_size)]
        carry = rest[full:]
        rng.shuffle(batches)
        out += batches
    return out + ([carry] if carry else [])


def grouped_batch_order(groups: list[int], phases: list[int], batch_size: int, rng: random.Random) -> list[int]:
    """``grouped_batches`` at one batch size, flat: consecutive ``batch_size`` chunks each hold rows of one batch
    group (or one pooled remainder), so a plain sampler and the trainer's batch size cut the same micro-batches.

    >>> order = grouped_batch_order([0, 0, 0, 0, 1, 1], [0] * 6, 2, random.Random(0))
    >>> sorted(order), [len({order[k] >= 4, order[k + 1] >= 4}) for k in (0, 2, 4)]  # one group per chunk
    ([0, 1, 2, 3, 4, 5], [1, 1, 1])
    """
    return [i for b in grouped_batches(groups, phases, batch_size, rng) for i in b]

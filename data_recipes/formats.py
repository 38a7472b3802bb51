"""The dataset shapes users already have, turned into align's rows (``data_recipes.schema``) without writing code.

Per source (YAML ``{path: ..., columns: {...}, verifier: ..., split: ...}``), in this order:

1. ``columns`` renames: ``{prompt: problem, answer: solution}`` reads align's ``prompt`` from the file's ``problem``
   column (and so on); a mapped column missing from a row is an error naming the row and the column.
2. Shapes (TRL's dataset types and the open-r1 / open-instruct ones):
   - ``text`` (language modelling, sft only): one assistant turn holding the text;
   - ``prompt`` + ``completion``, standard (strings) or conversational (message lists): ``messages`` = the prompt
     turns then the completion turns;
   - ``messages`` (system, multi-turn and ``tool`` turns as given);
   - a string ``prompt`` (prompt-only, grpo/eval): one user turn;
   - content given as a list of parts: the ``text`` parts joined (any other part type is an error naming it);
   - ``reasoning_content`` on an assistant turn (Qwen3 / DeepSeek-R1 style): rendered into the content as
     ``<think>…</think>`` before the answer, so every chat template sees the reasoning.
3. ``answer`` given as a number becomes its string (``5``, ``2.5``; the count is logged), a boolean is refused;
   a source-level ``verifier`` fills rows that name none.

Every other column stays on the row; verifiers receive the whole row as ``row=`` (``rewards.grading``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from data_recipes.schema import DataError

logger = logging.getLogger(__name__)


def _content_text(content: Any, where: str) -> Any:
    """A message content given as a list of parts -> the joined text of its ``text`` parts."""
    if not isinstance(content, list):
        return content
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text" or not isinstance(part.get("text"), str):
            raise ValueError(f"{where}.content[{j}] is a {kind!r} part; only text parts can be trained on")
        texts.append(part["text"])
    return "".join(texts)


def _messages(value: Any, where: str) -> Any:
    """Normalize a message list: content parts joined, ``reasoning_content`` moved into the content."""
    if not isinstance(value, list):
        return value
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            out.append(m)
            continue
        m = dict(m)
        m["content"] = _content_text(m.get("content"), f"{where}[{i}]")
        reasoning = m.pop("reasoning_content", None)
        if reasoning:
            m["content"] = f"<think>{_content_text(reasoning, f'{where}[{i}].reasoning_content')}</think>" + (
                m.get("content") or "")
        out.append(m)
    return out


def normalize_row(row: Any, columns: dict[str, str] | None = None, verifier: str | None = None,
                  stats: dict[str, int] | None = None) -> Any:
    """One source row in align's shape (see the module docstring); ``ValueError`` names the column at fault."""
    if not isinstance(row, dict):
        return row
    row = dict(row)
    for target, source in (columns or {}).items():
        if source not in row:
            raise ValueError(f"column {source!r} (mapped to {target!r}) is missing; the row has {sorted(row)}")
        row[target] = row[source]
    if "text" in row and "messages" not in row and "prompt" not in row:
        row["messages"] = [{"role": "assistant", "content": row["text"]}]
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    prompt = _messages(prompt, "prompt")
    if prompt is not None:
        row["prompt"] = prompt
    if completion is not None and "messages" not in row:
        turns = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
        row["messages"] = [*(prompt or []), *(_messages(turns, "completion") or [])]
    if "messages" in row:
        row["messages"] = _messages(row["messages"], "messages")
    answer = row.get("answer")
    if isinstance(answer, bool):
        raise ValueError(f"'answer' is a boolean ({answer}); give the answer text")
    if isinstance(answer, int | float):
        if isinstance(answer, float) and not math.isfinite(answer):
            raise ValueError(f"'answer' is {answer}")
        row["answer"] = str(int(answer)) if isinstance(answer, float) and answer.is_integer() else str(answer)
        if stats is not None:
            stats["numeric_answers"] = stats.get("numeric_answers", 0) + 1
    if verifier and not row.get("verifier"):
        row["verifier"] = verifier
    return row


def with_system_prompt(row: dict[str, Any], text: str) -> dict[str, Any]:
    """``row`` with a system turn ``text`` first in its ``messages`` and ``prompt`` where they have none."""
    row = dict(row)
    for key in ("messages", "prompt"):
        turns = row.get(key)
        if isinstance(turns, list) and not (turns and isinstance(turns[0], dict) and turns[0].get("role") == "system"):
            row[key] = [{"role": "system", "content": text}, *turns]
    return row


def normalize_rows(rows: list[Any], source: str, columns: dict[str, str] | None = None, verifier: str | None = None,
                   line_numbers: list[int] | None = None) -> list[Any]:
    """``normalize_row`` over a source; an error names the source, row (and line) and column."""
    stats: dict[str, int] = {}
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(normalize_row(row, columns, verifier, stats))
        except ValueError as exc:
            where = f"row {i + 1}" + (f" (line {line_numbers[i]})" if line_numbers else "")
            raise DataError(f"{source}: {where}: {exc}") from None
    if stats.get("numeric_answers"):
        logger.info("%s: %d numeric answers turned into their string form", source, stats["numeric_answers"])
    return out

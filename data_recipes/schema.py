"""Row schemas per stage kind, checked at load time; a bad row is an error naming its source and row number."""

from __future__ import annotations

from typing import Any


class DataError(ValueError):
    """A data problem; the message names the source and the row."""


ROLES = {"system", "user", "assistant", "tool"}


def _check_messages(msgs: Any, key: str) -> str | None:
    if not isinstance(msgs, list) or not msgs:
        return f"{key!r} must be a non-empty list of messages"
    for j, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"{key}[{j}] must be a mapping with role and content"
        if m.get("role") not in ROLES:
            return f"{key}[{j}].role must be one of {sorted(ROLES)}, got {m.get('role')!r}"
        content = m.get("content")
        if not isinstance(content, str):
            return f"{key}[{j}].content must be a string, got {type(content).__name__}"
        if m["role"] != "system" and not content.strip():
            return f"{key}[{j}].content is empty"
        problem = _text_problem(content)
        if problem:
            return f"{key}[{j}].content {problem}"
    return None


def _text_problem(text: str) -> str | None:
    """Text a tokenizer cannot take: lone UTF-16 surrogates (JSON ``\ud800`` escapes), NUL characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate {text[exc.start]!r} at character {exc.start + 1} (not valid Unicode text)"
    if "\x00" in text:
        return f"holds a NUL character at character {text.index(chr(0)) + 1}"
    return None


def row_problem(row: Any, kind: str) -> str | None:
    """What is wrong with ``row`` for a stage of ``kind``, or None."""
    if not isinstance(row, dict):
        return f"a row must be a mapping, got {type(row).__name__}"
    if kind in ("sft", "reasoning"):
        problem = _check_messages(row.get("messages"), "messages")
        if problem:
            return problem
        if row["messages"][-1]["role"] != "assistant":
            return "the last message must be the assistant's"
        if kind == "reasoning" and "</think>" not in row["messages"][-1]["content"]:
            return "the assistant turn has no <think>...</think> reasoning"
    if kind in ("grpo", "eval") or "prompt" in row:
        if kind in ("grpo", "eval") or row.get("prompt") is not None:
            problem = _check_messages(row.get("prompt"), "prompt")
            if problem:
                return problem
    if kind in ("grpo", "eval"):
        if "answer" not in row:
            return "column 'answer' is missing"
        if not isinstance(row.get("answer"), str):
            return f"'answer' must be a string, got {type(row.get('answer')).__name__}"
        if not row["answer"].strip():
            return "'answer' is empty"
        problem = _text_problem(row["answer"])
        if problem:
            return f"'answer' {problem}"
        if not isinstance(row.get("verifier"), str) or not row["verifier"]:
            return "'verifier' must name a verifier"
    if row.get("thinking") is not None and not isinstance(row["thinking"], bool):
        return f"'thinking' must be true, false or absent, got {row['thinking']!r}"
    if "meta" in row and row["meta"] is not None and not isinstance(row["meta"], dict):
        return f"'meta' must be a mapping, got {type(row['meta']).__name__}"
    return None


def validate_rows(rows: list[Any], kind: str, source: str, line_numbers: list[int] | None = None) -> None:
    """Raise DataError naming ``source`` and the (1-based) row, and line if known, of the first bad row."""
    for i, row in enumerate(rows):
        problem = row_problem(row, kind)
        if problem:
            where = f"row {i + 1}" + (f" (line {line_numbers[i]})" if line_numbers else "")
            raise DataError(f"{source}: {where}: {problem}")

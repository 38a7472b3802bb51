"""Thinking and non-thinking modes: one model keeps a direct-answer mode and a reasoning mode, chosen per row.

The switch belongs to the chat template, as in the model families that have it: Qwen3 renders
``enable_thinking=False`` as an empty ``<think></think>`` block at the start of the assistant turn, DeepSeek-V3.1's
templates take ``thinking`` and close the block at once (``</think>`` after the assistant marker). align passes both
names, so either convention sees it; align's own template follows DeepSeek-V3.1's (non-thinking = ``</think>`` in the
prompt, the model answers directly; thinking = the model opens ``<think>`` itself). The marker is prompt, not
completion: it sits outside ``{% generation %}``, so SFT never trains the model to write it and GRPO never samples it.

Where a row's mode comes from, first that applies: the row's own ``thinking`` column, its source's ``thinking:``, what
its assistant turn shows (a ``<think>`` block or ``reasoning_content``: thinking; a bare answer: non-thinking — so
answer-only rows replayed in a reasoning stage keep their mode), the stage kind's default for prompt-only rows
(``thinking_default`` of the stage's options class: grpo thinking). Eval suites set their own
(``data_recipes.suites.SUITES``, or the suite's ``thinking:``). A row with no mode renders as the template does by
default. A template that renders the same
generation prompt either way cannot express the switch: rows that ask for a mode are refused (``mode_problem``),
and the stage-kind default is then not applied (the model has one mode).
"""

from __future__ import annotations

from typing import Any

SWITCH_KWARGS = ("enable_thinking", "thinking")
"""Template variables that carry the switch: Qwen3's name and DeepSeek-V3.1's."""


def template_kwargs(thinking: bool | None) -> dict[str, bool]:
    """Chat-template keyword arguments for a mode (``{}``: the template's default).

    >>> template_kwargs(False)
    {'enable_thinking': False, 'thinking': False}
    >>> template_kwargs(None)
    {}
    """
    return {} if thinking is None else {name: bool(thinking) for name in SWITCH_KWARGS}


def render_prompt(tok: Any, prompt: list[dict[str, Any]], thinking: bool | None = None) -> str:
    """The text the model is asked to continue: ``prompt`` through the chat template with the generation prompt, in
    mode ``thinking`` (None: the template's default)."""
    return tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False, **template_kwargs(thinking))


def has_switch(tok: Any) -> bool:
    """Whether the tokenizer's chat template renders a different generation prompt for the two modes."""
    probe = [{"role": "user", "content": "1+1="}]
    try:
        return render_prompt(tok, probe, True) != render_prompt(tok, probe, False)
    except Exception:  # noqa: BLE001 - a template that fails on the probe cannot express the switch either
        return False


def row_thinking(row: dict[str, Any]) -> bool | None:
    """A row's mode (its ``thinking`` column), None when it names none."""
    value = row.get("thinking")
    return None if value is None else bool(value)


def mode_problem(rows: list[dict[str, Any]], switch: bool, where: str, model: str) -> str | None:
    """Why ``rows`` cannot be rendered (some ask for a mode the template cannot express), or None."""
    if switch:
        return None
    asking = [i for i, r in enumerate(rows) if row_thinking(r) is not None]
    if not asking:
        return None
    modes = sorted({str(row_thinking(rows[i])).lower() for i in asking})
    return (f"{where}: {len(asking)} row(s) ask for thinking={'/'.join(modes)} (first: row {asking[0] + 1}), but the chat "
            f"template of {model} renders the same generation prompt with enable_thinking true and false, so it "
            "cannot express the mode; use a template with the switch (model.chat_template=align, or your own that reads "
            "enable_thinking or thinking) or drop thinking: from the rows and sources")


def shown_mode(row: dict[str, Any]) -> bool | None:
    """The mode a row's final assistant turn demonstrates (None for a prompt-only row).

    >>> shown_mode({"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]})
    False
    >>> shown_mode({"prompt": [{"role": "user", "content": "1+1="}]}) is None
    True
    """
    messages = row.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if last.get("role") != "assistant":
        return None
    return "</think>" in str(last.get("content", "")) or bool(last.get("reasoning_content"))


def with_modes(rows: list[dict[str, Any]], default: bool | None, switch: bool) -> list[dict[str, Any]]:
    """``rows`` with a mode on every row that names none: what its assistant turn shows, else the stage kind's
    ``default``. Only where the template has the switch: a one-mode template renders every row its own way."""
    if not switch:
        return rows
    out = []
    for r in rows:
        mode = row_thinking(r)
        if mode is None:
            mode = shown_mode(r)
        if mode is None:
            mode = default
        out.append(r if mode is None or mode == r.get("thinking") else {**r, "thinking": mode})
    return out


def resolve(rows: list[dict[str, Any]], default: bool | None, tok: Any, where: str, model: str) -> list[dict[str, Any]]:
    """A stage's rows with their modes (``with_modes``); a ``DataError`` when some ask for a mode the tokenizer's
    template cannot express (``mode_problem``)."""
    switch = has_switch(tok)
    problem = mode_problem(rows, switch, where, model)
    if problem:
        from data_recipes.schema import DataError

        raise DataError(problem)
    return with_modes(rows, default, switch)

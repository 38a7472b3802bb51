"""The one grading path: (row, completion) -> Verdict, for rewards, held-out grading, eval suites and rejection
sampling alike.

- Routing: a row is graded by the verifier its ``verifier`` column names (``DEFAULT_VERIFIER`` when it has none),
  unless the caller names one (an eval suite's ``verifier``, a trace filter, a reward term).
- Gold: the row's ``answer``, else the text after the reasoning of its last assistant message.
- Keyword arguments — the stable signature is ``verify(completion, answer, **row)``: ``meta=`` when the row has one
  (a JSON string, as datasets store it, is decoded), ``row=`` every column of the row (a user's verifier reads its
  own fields there, e.g. ``row["difficulty"]``), plus the caller's fixed kwargs (a reward term's ``kwargs``).
- Where and how long: decided by where the verifier's registration says it runs (``ResolvedVerifier.runs``):
  inline, in a killable worker of :mod:`rewards.pool` (identical calls in a batch graded once), or in a thread;
  every call outside the inline ones has the time budget ``timeout_s`` and ends as ``timeout`` past it.
- Nothing raises: a verifier that crashes, hangs or returns junk costs that sample its reward.

``GradingReport`` is the one summary of a graded batch (accuracy, statuses, accuracy by verifier, examples).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from rewards.parsing import answer_section
from rewards.registry import ResolvedVerifier, get_verifier
from rewards.types import Verdict

DEFAULT_VERIFIER = "exact"
DEFAULT_TIMEOUT_S = 10.0
"""Per-sample budget of a pool or thread verifier when the caller gives none."""

Call = tuple[str, str, dict[str, Any]]
"""(completion, gold answer, keyword arguments) of one verifier call."""


def row_verifier(row: dict[str, Any], override: str | None = None) -> str:
    """The verifier that grades ``row``."""
    return override or row.get("verifier") or DEFAULT_VERIFIER


def row_gold(row: dict[str, Any]) -> str:
    """The gold answer of a row: ``answer``, else the assistant's final text after its reasoning."""
    gold = row.get("answer")
    if gold is None:
        messages = row.get("messages") or []
        gold = (answer_section(messages[-1]["content"]) or "").strip() if messages else ""
    return str(gold)


def row_kwargs(row: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for a verifier call on ``row``: the caller's fixed ``extra``, ``meta`` if the row has one
    (decoded when stored as JSON text), and ``row``: every column of the row."""
    kwargs = dict(extra or {})
    meta = row.get("meta")
    if isinstance(meta, str):
        meta = json.loads(meta) if meta else None
    if meta is not None:
        kwargs["meta"] = meta
    kwargs["row"] = {**row, **({"meta": meta} if "meta" in row else {})}
    return kwargs


def score_calls(verifier: ResolvedVerifier, calls: list[Call], timeout_s: float | None = None,
                pool: Any = None) -> list[Verdict]:
    """Verdicts of ``calls`` to one verifier, in order, run where its registration says; ``timeout_s`` per call
    (None: the verifier's own budget, else ``DEFAULT_TIMEOUT_S``)."""
    if not calls:
        return []
    if timeout_s is None:
        timeout_s = verifier.timeout_s or DEFAULT_TIMEOUT_S
    if verifier.runs == "inline":
        return [verifier.call_here(c, a, **kw) for c, a, kw in calls]
    if verifier.runs == "pool":
        from rewards.pool import shared_pool

        # A GRPO group often repeats an answer: grade each distinct (completion, answer, kwargs) once.
        keys = [(c, a, repr(sorted(kw.items()))) for c, a, kw in calls]
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        unique = sorted(set(first.values()))
        graded = dict(zip(unique, (pool or shared_pool()).map(verifier.name, [calls[i] for i in unique],
                                                              timeout=timeout_s)))
        return [graded[first[k]] for k in keys]
    # a verifier only this process knows: a thread with a budget (it cannot be killed, only abandoned)
    out = []
    ex = cf.ThreadPoolExecutor(max_workers=1)
    for c, a, kw in calls:
        fut = ex.submit(verifier.call_here, c, a, **kw)
        try:
            out.append(fut.result(timeout=timeout_s))
        except cf.TimeoutError:
            out.append(Verdict(0.0, "timeout", {"budget_s": timeout_s}))
            ex.shutdown(wait=False, cancel_futures=True)
            ex = cf.ThreadPoolExecutor(max_workers=1)
    ex.shutdown(wait=False)
    return out


def grade_rows(rows: list[dict[str, Any]], completions: list[str], verifier: str | None = None,
               timeout_s: float | None = None, kwargs: dict[str, Any] | None = None) -> list[Verdict]:
    """One verdict per (row, completion): each row routed to its verifier (or ``verifier``), in input order."""
    if len(rows) != len(completions):
        raise ValueError(f"grade_rows: {len(rows)} rows but {len(completions)} completions")
    by_name: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_name.setdefault(row_verifier(row, verifier), []).append(i)
    out: list[Verdict | None] = [None] * len(rows)
    for name, idx in by_name.items():
        resolved = get_verifier(name)
        calls = [(completions[i], row_gold(rows[i]), row_kwargs(rows[i], kwargs)) for i in idx]
        for i, v in zip(idx, score_calls(resolved, calls, timeout_s)):
            out[i] = v
    return [v if v is not None else Verdict(0.0, "error", {"reason": "lost"}) for v in out]


@dataclass
class GradingReport:
    """A graded batch: accuracy (share of ``ok``), status counts, accuracy by verifier, a few examples each."""

    n: int = 0
    accuracy: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    by_verifier: dict[str, dict[str, Any]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(cls, rows: list[dict[str, Any]], completions: list[str], verdicts: list[Verdict],
              verifier: str | None = None, examples_per_verifier: int = 3) -> GradingReport:
        if not rows:
            return cls()
        hits: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        examples: list[dict[str, Any]] = []
        for row, completion, v in zip(rows, completions, verdicts):
            name = row_verifier(row, verifier)
            hits[name] += v.accepted
            totals[name] += 1
            if sum(e["verifier"] == name for e in examples) < examples_per_verifier:
                prompt = row.get("prompt") or (row.get("messages") or [{}])[:-1] or [{"content": ""}]
                examples.append({"verifier": name, "prompt": str(prompt[-1].get("content", ""))[-200:],
                                 "completion": completion[:200], "gold": row_gold(row), "status": v.status})
        return cls(n=len(rows), accuracy=sum(hits.values()) / len(rows),
                   statuses=dict(Counter(v.status for v in verdicts)),
                   by_verifier={k: {"accuracy": hits[k] / totals[k], "n": totals[k]} for k in sorted(totals)},
                   examples=examples)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

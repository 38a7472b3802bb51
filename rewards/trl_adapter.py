"""Per-row verifiers -> TRL's batched reward functions.

``build_reward_functions(specs)`` returns ``(funcs, weights)`` for ``GRPOTrainer(reward_funcs=funcs)`` and
``GRPOConfig(reward_weights=weights)``. Each function follows TRL's reward contract exactly: keyword arguments,
batched, ``**kwargs``-tolerant, one float or ``None`` ("does not apply to this row") per completion.

- Routing: a correctness verifier scores only the rows whose ``verifier`` column names it (others get ``None``);
  a spec with ``all_rows: true`` (shaping rewards such as ``overlong``) scores every row.
- Time: each sample has a budget (``timeout_s``). Verifiers that can be slow — ``math``, ``code`` and every user
  verifier that a fresh process can resolve (import path, file path, entry point) — run in a pool of worker processes
  (:mod:`rewards.pool`): a batch runs in parallel, and a worker that overruns is killed and replaced. Built-ins with
  bounded cost (``exact``, ``think_format``, ``retrieval``, ``instructions``, ``overlong``, ``repetition``) run inline.
  A name registered only inside the caller's process runs in a thread with the same budget.
- Errors: an exception, a crash or a timeout becomes that sample's status with score 0 — never an exception in the
  trainer (TRL calls reward functions without error handling; one exception would end the run).
- Logging: success rate and status fractions per verifier go to TRL's ``log_metric`` (apart from the shaped score,
  which TRL logs itself), and accumulate in ``stats`` for the manifest.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rewards.pool import VerifierPool, shared_pool
from rewards.registry import BUILTINS, _entry_points, get_verifier
from rewards.types import STATUSES, Verdict

logger = logging.getLogger(__name__)

INLINE_BUILTINS = {"exact", "think_format", "retrieval", "instructions", "overlong", "repetition"}


@dataclass(frozen=True)
class VerifierSpec:
    """One reward term: a verifier, its weight, extra kwargs, its per-sample time budget."""

    name: str
    """Built-in or registered name, ``pkg.mod:fn``, ``path/to/file.py:fn`` or an ``align.verifiers`` entry point."""
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for every call (e.g. ``max_len`` for ``overlong``)."""
    timeout_s: float = 10.0
    """Per-sample time budget; past it the sample scores 0 with status ``timeout``."""
    all_rows: bool = False
    """Score every row (shaping rewards) instead of only rows whose ``verifier`` column names this verifier."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("timeout_s: must be > 0")


@dataclass
class VerifierStats:
    """Running counts for one verifier."""

    n: int = 0
    score_sum: float = 0.0
    statuses: Counter = field(default_factory=Counter)

    def add(self, verdicts: list[Verdict]) -> None:
        for v in verdicts:
            self.n += 1
            self.score_sum += v.score
            self.statuses[v.status] += 1

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean_score": self.score_sum / self.n if self.n else None,
            "success_rate": self.statuses["ok"] / self.n if self.n else None,
            "statuses": dict(self.statuses),
        }


def completion_text(completion: Any) -> str:
    """TRL passes strings (standard format) or message lists (conversational); we grade the text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


def _runs_in_pool(name: str) -> bool:
    if name in INLINE_BUILTINS:
        return False
    return name in BUILTINS or ":" in name or name in _entry_points()


class RewardFunction:
    """A TRL reward function for one VerifierSpec (callable; ``__name__`` is the verifier name)."""

    def __init__(self, spec: VerifierSpec, pool: VerifierPool | None = None) -> None:
        self.spec = spec
        self.verifier = get_verifier(spec.name)  # resolves now: a bad name fails at start-up, not mid-run
        self.__name__ = spec.name.replace(":", "_").replace("/", "_")
        self.in_pool = _runs_in_pool(spec.name)
        self._pool = pool
        self.stats = VerifierStats()

    def _score(self, calls: list[tuple[str, str, dict[str, Any]]]) -> list[Verdict]:
        if self.in_pool:
            # A GRPO group often repeats an answer: grade each distinct (completion, answer, row) once.
            keys = [(c, a, repr(sorted(row.items()))) for c, a, row in calls]
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            unique = sorted(set(first.values()))
            pool = self._pool or shared_pool()
            graded = dict(zip(unique, pool.map(self.spec.name, [calls[i] for i in unique], timeout=self.spec.timeout_s)))
            return [graded[first[k]] for k in keys]
        if self.spec.name in INLINE_BUILTINS:
            return [self.verifier(c, a, **row) for c, a, row in calls]
        # a verifier only this process knows: a thread with a budget (it cannot be killed, only abandoned)
        out = []
        ex = cf.ThreadPoolExecutor(max_workers=1)
        for c, a, row in calls:
            fut = ex.submit(self.verifier, c, a, **row)
            try:
                out.append(fut.result(timeout=self.spec.timeout_s))
            except cf.TimeoutError:
                out.append(Verdict(0.0, "timeout", {"budget_s": self.spec.timeout_s}))
                ex.shutdown(wait=False, cancel_futures=True)
                ex = cf.ThreadPoolExecutor(max_workers=1)
        ex.shutdown(wait=False)
        return out

    def __call__(self, prompts: list[Any] | None = None, completions: list[Any] | None = None,
                 **kwargs: Any) -> list[float | None]:
        completions = completions or []
        n = len(completions)
        names = kwargs.get("verifier") or [None] * n
        rows = [i for i in range(n) if self.spec.all_rows or names[i] == self.spec.name]
        try:
            answers = kwargs.get("answer") or [""] * n
            metas = kwargs.get("meta") or [None] * n
            calls = []
            for i in rows:
                row = dict(self.spec.kwargs)
                meta = metas[i]
                if isinstance(meta, str):  # datasets cannot hold per-row dicts of varying shape: JSON in a string
                    meta = json.loads(meta) if meta else None
                if meta is not None:
                    row["meta"] = meta
                calls.append((completion_text(completions[i]), "" if answers[i] is None else str(answers[i]), row))
            verdicts = self._score(calls) if calls else []
        except Exception as exc:  # never raise into the trainer
            logger.exception("reward function %s failed on a batch", self.spec.name)
            verdicts = [Verdict(0.0, "error", {"exception": str(exc)[:300]})] * len(rows)
        self.stats.add(verdicts)
        log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
        if log_metric is not None and verdicts:
            counts = Counter(v.status for v in verdicts)
            log_metric(f"verifiers/{self.__name__}/success_rate", counts["ok"] / len(verdicts))
            for status in STATUSES[1:]:
                if counts[status]:
                    log_metric(f"verifiers/{self.__name__}/{status}_rate", counts[status] / len(verdicts))
        out: list[float | None] = [None] * n
        for i, v in zip(rows, verdicts):
            out[i] = float(v.score)
        return out


def build_reward_functions(
    specs: list[VerifierSpec | dict[str, Any]], pool: VerifierPool | None = None
) -> tuple[list[RewardFunction], list[float]]:
    """TRL reward functions and their weights for a list of specs (dicts are read as VerifierSpec fields)."""
    parsed = [s if isinstance(s, VerifierSpec) else VerifierSpec(**s) for s in specs]
    funcs = [RewardFunction(s, pool) for s in parsed]
    return funcs, [s.weight for s in parsed]

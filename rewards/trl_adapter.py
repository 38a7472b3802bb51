"""Per-row verifiers -> TRL's batched reward functions.

``build_reward_functions(specs)`` returns ``(funcs, weights)`` for ``GRPOTrainer(reward_funcs=funcs)`` and
``GRPOConfig(reward_weights=weights)``. Each function follows TRL's reward contract exactly: keyword arguments,
batched, ``**kwargs``-tolerant, one float or ``None`` ("does not apply to this row") per completion.

- Routing: a correctness verifier scores only the rows whose ``verifier`` column names it (others get ``None``);
  a spec with ``all_rows: true`` (shaping rewards such as ``overlong``) scores every row.
- Time and place: :func:`rewards.grading.score_calls`, the one grading path: each verifier runs where its
  registration declares (inline, a killable worker of :mod:`rewards.pool`, or a thread for a name only this process
  knows), with the spec's per-sample budget (``timeout_s``; default: the verifier's own).
- Errors: an exception, a crash or a timeout becomes that sample's status with score 0 — never an exception in the
  trainer (TRL calls reward functions without error handling; one exception would end the run).
- Logging: per verifier and batch, the fraction of the rows it scored that ended in each status
  (``verifiers/<name>/<status>_frac_of_scored``; ``ok`` is the success rate) goes to TRL's ``log_metric`` — every
  status every batch, so the logged fractions add up to 1 — and counts accumulate in ``stats`` for the manifest.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rewards.grading import row_kwargs, score_calls
from rewards.pool import VerifierPool
from rewards.registry import get_verifier
from rewards.types import STATUSES, Verdict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifierSpec:
    """One reward term: a verifier, its weight, extra kwargs, its per-sample time budget."""

    name: str
    """Built-in or registered name, ``pkg.mod:fn``, ``path/to/file.py:fn`` or an ``align.verifiers`` entry point."""
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for every call (e.g. ``max_len`` for ``overlong``)."""
    timeout_s: float | None = None
    """Per-sample time budget; past it the sample scores 0 with status ``timeout``. None: the verifier's own
    (declared at its registration; 10 s unless it says otherwise)."""
    all_rows: bool = False
    """Score every row (shaping rewards) instead of only rows whose ``verifier`` column names this verifier."""

    def __post_init__(self) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
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


class RewardFunction:
    """A TRL reward function for one VerifierSpec (callable; ``__name__`` is the verifier name)."""

    def __init__(self, spec: VerifierSpec, pool: VerifierPool | None = None) -> None:
        self.spec = spec
        self.verifier = get_verifier(spec.name)  # resolves now: a bad name fails at start-up, not mid-run
        self.__name__ = spec.name.replace(":", "_").replace("/", "_")
        self._pool = pool
        self.stats = VerifierStats()

    def __call__(self, prompts: list[Any] | None = None, completions: list[Any] | None = None,
                 **kwargs: Any) -> list[float | None]:
        completions = completions or []
        n = len(completions)
        names = kwargs.get("verifier") or [None] * n
        rows = [i for i in range(n) if self.spec.all_rows or names[i] == self.spec.name]
        try:
            answers = kwargs.get("answer") or [""] * n
            metas = kwargs.get("meta") or [None] * n
            extras = kwargs.get("columns") or [""] * n  # the row's other columns, as JSON text (see stages/grpo.py)
            calls = []
            for i in rows:
                row = {**(json.loads(extras[i]) if extras[i] else {}), "answer": answers[i], "meta": metas[i],
                       "verifier": names[i], "prompt": prompts[i] if prompts else None}
                calls.append((completion_text(completions[i]), "" if answers[i] is None else str(answers[i]),
                              row_kwargs(row, self.spec.kwargs)))
            verdicts = score_calls(self.verifier, calls, self.spec.timeout_s, self._pool)
        except Exception as exc:  # never raise into the trainer
            logger.exception("reward function %s failed on a batch", self.spec.name)
            verdicts = [Verdict(0.0, "error", {"exception": str(exc)[:300]})] * len(rows)
        self.stats.add(verdicts)
        log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
        if log_metric is not None and verdicts:
            # Every status every batch, zeros included, all over the same denominator (the rows this verifier
            # scored in the batch): TRL averages each key over the batches that logged it, so a status logged only
            # when present made the averaged rates disagree (think_format "success 0.81" next to "wrong 0.63").
            counts = Counter(v.status for v in verdicts)
            for status in STATUSES:
                log_metric(f"verifiers/{self.__name__}/{status}_frac_of_scored", counts[status] / len(verdicts))
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

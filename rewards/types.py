"""The verdict every verifier returns, and the protocol a verifier follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Status = Literal["ok", "wrong", "unparseable", "timeout", "output_limit", "error"]
STATUSES: tuple[str, ...] = ("ok", "wrong", "unparseable", "timeout", "output_limit", "error")


@dataclass(frozen=True)
class Verdict:
    """A verifier's structured result.

    ``score`` is the reward (1.0 / 0.0 for correctness verifiers, anything for shaping rewards); ``status`` says
    why: ``ok`` (accepted), ``wrong`` (parsed, not accepted), ``unparseable`` (no answer could be extracted),
    ``timeout`` (the time budget ran out), ``output_limit`` (a program wrote more than the sandbox keeps, so its
    output cannot be judged: never a pass) or ``error`` (the verifier or the row is broken). ``info`` carries
    small, JSON-able details (the parsed answer, the failing test...).
    """

    score: float
    status: Status
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Verdict.status must be one of {STATUSES}, got {self.status!r}")

    @property
    def accepted(self) -> bool:
        """True when the verifier accepted the answer (status ``ok``)."""
        return self.status == "ok"


class Verifier(Protocol):
    """``verify(completion, answer, **row) -> Verdict``; ``row`` holds the dataset row's other columns."""

    def __call__(self, completion: str, answer: str, **row: Any) -> Verdict: ...


def ok(info: dict[str, Any] | None = None, score: float = 1.0) -> Verdict:
    """An accepted answer."""
    return Verdict(score, "ok", info or {})


def wrong(info: dict[str, Any] | None = None, score: float = 0.0) -> Verdict:
    """A parsed but rejected answer."""
    return Verdict(score, "wrong", info or {})


def unparseable(reason: str) -> Verdict:
    """No gradable answer in the completion."""
    return Verdict(0.0, "unparseable", {"reason": reason})

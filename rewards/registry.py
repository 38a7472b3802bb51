"""Verifier registry and the one resolver for every plug point.

A verifier is named by one of:
- a registered name (``"math"``; built-ins live in ``rewards/<name>.py`` and are imported on first use),
- a dotted import path ``"pkg.module:function"``,
- a file path ``"path/to/check.py:function"`` (loaded as a fresh module; ``sys.path`` is never edited),
- a name an installed package publishes in the entry-point group ``align.verifiers``.

``get_verifier`` wraps whatever it finds so callers always get a :class:`~rewards.types.Verdict`: a plain float
becomes ``Verdict(score, "ok" if score > 0 else "wrong")``, and an exception becomes ``status="error"`` — a verifier
bug costs that sample its reward, never the run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import math
import numbers
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from rewards.types import Verdict

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "align.verifiers"
# Closed set: the verifiers shipped in this package, one module each (module name = verifier name).
BUILTINS: tuple[str, ...] = ("exact", "math", "think_format", "code", "instructions", "retrieval", "overlong", "repetition")

RUNS = ("inline", "pool")
"""Where a verifier runs, declared at registration: ``inline`` (bounded, cheap: called in the caller's thread) or
``pool`` (may be slow or hang: a killable worker process of :mod:`rewards.pool`, with a time budget)."""


@dataclass(frozen=True)
class Entry:
    """One registered object: the object, where it comes from, and what its registration declared."""

    obj: Any
    origin: str
    attrs: dict[str, Any]


class Registry:
    """Names -> objects, the one implementation behind every plug-point registry (verifiers, data recipes).

    Identity is module + qualname (verl's rule): registering the same object again — or the same function from a
    re-imported module — is a no-op; a *different* object under a taken name is refused with both origins named.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Any, **attrs: Any) -> Any:
        prior = self._entries.get(name)
        if prior is not None and not same_object(prior.obj, obj):
            raise ValueError(f"{self.kind} name {name!r} is already registered by {prior.origin}; refusing a "
                             f"different object from {origin_of(obj)}")
        self._entries[name] = Entry(obj, origin_of(obj), attrs)
        return obj

    def get(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def items(self) -> list[tuple[str, Entry]]:
        return sorted(self._entries.items())

    def names(self) -> list[str]:
        return sorted(self._entries)


def same_object(a: Any, b: Any) -> bool:
    """The same object, or the same function of a re-imported module (same module and qualname)."""
    return a is b or (
        getattr(a, "__qualname__", None) is not None
        and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
        and getattr(a, "__module__", None) == getattr(b, "__module__", None)
    )


def origin_of(obj: Any) -> str:
    """``module:qualname (file)`` of a registered object."""
    try:
        return f"{obj.__module__}:{obj.__qualname__} ({inspect.getsourcefile(obj)})"
    except (TypeError, AttributeError):
        return repr(obj)


_VERIFIERS = Registry("verifier")


def register_verifier(name: str, runs: str | None = None,
                      timeout_s: float | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` under ``name``; a second, different object under one name is an error.

    ``runs`` declares where calls go (``RUNS``): ``pool`` for anything that can be slow or hang (symbolic math,
    running code), ``inline`` for checks of bounded cost. Undeclared: ``inline`` for align's built-ins; a verifier
    registered by user code runs in a thread with a time budget (it may hang, and a worker process cannot resolve a
    name registered only in this process) unless it declares ``inline``. ``timeout_s``: the verifier's own
    per-sample budget when a caller gives none (default ``rewards.grading.DEFAULT_TIMEOUT_S``)."""
    if runs is not None and runs not in RUNS:
        raise ValueError(f"register_verifier({name!r}): runs must be one of {RUNS}, got {runs!r}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        return _VERIFIERS.register(name, fn, runs=runs, timeout_s=timeout_s)

    return decorate


def load_object(spec: str) -> Any:
    """Resolve ``"pkg.mod:attr"`` or ``"path/to/file.py:attr"`` to the object, with an error naming the spec.

    Shared by verifiers, data recipes and callbacks. File paths load as a fresh module under a name derived from the
    absolute path, so two files called ``check.py`` never collide and ``sys.path`` stays untouched.
    """
    if ":" not in spec:
        raise ValueError(f"{spec!r} is not an import path: expected 'pkg.module:name' or 'path/to/file.py:name'")
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{spec!r}: file {path} does not exist")
        mod_name = "_align_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12] + "_" + path.stem
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError(f"{spec!r}: cannot load {path} as a Python module")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module  # registered before exec so dataclasses/pickling inside it work
            try:
                loader_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[mod_name]
                raise
    else:
        module = importlib.import_module(target)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise AttributeError(f"{spec!r}: module {module.__name__} has no attribute {attr!r}") from None


@dataclass(frozen=True)
class ResolvedVerifier:
    """A verifier ready to call: ``v(completion, answer, **row) -> Verdict`` that never raises.

    ``runs`` says where it runs (the one place this is decided): ``inline`` verifiers are called here; ``pool``
    verifiers — built-ins registered so, and user verifiers a fresh process can resolve (import path, file path,
    entry point) — go to a killable worker of :mod:`rewards.pool` with ``DEFAULT_TIMEOUT_S``, unless this process is
    such a worker; ``thread`` (a name registered only inside this process) runs in a thread with that budget.
    ``rewards.grading`` batches pool calls and applies the caller's budget instead.
    """

    name: str
    origin: str
    fn: Callable[..., Any]
    runs: str = "inline"
    timeout_s: float | None = None
    """The verifier's own budget (declared at registration); None: ``rewards.grading.DEFAULT_TIMEOUT_S``."""

    def __call__(self, completion: str, answer: str, **row: Any) -> Verdict:
        from rewards import pool

        if self.runs != "inline" and not pool.IN_WORKER:
            from rewards.grading import score_calls

            return score_calls(self, [(completion, answer, row)])[0]
        return self.call_here(completion, answer, **row)

    def call_here(self, completion: str, answer: str, **row: Any) -> Verdict:
        """Call the function in this thread (what a worker does), turning anything it does into a Verdict."""
        try:
            return to_verdict(self.fn(completion, answer, **row))
        except Exception as exc:  # a verifier bug costs this sample's reward, never the run
            logger.debug("verifier %s raised", self.name, exc_info=True)
            return Verdict(0.0, "error", {"exception": f"{type(exc).__name__}: {str(exc)[:300]}"})


def to_verdict(result: Any) -> Verdict:
    """Normalise a verifier's return value (Verdict or number) to a Verdict."""
    if isinstance(result, Verdict):
        return result
    if isinstance(result, numbers.Real) and not isinstance(result, bool) and math.isfinite(float(result)):
        score = float(result)
        return Verdict(score, "ok" if score > 0 else "wrong")
    return Verdict(0.0, "error", {"reason": f"verifier returned {type(result).__name__}, not a Verdict or a float"})


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_verifier(spec: str) -> ResolvedVerifier:
    """Resolve a verifier by built-in name, registered name, import path, file path or entry point."""
    if spec in BUILTINS and spec not in _VERIFIERS:
        importlib.import_module(f"rewards.{spec}")
    entry = _VERIFIERS.get(spec)
    if entry is not None:
        _check_ready(entry.obj)
        # a name registered only in this process cannot be resolved by a worker: bounded in a thread instead
        runs = entry.attrs.get("runs")
        if spec in BUILTINS:
            runs = runs or "inline"
        elif runs != "inline":
            runs = "thread"
        return ResolvedVerifier(spec, entry.origin, entry.obj, runs, entry.attrs.get("timeout_s"))
    if ":" in spec:
        fn = load_object(spec)
        if isinstance(fn, ResolvedVerifier):
            return fn
        if not callable(fn):
            raise TypeError(f"verifier {spec!r} resolved to {type(fn).__name__}, which is not callable")
        _check_ready(fn)
        return ResolvedVerifier(spec, origin_of(fn), fn, "pool")  # user code: killable, bounded
    eps = _entry_points()
    if spec in eps:
        fn = eps[spec].load()
        _check_ready(fn)
        return ResolvedVerifier(spec, f"entry point {ENTRY_POINT_GROUP}:{spec} = {eps[spec].value}", fn, "pool")
    import difflib

    known = sorted(set(BUILTINS) | set(_VERIFIERS.names()) | set(eps))
    close = difflib.get_close_matches(spec, known, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise KeyError(f"unknown verifier {spec!r}.{hint} Known: {', '.join(known)}; or give 'pkg.mod:fn' / 'file.py:fn'.")


def _check_ready(fn: Callable[..., Any]) -> None:
    # Verifiers that need an environment (the code sandbox) expose `check_ready()` raising with a remedy.
    ready = getattr(fn, "check_ready", None)
    if callable(ready):
        ready()


def list_verifiers() -> list[tuple[str, str]]:
    """Every resolvable name with where it comes from (built-ins, registered, entry points)."""
    for name in BUILTINS:
        if name not in _VERIFIERS:
            try:
                importlib.import_module(f"rewards.{name}")
            except ImportError as exc:  # pragma: no cover - optional dependency missing
                logger.warning("built-in verifier %s unavailable: %s", name, exc)
    rows = [(name, entry.origin) for name, entry in _VERIFIERS.items()]
    rows += [(n, f"entry point {ENTRY_POINT_GROUP}: {ep.value}") for n, ep in sorted(_entry_points().items())]
    return rows

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

_REGISTRY: dict[str, tuple[Callable[..., Any], str]] = {}


def register_verifier(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` under ``name``; a second, different object under one name is an error."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        prior = _REGISTRY.get(name)
        if prior is not None and not _same_object(prior[0], fn):
            raise ValueError(
                f"verifier name {name!r} is already registered by {prior[1]}; "
                f"refusing a different object from {_origin_of(fn)}"
            )
        _REGISTRY[name] = (fn, _origin_of(fn))
        return fn

    return decorate


def _same_object(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    # Re-importing a module (e.g. a file loaded twice) yields a new function object with the same code location.
    return a is b or (
        getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
        and getattr(a, "__module__", None) == getattr(b, "__module__", None)
    )


def _origin_of(fn: Callable[..., Any]) -> str:
    try:
        return f"{fn.__module__}:{fn.__qualname__} ({inspect.getsourcefile(fn)})"
    except TypeError:
        return repr(fn)


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
    """A verifier ready to call: ``v(completion, answer, **row) -> Verdict`` that never raises."""

    name: str
    origin: str
    fn: Callable[..., Any]

    def __call__(self, completion: str, answer: str, **row: Any) -> Verdict:
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
    if spec in BUILTINS and spec not in _REGISTRY:
        importlib.import_module(f"rewards.{spec}")
    if spec in _REGISTRY:
        fn, origin = _REGISTRY[spec]
        _check_ready(fn)
        return ResolvedVerifier(spec, origin, fn)
    if ":" in spec:
        fn = load_object(spec)
        if isinstance(fn, ResolvedVerifier):
            return fn
        if not callable(fn):
            raise TypeError(f"verifier {spec!r} resolved to {type(fn).__name__}, which is not callable")
        _check_ready(fn)
        return ResolvedVerifier(spec, _origin_of(fn), fn)
    eps = _entry_points()
    if spec in eps:
        fn = eps[spec].load()
        _check_ready(fn)
        return ResolvedVerifier(spec, f"entry point {ENTRY_POINT_GROUP}:{spec} = {eps[spec].value}", fn)
    import difflib

    known = sorted(set(BUILTINS) | set(_REGISTRY) | set(eps))
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
        if name not in _REGISTRY:
            try:
                importlib.import_module(f"rewards.{name}")
            except ImportError as exc:  # pragma: no cover - optional dependency missing
                logger.warning("built-in verifier %s unavailable: %s", name, exc)
    rows = [(name, origin) for name, (_, origin) in sorted(_REGISTRY.items())]
    rows += [(n, f"entry point {ENTRY_POINT_GROUP}: {ep.value}") for n, ep in sorted(_entry_points().items())]
    return rows

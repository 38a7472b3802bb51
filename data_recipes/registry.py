"""Data recipes by name or import path.

A recipe is ``fn(split: "train" | "heldout", n: int, seed: int, **kwargs) -> list[dict]`` returning rows of the
stage's schema. The two splits must be disjoint by construction (procedural recipes partition their problem space
by a hash of the problem). Register with ``@register_recipe("name")``; refer to unregistered ones as
``pkg.mod:fn`` or ``path/to/file.py:fn``; installed packages add names through the entry-point group
``align.recipes``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from rewards.registry import Registry, load_object

ENTRY_POINT_GROUP = "align.recipes"
# Closed set: built-in recipe name -> module that registers it.
BUILTINS: dict[str, str] = {
    "arithmetic": "data_recipes.arithmetic",
    "needle": "data_recipes.needle",
    "chain": "data_recipes.chain",
    "code_functions": "data_recipes.suites",
    "instructions": "data_recipes.suites",
    "two_hop": "data_recipes.suites",
}

_RECIPES = Registry("recipe")  # the same registry implementation (and duplicate rule) as the verifiers'


def register_recipe(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a recipe under ``name``; a second, different object (module + qualname) under it is an error."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        return _RECIPES.register(name, fn)

    return decorate


def resolve_recipe(spec: str) -> Callable[..., list[dict[str, Any]]]:
    """A recipe function from a registered/built-in name, an import path or an entry point."""
    if spec in BUILTINS and spec not in _RECIPES:
        importlib.import_module(BUILTINS[spec])
    entry = _RECIPES.get(spec)
    if entry is not None:
        return entry.obj
    if ":" in spec:
        return load_object(spec)
    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if spec in eps:
        return eps[spec].load()
    known = sorted(set(BUILTINS) | set(_RECIPES.names()) | set(eps))
    raise KeyError(f"unknown data recipe {spec!r}; known: {', '.join(known)} (or 'pkg.mod:fn' / 'file.py:fn')")

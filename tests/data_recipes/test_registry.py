"""Recipes by name: every procedural recipe deterministic with disjoint splits; name clashes refused."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("recipe, kwargs", [("chain", {}), ("needle", {"context_chars": 60}), ("arithmetic", {"digits": 2})])
def test_procedural_recipes_are_deterministic_and_disjoint(recipe, kwargs):
    from data_recipes import resolve_recipe

    fn = resolve_recipe(recipe)
    train = fn("train", 800, seed=1, **kwargs)
    assert train == fn("train", 800, seed=1, **kwargs)
    held = fn("heldout", 80, seed=1, **kwargs)
    assert not {json.dumps(r["prompt"]) for r in train} & {json.dumps(r["prompt"]) for r in held}
    assert not {r["answer"] for r in held if recipe == "needle"} & {r["answer"] for r in train if recipe == "needle"}


def test_recipe_name_clash_from_another_module_is_refused():
    """Same function name, another module: refused like a verifier clash (identity = module + qualname)."""
    from data_recipes import register_recipe

    def make(module: str):
        def clash_recipe(split, n, seed):
            return []

        clash_recipe.__module__ = module
        return clash_recipe

    first = make("mod_a")
    register_recipe("test_clash")(first)
    register_recipe("test_clash")(first)  # the same object again: a no-op
    register_recipe("test_clash")(make("mod_a"))  # the same module + qualname (a re-import): a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_recipe("test_clash")(make("mod_b"))

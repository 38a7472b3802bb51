"""Datasets, mixtures and procedural tasks. Imports neither torch nor deepspeed."""

from data_recipes.mixture import build_rows, read_file_rows
from data_recipes.registry import register_recipe, resolve_recipe
from data_recipes.schema import DataError, validate_rows

__all__ = ["DataError", "build_rows", "read_file_rows", "register_recipe", "resolve_recipe", "validate_rows"]

"""Every built-in verifier's ``>>>`` example is true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["parsing", "exact", "math", "think_format", "code", "instructions", "retrieval", "overlong", "repetition"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"rewards.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0

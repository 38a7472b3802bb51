"""Expert parallelism (DeepSpeed AutoEP): the transformers compatibility fix AutoEP needs."""

from __future__ import annotations

import inspect

import pytest


def test_output_capture_registry_takes_autoep_calls():
    from transformers.utils import output_capturing

    from align.expert_parallel import patch_output_capture_registry

    registry = output_capturing._CAN_RECORD_REGISTRY
    if len(inspect.signature(type(registry).get).parameters) > 2:
        pytest.skip("this transformers' registry get already takes a default")
    with pytest.raises(TypeError):  # what deepspeed.initialize hits with AutoEP on transformers 5.24
        registry.get("<class 'x.Block'>", None)
    assert patch_output_capture_registry()
    assert not patch_output_capture_registry()  # once
    assert registry.get("<class 'x.Block'>", "missing") == "missing"
    dict.__setitem__(registry, "<class 'x.Block'>", {"router_logits": 1})
    try:
        assert registry.get("<class 'x.Block'>", None) == {"router_logits": 1}
    finally:
        dict.pop(registry, "<class 'x.Block'>")

    class Model:  # transformers' own calls, keyed by model: unchanged
        pass

    assert registry.get(Model()) == {}

"""Routing replay: recorded selections are replayed exactly, gate weights stay differentiable, agreement is counted."""

from __future__ import annotations

import pytest
import torch

from align import modeling
from align.replay import RoutingReplay


def tiny(preset: str, tmp_path) -> torch.nn.Module:
    modeling.build_base(preset, {}, 0, tmp_path / preset)
    model, _ = modeling.load_model(tmp_path / preset)
    model.config.output_router_logits = False
    return model


def selections(model: torch.nn.Module) -> tuple[list, list]:
    """Forward hooks that capture each learned router's returned indices (after any replay hook)."""
    got, handles = [], []
    for layer in model.model.layers:
        gate = layer.mlp.gate
        if not hasattr(gate, "tid2eid"):
            handles.append(gate.register_forward_hook(lambda m, a, o: got.append(o[2].detach().clone())))
    return got, handles


@pytest.mark.parametrize("preset", ["tiny-deepseek-v4", "tiny-qwen3-moe", "tiny-mixtral"])
def test_replay_is_exact_and_keeps_the_router_training(preset, tmp_path):
    model = tiny(preset, tmp_path)
    replay = RoutingReplay(model)
    ids = torch.randint(5, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), replay.active("record"):
        ref = model(input_ids=ids).logits
    # same weights: replay reproduces the forward exactly, and every token agrees
    with torch.no_grad(), replay.active("replay"):
        same = model(input_ids=ids).logits
    assert torch.allclose(ref, same, atol=1e-6)
    assert replay.agreement() == 1.0
    recorded = [replay.store[name][ids[0].numpy().tobytes()] for name in replay.gates]

    # move the routers: fresh routing now differs for some tokens, replayed routing does not
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.add_(torch.randn_like(layer.mlp.gate.weight) * 2.0)
    got, handles = selections(model)
    with torch.no_grad(), replay.active("measure"):
        model(input_ids=ids)
    fresh_agreement = replay.agreement()
    assert fresh_agreement < 1.0
    got.clear()
    with replay.active("replay"):
        out = model(input_ids=ids)
    for h in handles:
        h.remove()
    assert replay.agreement() == pytest.approx(fresh_agreement)  # agreement is about the fresh choice either way
    for rec, sel in zip(recorded, got):
        assert torch.equal(sel.reshape(3, 12, -1)[0], rec)  # exactly the recorded experts
    # gate weights stay differentiable: the router still gets a gradient under replay
    out.logits.sum().backward()
    grads = [layer.mlp.gate.weight.grad for layer in model.model.layers if not hasattr(layer.mlp.gate, "tid2eid")]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    replay.remove()


def test_unrecorded_sequences_route_fresh(tmp_path):
    model = tiny("tiny-deepseek-v4", tmp_path)
    replay = RoutingReplay(model)
    with torch.no_grad(), replay.active("record"):
        model(input_ids=torch.randint(5, 100, (2, 8)))
    with torch.no_grad(), replay.active("replay"):
        model(input_ids=torch.randint(5, 100, (2, 9)))
    assert replay.missing > 0 and replay.agreement() is None
    with pytest.raises(ValueError):
        with replay.active("nope"):
            pass

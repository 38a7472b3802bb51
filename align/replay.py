"""Routing replay for RL on MoE models (R2): the experts chosen when the old-policy log-probs were computed are the
experts used in the policy-update forward passes of the same sequences.

Between the pass that scores a rollout batch and the update passes, router weights move (and, on other stacks, the
inference engine routes differently), so a token can switch experts: the importance ratio then compares two
different sub-networks. With replay, only *which* experts is fixed; the gate weights of the replayed experts are
recomputed from the current router logits, so they stay differentiable and the router still trains.

How: forward hooks on every learned top-k router (DeepSeek-V3/V4, Qwen3-MoE, Mixtral — anything whose router
returns ``(logits, weights, indices)``; DeepSeek-V4 hash layers route by token id and need no replay) and a forward
pre-hook on the model that keys each sequence by its token ids. ``record`` stores each sequence's selections per
layer; ``replay`` substitutes them and ``measure`` only compares. Both count the routing agreement: the fraction of
tokens whose fresh top-k set equals the recorded one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from align.moe import find_moe_blocks, router_of

logger = logging.getLogger(__name__)


def replay_weights(gate: nn.Module, logits: torch.Tensor, indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The gate weights the router would give ``indices`` from ``logits`` (differentiable).

    DeepSeek-V3/V4 routers (``score_fn``): scores gathered, normalised (V3: if ``norm_topk_prob``), scaled by
    ``routed_scaling_factor``. Softmax routers (Qwen3-MoE, Mixtral): softmax probabilities gathered, normalised
    unless the router says ``norm_topk_prob=False``.
    """
    if hasattr(gate, "score_fn"):
        w = gate.score_fn(logits).gather(1, indices)
        if getattr(gate, "norm_topk_prob", True):
            w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
        w = w * getattr(gate, "routed_scaling_factor", 1.0)
    else:
        w = torch.softmax(logits, dim=-1, dtype=torch.float).gather(1, indices)
        if getattr(gate, "norm_topk_prob", True):
            w = w / w.sum(dim=-1, keepdim=True)
    return w.to(like.dtype)


class RoutingReplay:
    """Record / replay / measure the expert selections of every learned router, per sequence."""

    def __init__(self, model: nn.Module) -> None:
        self.mode: str | None = None
        self.keys: list[bytes] | None = None
        self.store: dict[str, dict[bytes, torch.Tensor]] = {}
        self.same = self.total = self.missing = 0
        self.handles = [model.register_forward_pre_hook(self._pre, with_kwargs=True)]
        self.gates: list[str] = []
        for name, block in find_moe_blocks(model):
            gate = router_of(block)[1]
            if hasattr(gate, "tid2eid"):
                continue
            self.gates.append(name)
            self.store[name] = {}
            self.handles.append(gate.register_forward_hook(self._hook(name)))

    def _pre(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if self.mode is None:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.keys = [row.cpu().numpy().tobytes() for row in ids] if isinstance(ids, torch.Tensor) else None

    def _hook(self, name: str) -> Any:
        def hook(gate: nn.Module, args: Any, output: Any) -> Any:
            if self.mode is None or self.keys is None or not (isinstance(output, tuple) and len(output) == 3):
                return None
            logits, weights, indices = output
            b = len(self.keys)
            per_row = indices.reshape(b, -1, indices.shape[-1])
            if self.mode == "record":
                for key, sel in zip(self.keys, per_row):
                    self.store[name][key] = sel.detach().clone()
                return None
            recorded = [self.store[name].get(k) for k in self.keys]
            if any(r is None or r.shape != per_row.shape[1:] for r in recorded):
                self.missing += sum(r is None for r in recorded)
                return None
            rec = torch.stack(recorded).to(indices.device)
            with torch.no_grad():
                self.same += int((rec.sort(-1).values == per_row.sort(-1).values).all(-1).sum())
                self.total += rec.shape[0] * rec.shape[1]
            if self.mode == "measure":
                return None
            flat = rec.reshape(-1, rec.shape[-1])
            return logits, replay_weights(gate, logits, flat, weights), flat
        return hook

    @contextlib.contextmanager
    def active(self, mode: str) -> Iterator[None]:
        """Within the block: ``record`` (after clearing), ``replay`` or ``measure``."""
        if mode not in ("record", "replay", "measure"):
            raise ValueError(f"routing replay mode {mode!r}")
        if mode == "record":
            for s in self.store.values():
                s.clear()
        self.mode = mode
        try:
            yield
        finally:
            self.mode, self.keys = None, None

    def agreement(self, reset: bool = True) -> float | None:
        """Fraction of tokens whose fresh top-k set equals the recorded one since the last call (None: no data)."""
        out = self.same / self.total if self.total else None
        if reset:
            self.same = self.total = 0
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

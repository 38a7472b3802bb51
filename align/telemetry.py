"""MoE telemetry and router maintenance during training: expert load, aux-loss-free bias updates, layer snapshots.

Works on every transformers 5 MoE block whose router (``gate``) returns ``(logits, weights, indices)`` —
DeepSeek-V3/V4, Qwen3-MoE, Mixtral — through forward hooks; nothing in the model is edited.

- :class:`ExpertLoad` counts, per MoE layer, how many routed token-slots each expert received (every forward pass
  while installed: training forwards and, in GRPO, the rollouts; padding positions count too) and the router's
  softmax entropy. Under several ranks the counts are summed over all ranks at every optimizer step
  (``flush``), so the load (and DeepSeek-V3's bias update, which must stay the same on every rank) is the global one,
  not one rank's share. AutoEP's expert-parallel layers (``align.expert_parallel``) are counted from their router's
  selected experts. ``window()`` summarises since the last call: load fractions (sum to 1), coefficient of variation,
  max/mean load, dead experts (no token over the window), entropy (nats); DeepSeek-V4 hash layers are marked
  ``hash`` and kept apart from the learned (``topk``) ones.
- :func:`update_correction_bias`: aux-loss-free balancing as in DeepSeek-V3 — after an optimizer step, each learned
  top-k router's ``e_score_correction_bias`` moves by ``gamma`` toward balanced load (up for under-loaded experts,
  down for over-loaded ones). transformers never updates that buffer itself.
- :class:`LayerSnapshot`: per module group (``emb``, ``layer{i}_attn``, ``layer{i}_ffn``, ``ln_f``) the gradient
  norm and the update/weight norm ratio of an optimizer step, with a trend label over a window.
- :class:`MoeCallback` wires these into any transformers/TRL Trainer: logged every logging step (``moe/...`` and
  ``snapshot/...`` keys), whole-stage totals kept for the manifest (``metrics.moe``), and fed to the live monitor.
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from align.expert_parallel import is_ep_layer
from align.moe import find_moe_blocks, router_of


class ExpertLoad:
    """Forward hooks on every MoE router: routed token-slots per expert and router entropy, per layer."""

    def __init__(self, model: nn.Module) -> None:
        self.layers: dict[str, dict[str, Any]] = {}
        self.handles = []
        for name, block in find_moe_blocks(model):
            gate = router_of(block)[1]
            n = getattr(gate, "num_experts", None) or getattr(getattr(block, "experts", None), "num_experts", None)
            if not n:
                continue
            kind = "hash" if hasattr(gate, "tid2eid") else "topk"
            key = _layer_key(name)
            self.layers[key] = {"kind": kind, "n": int(n), "gate": gate, "window": torch.zeros(int(n)),
                                "step": torch.zeros(int(n)), "step_ent": torch.zeros(2), "total": torch.zeros(int(n)),
                                "ent_sum": 0.0,
                                "ent_n": 0, "ent_total": 0.0, "ent_total_n": 0}
            self.handles.append(gate.register_forward_hook(self._hook(key, is_ep_layer(block))))

    def _hook(self, key: str, expert_parallel: bool) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not (isinstance(output, tuple) and len(output) == 3):
                return
            if expert_parallel:  # AutoEP's router returns (top_scores [T, k], selected experts [T, k], counts [E])
                indices = output[1]
                with torch.no_grad():
                    logits = module.gate(args[0].reshape(-1, args[0].shape[-1]))  # [T, E]: for the entropy
            else:  # transformers' routers: (logits, weights, indices)
                logits, _, indices = output
            with torch.no_grad():
                layer = self.layers[key]
                counts = torch.bincount(indices.reshape(-1).long().cpu(), minlength=layer["n"])[: layer["n"]].float()
                layer["step"] += counts  # this rank's, until flush() sums the ranks
                p = torch.softmax(logits.detach().float().reshape(-1, logits.shape[-1]), dim=-1)
                ent = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
                layer["step_ent"] += torch.tensor([float(ent.sum()), float(ent.numel())])
        return hook

    def flush(self) -> dict[str, torch.Tensor]:
        """Counts since the last flush, summed over all ranks (a collective when distributed: every rank calls it at
        every optimizer step), moved into the window and the totals; returns them per layer."""
        if not self.layers:
            return {}
        keys = list(self.layers)
        # one [layers, n + 2] tensor per flush: each layer's counts, then its entropy sum and count
        width = max(v["n"] for v in self.layers.values()) + 2
        buf = torch.zeros(len(keys), width)
        for i, k in enumerate(keys):
            v = self.layers[k]
            buf[i, : v["n"]] = v["step"]
            buf[i, -2:] = v["step_ent"]
            v["step"].zero_()
            v["step_ent"].zero_()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            buf = buf.to(device)
            dist.all_reduce(buf)
            buf = buf.cpu()
        out = {}
        for i, k in enumerate(keys):
            v = self.layers[k]
            counts = buf[i, : v["n"]].clone()
            v["window"] += counts
            v["total"] += counts
            v["ent_sum"] += float(buf[i, -2])
            v["ent_n"] += int(buf[i, -1])
            v["ent_total"] += float(buf[i, -2])
            v["ent_total_n"] += int(buf[i, -1])
            out[k] = counts
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    @staticmethod
    def _stats(counts: torch.Tensor, ent_sum: float, ent_n: int, kind: str) -> dict[str, Any]:
        total = float(counts.sum())
        load = (counts / total) if total else torch.zeros_like(counts)
        mean = float(load.mean())
        return {"kind": kind, "tokens": int(total), "load": [round(float(x), 5) for x in load],
                "cv": float(load.std(unbiased=False) / mean) if total else 0.0,
                "max_over_mean": float(load.max() / mean) if total else 0.0,
                "dead": int((counts == 0).sum()) if total else 0, "entropy": ent_sum / ent_n if ent_n else 0.0}

    def window(self, reset: bool = True) -> dict[str, dict[str, Any]]:
        """Per-layer stats since the last ``window()`` call."""
        out = {k: self._stats(v["window"], v["ent_sum"], v["ent_n"], v["kind"]) for k, v in self.layers.items()}
        if reset:
            for v in self.layers.values():
                v["window"].zero_()
                v["ent_sum"], v["ent_n"] = 0.0, 0
        return out

    def totals(self) -> dict[str, dict[str, Any]]:
        """Per-layer stats over everything counted since installation."""
        return {k: self._stats(v["total"], v["ent_total"], v["ent_total_n"], v["kind"]) for k, v in self.layers.items()}



def _layer_key(name: str) -> str:
    m = re.search(r"layers\.(\d+)", name)
    return f"layer{m.group(1)}" if m else name


def flat_metrics(stats: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Scalars for the trainer log: per layer cv / max_over_mean / dead / entropy, and learned-layer means."""
    out: dict[str, float] = {}
    for key, s in stats.items():
        for m in ("cv", "max_over_mean", "dead", "entropy"):
            out[f"moe/{key}_{s['kind']}/{m}"] = s[m]
    learned = [s for s in stats.values() if s["kind"] == "topk" and s["tokens"]]
    if learned:
        out["moe/topk_mean_cv"] = sum(s["cv"] for s in learned) / len(learned)
        out["moe/dead_experts"] = sum(s["dead"] for s in learned)
    return out


def update_correction_bias(load: ExpertLoad, counts: dict[str, torch.Tensor], gamma: float) -> float:
    """Move each learned router's ``e_score_correction_bias`` by ``gamma`` toward balanced load (DeepSeek-V3's
    aux-loss-free balancing: ``b_i += gamma * sign(mean load - load_i)``). Returns the mean absolute bias after."""
    sizes = []
    for key, layer in load.layers.items():
        bias = getattr(layer["gate"], "e_score_correction_bias", None)
        c = counts.get(key)
        if layer["kind"] != "topk" or not isinstance(bias, torch.Tensor) or c is None or not float(c.sum()):
            continue
        with torch.no_grad():
            bias += gamma * torch.sign(c.mean() - c).to(bias.device, bias.dtype)
        sizes.append(float(bias.abs().mean()))
    return sum(sizes) / len(sizes) if sizes else 0.0


def param_group(name: str) -> str:
    """``emb``, ``layer{i}_attn``, ``layer{i}_ffn`` or ``ln_f`` (final norm, head and anything after the layers)."""
    n = name.removeprefix("base_model.model.")
    m = re.search(r"layers\.(\d+)\.(.*)", n)
    if m:
        rest = m.group(2)
        ffn = any(t in rest for t in ("mlp", "post_attention_layernorm", "ffn", "block_sparse_moe", "experts"))
        return f"layer{m.group(1)}_{'ffn' if ffn else 'attn'}"
    if "embed" in n or "wte" in n:
        return "emb"
    return "ln_f"


class LayerSnapshot:
    """Gradient norm and update/weight ratio per module group, with a trend over the last ``window`` snapshots."""

    def __init__(self, model: nn.Module, window: int = 5) -> None:
        self.params = [(param_group(n), p) for n, p in model.named_parameters() if p.requires_grad]
        self.window = window
        self.history: dict[str, deque] = {}
        self._before: list[torch.Tensor] | None = None
        self._grad: dict[str, float] = {}
        self.last: dict[str, dict[str, Any]] = {}

    def before_step(self) -> None:
        """Record gradient norms and the weights, just before the optimizer steps."""
        grads: dict[str, float] = {}
        for g, p in self.params:
            if p.grad is not None:
                grads[g] = grads.get(g, 0.0) + float(p.grad.detach().float().pow(2).sum())
        self._grad = {g: math.sqrt(v) for g, v in grads.items()}
        self._before = [p.detach().clone() for _, p in self.params]

    def after_step(self) -> dict[str, dict[str, Any]]:
        """Update/weight ratio per group for the step just taken; returns the snapshot."""
        if self._before is None:
            return self.last
        upd: dict[str, float] = {}
        wt: dict[str, float] = {}
        for (g, p), before in zip(self.params, self._before):
            upd[g] = upd.get(g, 0.0) + float((p.detach() - before).float().pow(2).sum())
            wt[g] = wt.get(g, 0.0) + float(before.float().pow(2).sum())
        self._before = None
        snap = {}
        for g in upd:
            ratio = math.sqrt(upd[g]) / (math.sqrt(wt[g]) + 1e-12)
            hist = self.history.setdefault(g, deque(maxlen=self.window))
            hist.append(ratio)
            snap[g] = {"grad_norm": self._grad.get(g, 0.0), "update_ratio": ratio, "trend": trend(list(hist))}
        self.last = snap
        return snap


def trend(values: list[float], tol: float = 0.1) -> str:
    """``rising`` / ``falling`` / ``flat``: the least-squares slope over the window relative to its mean.

    >>> trend([1, 2, 3, 4]), trend([4, 3, 2, 1]), trend([1, 1.01, 0.99, 1]), trend([1])
    ('rising', 'falling', 'flat', 'flat')
    """
    n = len(values)
    if n < 3:
        return "flat"
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    slope = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / sum((i - mean_x) ** 2 for i in range(n))
    rel = slope * (n - 1) / (abs(mean_y) + 1e-12)
    return "rising" if rel > tol else "falling" if rel < -tol else "flat"


class MoeCallback(TrainerCallback):
    """Expert-load telemetry, aux-loss-free bias updates and layer snapshots for a Trainer.

    ``bias_gamma > 0`` turns the bias update on (after every optimizer step). ``snapshot`` turns the layer
    snapshot on (taken on logging steps only: it copies the trainable weights). ``monitor`` (a
    :class:`align.monitor.Monitor`) receives every log.
    """

    def __init__(self, model: nn.Module, bias_gamma: float = 0.0, snapshot: bool = True, monitor: Any = None,
                 telemetry: bool = True) -> None:
        self.load = ExpertLoad(model if telemetry else nn.Module())
        self.telemetry = telemetry
        self.gamma = bias_gamma
        self.snap = LayerSnapshot(model) if snapshot else None
        self.monitor = monitor
        self.bias_mean_abs = 0.0
        self.snapshots: list[dict[str, Any]] = []
        self._snap_now = False

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        # DeepSpeed AutoEP swaps the MoE blocks inside deepspeed.initialize, after this callback was made: hook the
        # expert-parallel layers' routers (and snapshot their weights) instead of the replaced modules
        from align.expert_parallel import ep_layers

        if model is not None and ep_layers(model):
            if self.telemetry:
                self.load.remove()
                self.load = ExpertLoad(model)
            if self.snap is not None:
                self.snap = LayerSnapshot(model)

    def _logging_step(self, args: Any, state: Any) -> bool:
        every = args.logging_steps or 0
        return bool(every) and (state.global_step + 1) % every == 0

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._snap_now = self.snap is not None and self._logging_step(args, state)
        if self._snap_now:
            self.snap.before_step()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._snap_now:
            self.snap.after_step()
            self._snap_now = False
        counts = self.load.flush()  # every rank, every optimizer step: the global counts of the step
        if self.gamma > 0:
            self.bias_mean_abs = update_correction_bias(self.load, counts, self.gamma)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is None:
            return
        window = self.load.window()
        if any(s["tokens"] for s in window.values()):
            logs.update(flat_metrics(window))
        if self.gamma > 0:
            logs["moe/bias_mean_abs"] = self.bias_mean_abs
        if self.snap is not None and self.snap.last:
            for g, s in self.snap.last.items():
                logs[f"snapshot/{g}/grad_norm"] = s["grad_norm"]
                logs[f"snapshot/{g}/update_ratio"] = s["update_ratio"]
            self.snapshots.append({"step": state.global_step, **{g: dict(s) for g, s in self.snap.last.items()}})
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update({k: v for k, v in logs.items() if k.startswith(("moe/", "snapshot/"))})
        if self.monitor is not None:
            self.monitor.update(step=state.global_step, logs=dict(logs), expert_load=window,
                                layer_snapshot=self.snap.last if self.snap else {})

    def summary(self) -> dict[str, Any]:
        """``metrics.moe`` for the manifest: whole-stage load per layer, bias size, the last layer snapshot."""
        out: dict[str, Any] = {"layers": self.load.totals()} if self.load.layers else {}
        if self.gamma > 0:
            out["bias_gamma"] = self.gamma
            out["bias_mean_abs"] = self.bias_mean_abs
        if self.snap is not None and self.snap.last:
            out["layer_snapshot"] = self.snap.last
        return out

    def close(self) -> None:
        self.load.remove()

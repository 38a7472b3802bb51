"""Expert parallelism on DeepSpeed AutoEP: what align needs around it.

DeepSpeed 0.19.8's AutoEP (``"expert_parallel": {"enabled": true, "autoep_size": N}`` in the DeepSpeed config) finds
the MoE blocks of Hugging Face models at ``deepspeed.initialize``, builds expert-parallel groups and swaps in a layer
whose experts are split over ``N`` ranks (tokens reach them by all-to-all). This module holds align's side of it:

- ``deepspeed_config`` / ``autoep_preset``: the DeepSpeed config for ``--ep`` (ZeRO-2 or 3), per model family;
  DeepSeek-V4 refused with the reason.
- ``consolidated_state_dict``: ``final/`` in the original Hugging Face layout, experts gathered from their ranks.
- ``patch_output_capture_registry``: a compatibility fix. AutoEP re-targets transformers' router-logit recorders and
  calls ``transformers.utils.output_capturing._CAN_RECORD_REGISTRY.get(key, default)`` with class-name keys;
  transformers 5.24 made that registry's ``get`` a one-argument method keyed by model, so ``deepspeed.initialize``
  raises ``TypeError``. The patched ``get`` answers string keys as a plain dict does (with the default) and defers to
  transformers for models. It is applied only when the installed ``get`` takes no default, and never twice.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import torch

from align.config import ConfigError

logger = logging.getLogger(__name__)


def patch_output_capture_registry() -> bool:
    """Make transformers' ``_CAN_RECORD_REGISTRY.get`` accept ``(key, default)`` as AutoEP calls it; True if patched
    now (False: no such registry, already patched, or an upstream ``get`` that takes a default already)."""
    try:
        from transformers.utils import output_capturing
    except ImportError:
        return False
    registry = getattr(output_capturing, "_CAN_RECORD_REGISTRY", None)
    if registry is None or type(registry) is dict:
        return False
    cls = type(registry)
    original = cls.get
    if getattr(original, "_align_patched", False) or len(inspect.signature(original).parameters) > 2:
        return False

    def get(self: Any, key: Any, default: Any = None) -> Any:
        if isinstance(key, str):  # AutoEP's class-name keys: a plain dict lookup
            return dict.get(self, key, default)
        return original(self, key)

    get._align_patched = True  # type: ignore[attr-defined]
    cls.get = get
    logger.debug("patched %s.get to accept a default (DeepSpeed AutoEP)", cls.__name__)
    return True


# AutoEP's presets by Hugging Face model type (DeepSpeed's preset names).
AUTOEP_PRESETS = {"qwen3_moe": "qwen3_moe", "qwen2_moe": "qwen3_moe", "mixtral": "mixtral",
                  "deepseek_v3": "deepseek_v3", "deepseek_v2": "deepseek_v2"}


class ExpertParallelError(ConfigError):
    """A model or set-up expert parallelism cannot take, named with the reason."""


def model_config(model_dir: str | Path | None, preset: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The transformers config (as a dict with ``model_type``) of a model dir, or of a preset, without weights."""
    if model_dir is not None:
        return json.loads((Path(model_dir) / "config.json").read_text())
    from align.modeling import PRESETS, build_tokenizer

    tok = build_tokenizer()
    config_cls, kwargs = PRESETS[preset](len(tok), tok)
    return {**kwargs, **overrides, "model_type": config_cls.model_type}


def autoep_preset(config: dict[str, Any], where: str) -> str:
    """The AutoEP preset for a model with this ``config`` (its ``model_type``); an ``ExpertParallelError`` naming
    the model (``where``), its type and the layers when AutoEP cannot place its experts."""
    model_type = config.get("model_type")
    if model_type in AUTOEP_PRESETS:
        return AUTOEP_PRESETS[model_type]
    if model_type == "deepseek_v4":
        kinds = config.get("mlp_layer_types") or []
        hashed = [f"layer {i}" for i, t in enumerate(kinds) if t == "hash_moe"]
        learned = [f"layer {i}" for i, t in enumerate(kinds) if t == "moe"]
        raise ExpertParallelError(
            f"{where}: expert parallelism is not available for DeepSeek-V4 (model_type deepseek_v4): its hash-routed "
            f"layers ({', '.join(hashed) or 'none'}) pick experts from a token-id table, not a router AutoEP can swap, "
            f"and its learned-router layers ({', '.join(learned) or 'none'}) score experts with "
            f"{config.get('scoring_func', 'sqrtsoftplus')}, which AutoEP's router (softmax or sigmoid) does not "
            "compute, so a custom AutoEP pattern would train a different model. Train it with ZeRO sharding "
            "(--zero 2 or 3 without --ep)")
    raise ExpertParallelError(f"{where}: no AutoEP preset for model_type {model_type!r} (presets: "
                              f"{', '.join(sorted(AUTOEP_PRESETS))}); train it with ZeRO sharding (no --ep)")


def deepspeed_config(base: dict[str, Any], ep: int, preset: str) -> dict[str, Any]:
    """``base`` (a ZeRO config) with AutoEP on: experts split over ``ep`` ranks, ZeRO over the rest.

    The optimizer is DeepSpeed's (torch's AdamW, hyper-parameters ``auto`` = the trainer's): ZeRO needs the expert
    weights in optimizer groups of their own (reduced over the expert-data-parallel group, not all ranks), and only an
    optimizer DeepSpeed builds itself gets them; one the trainer built beforehand fails at initialize ("None of the
    param groups are marked as MoE"). The trainer's learning-rate schedule still drives it."""
    optimizer = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto",
                                             "torch_adam": True}}
    zero = dict(base.get("zero_optimization", {}))
    if zero.get("stage") == 3:
        # DeepSpeed refuses its whole-model 16-bit gather for AutoEP experts (they are partitioned over expert-replica
        # groups, not all ranks); checkpoints then hold DeepSpeed's own files only, and final/ is gathered by
        # consolidated_state_dict
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {**base, "zero_optimization": zero, "optimizer": optimizer,
            "expert_parallel": {"enabled": True, "autoep_size": ep, "preset_model": preset}}


def is_ep_layer(module: Any) -> bool:
    """True for an AutoEP-replaced MoE block."""
    try:
        from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer
    except ImportError:
        return False
    return isinstance(module, AutoEPMoELayer)


def ep_layers(model: Any) -> dict[str, Any]:
    """name -> AutoEP layer of every expert-parallel MoE block of ``model``."""
    return {name: m for name, m in model.named_modules() if is_ep_layer(m)}


def consolidated_state_dict(model: Any, preset: str) -> dict[str, torch.Tensor]:
    """The model's weights in the original Hugging Face layout, every expert included (a collective: every rank calls
    it; all ranks get the whole dict). Each AutoEP layer's local experts are gathered over its expert-parallel group
    and stacked in global expert order; its grouped tensors go back to the fused HF ones (``gate_up_proj`` = gate
    rows then up rows, ``down_proj``); the router's gate and the shared experts return to the names the preset reads
    them from. Everything else is the module's own (gathered first under ZeRO-3)."""
    from deepspeed.module_inject.auto_ep_presets.registry import PRESET_MODELS

    spec = PRESET_MODELS[preset]
    layers = ep_layers(model)
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if partitioned:  # ZeRO-3: every rank gathers each parameter over its own partition group (experts: over their
        # expert-data-parallel group, so each rank then holds its own experts whole), then the EP gather below
        import deepspeed

        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
            return _consolidate(model, layers, spec)
    return _consolidate(model, layers, spec)


def _consolidate(model: Any, layers: dict[str, Any], spec: Any) -> dict[str, torch.Tensor]:
    import torch.distributed as dist

    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        owner = next((p for p in layers if name.startswith(p + ".")), None)
        if owner is None:
            out[name] = tensor.detach().cpu()
            continue
        rest = name[len(owner) + 1:]
        if rest.startswith("router.gate."):  # TokenChoiceTopKRouter's Linear -> the preset's router module
            out[f"{owner}.{spec.router_pattern}.{rest[len('router.gate.'):]}"] = tensor.detach().cpu()
        elif rest.startswith("router."):  # router buffers (e_score_correction_bias) live on the HF router too
            out[f"{owner}.{spec.router_pattern}.{rest[len('router.'):]}"] = tensor.detach().cpu()
        elif rest.startswith("shared_experts_gate."):
            out[f"{owner}.{spec.shared_experts_gate_pattern}.{rest[len('shared_experts_gate.'):]}"] = tensor.detach().cpu()
        elif rest.startswith("shared_experts."):
            out[f"{owner}.{spec.shared_experts_pattern}.{rest[len('shared_experts.'):]}"] = tensor.detach().cpu()
        # experts.* are gathered below; anything else (the router alias under the preset's name) is a duplicate
    for owner, layer in layers.items():
        group, world = layer.ep_group, dist.get_world_size(layer.ep_group)
        full = {}
        for w in ("w1", "w2", "w3"):
            local = getattr(layer.experts, w).detach().contiguous()  # [E_local, ...]
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local, group=group)
            ranks = [None] * world
            dist.all_gather_object(ranks, layer.ep_rank, group=group)
            full[w] = torch.cat([parts[i] for i in sorted(range(world), key=lambda i: ranks[i])]).cpu()  # [E, ...]
        experts = f"{owner}.{spec.experts_pattern}"
        if spec.expert_storage != "fused_3d" or spec.expert_w3 is not None:
            raise ExpertParallelError(f"{owner}: consolidating {spec.expert_storage} experts with a separate w3 is not "
                                      "supported; only fused gate_up_proj / down_proj experts")
        out[f"{experts}.{spec.expert_w1}"] = torch.cat([full["w1"], full["w3"]], dim=1)  # [E, 2I, H]: gate, then up
        out[f"{experts}.{spec.expert_w2}"] = full["w2"]  # [E, H, I]
    return out


def ep_report(model: Any, preset: str) -> dict[str, Any]:
    """What the manifest says about an expert-parallel model: the preset, which layers are expert-parallel, and the
    routed-expert bytes this rank holds against the whole model's (a collective over the first layer's group)."""
    layers = ep_layers(model)
    local = sum(p.numel() * p.element_size() for layer in layers.values() for p in layer.experts.parameters())
    ep = next(iter(layers.values())).ep_size if layers else 1
    return {"preset": preset, "ep": ep, "layers": sorted(layers), "expert_bytes_this_rank": local,
            "expert_bytes_whole": local * ep, "expert_share_this_rank": 1 / ep}

"""Expert parallelism on DeepSpeed AutoEP: what align needs around it.

DeepSpeed 0.19.8's AutoEP (``"expert_parallel": {"enabled": true, "autoep_size": N}`` in the DeepSpeed config) finds
the MoE blocks of Hugging Face models at ``deepspeed.initialize``, builds expert-parallel groups and swaps in a layer
whose experts are split over ``N`` ranks (tokens reach them by all-to-all). This module holds align's side of it:

- ``deepspeed_config`` / ``autoep_preset``: the DeepSpeed config for ``--ep`` (ZeRO-2 or 3), per model family.
- ``install_autoep`` (called before ``deepspeed.initialize``): an AutoEP preset of our own for DeepSeek-V4 (AutoEP
  0.19.8 has none). Its learned-router layers become expert-parallel; its hash-routed layers (experts picked by a
  token-id table, not a router) stay ordinary modules under ZeRO, excluded by the layer pattern ``deepspeed_config``
  writes. Two things AutoEP's layer does not do are added to the layers it builds for the preset: DeepSeek-V4's
  ``sqrtsoftplus`` expert scores (``sqrt(softplus(logits))``; AutoEP computes softmax or sigmoid) and the
  ``input_ids`` argument every DeepSeek-V4 decoder layer passes to its MoE block. Everything else maps onto AutoEP's
  own options: top-k on scores plus ``e_score_correction_bias``, weights renormalised over the chosen k
  (``norm_topk_prob``) times ``routed_scaling_factor``, clamped SwiGLU experts (``swiglu_clamped``), one shared expert
  added unweighted. It also keeps DeepSeek-V3's and V4's router logits recorded for the aux loss after the swap.
- ``consolidated_state_dict``: ``final/`` in the original Hugging Face layout, experts gathered from their ranks.
- ``patch_output_capture_registry``: a compatibility fix. AutoEP re-targets transformers' router-logit recorders and
  calls ``transformers.utils.output_capturing._CAN_RECORD_REGISTRY.get(key, default)`` with class-name keys;
  transformers 5.24 made that registry's ``get`` a one-argument method keyed by model, so ``deepspeed.initialize``
  raises ``TypeError``. The patched ``get`` answers string keys as a plain dict does (with the default) and defers to
  transformers for models. It is applied only when the installed ``get`` takes no default, and never twice.
"""

from __future__ import annotations

import functools
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
        scoring = config.get("scoring_func", "sqrtsoftplus")
        if scoring not in _V4_SCORES:
            raise ExpertParallelError(f"{where}: DeepSeek-V4 with scoring_func {scoring!r}: the expert-parallel layer "
                                      f"scores experts with one of {', '.join(sorted(_V4_SCORES))}")
        if not learned_layers(config):
            raise ExpertParallelError(
                f"{where}: every MoE layer of this DeepSeek-V4 model is hash-routed ({', '.join(hash_layers(config))}):"
                " experts picked by a token-id table have no router for AutoEP to replace, so no layer would be expert-"
                "parallel. Train it with ZeRO sharding (--zero 2 or 3 without --ep)")
        return DEEPSEEK_V4
    raise ExpertParallelError(f"{where}: no AutoEP preset for model_type {model_type!r} (presets: "
                              f"{', '.join(sorted(AUTOEP_PRESETS))}); train it with ZeRO sharding (no --ep)")


def hash_layers(config: dict[str, Any]) -> list[str]:
    """The hash-routed MoE blocks of a DeepSeek-V4 config (``model.layers.N.mlp``)."""
    return [f"model.layers.{i}.mlp" for i, t in enumerate(config.get("mlp_layer_types") or []) if t == "hash_moe"]


def learned_layers(config: dict[str, Any]) -> list[str]:
    """The learned-router MoE blocks of a DeepSeek-V4 config: the ones AutoEP makes expert-parallel."""
    return [f"model.layers.{i}.mlp" for i, t in enumerate(config.get("mlp_layer_types") or []) if t == "moe"]


DEEPSEEK_V4 = "align_deepseek_v4"  # our AutoEP preset's name (install_autoep)
# DeepSeek-V4's scoring functions (transformers' ACT2FN names) the expert-parallel router computes
_V4_SCORES = {"sqrtsoftplus": lambda logits: torch.sqrt(torch.nn.functional.softplus(logits)),
              "sigmoid": torch.sigmoid}


def install_autoep() -> None:
    """Everything align adds to AutoEP, in every process before ``deepspeed.initialize``: the transformers registry fix
    (``patch_output_capture_registry``), the ``align_deepseek_v4`` preset and router-logit recording for DeepSeek-V3.
    Each is applied once."""
    patch_output_capture_registry()
    try:
        from deepspeed.module_inject.auto_ep import AutoEP
        from deepspeed.module_inject.auto_ep_presets import registry
        from deepspeed.module_inject.auto_ep_presets.base import MoEModelPreset, TransformersTopLevelRouterLogitsAdapter
        from deepspeed.module_inject.auto_ep_presets.deepseek_v3 import DeepSeekV3PresetAdapter
    except ImportError:
        return
    if DEEPSEEK_V4 in registry.PRESET_MODELS:
        return

    # DeepSeek-V3/V4 record their router logits (for TRL's aux loss) from their own router classes, which the swap
    # removes, and AutoEP's DeepSeek-V3 adapter does not move the recorder: TRL then finds no logits and fails
    # ("tuple index out of range" in load_balancing_loss_func). Record them from the expert-parallel router's gate
    # instead, raw logits as before — what AutoEP's Qwen3-MoE / Mixtral adapter does — keeping V3's group routing.
    class DeepSeekV3Adapter(TransformersTopLevelRouterLogitsAdapter, DeepSeekV3PresetAdapter):
        pass

    registry._PRESET_ADAPTERS["deepseek_v3"] = DeepSeekV3Adapter(
        display_name="DeepSeek-V3", hf_model_types=("deepseek_v3",), class_name_fragments=("DeepseekV3",))
    registry._PRESET_ADAPTERS[DEEPSEEK_V4] = TransformersTopLevelRouterLogitsAdapter(
        display_name="DeepSeek-V4", hf_model_types=("deepseek_v4",), class_name_fragments=("DeepseekV4",))
    registry.PRESET_MODELS[DEEPSEEK_V4] = MoEModelPreset(
        moe_layer_pattern=r"model\.layers\.\d+\.mlp",  # narrowed to the learned layers by deepspeed_config
        router_pattern="gate", experts_pattern="experts", expert_storage="fused_3d", expert_w1="gate_up_proj",
        expert_w2="down_proj", expert_w3=None, num_experts_attr="n_routed_experts", top_k_attr="num_experts_per_tok",
        score_func="sigmoid",  # a placeholder AutoEP's validation accepts; _adapt_v4_layer puts the model's own in
        score_apply="post", route_norm=True, gate_bias=False, has_shared_experts=True,
        shared_experts_pattern="shared_experts", expert_activation="swiglu_clamped",
        autoep_config_defaults={"load_balance_coeff": None}, supports_expert_bias=False,
        hf_model_types=("deepseek_v4",), preset_adapter=DEEPSEEK_V4)
    original = AutoEP.replace_moe_layers

    def replace_moe_layers(self: Any, specs: list[Any], *args: Any, **kwargs: Any) -> Any:
        out = original(self, specs, *args, **kwargs)
        for spec in specs:
            if spec.model_family == DEEPSEEK_V4:
                _adapt_v4_layer(self.model.get_submodule(spec.moe_module_name), self.model.config)
        return out

    AutoEP.replace_moe_layers = replace_moe_layers
    logger.debug("registered the %s AutoEP preset", DEEPSEEK_V4)


def _adapt_v4_layer(layer: Any, model_config: Any) -> None:
    """Give an AutoEP layer built for DeepSeek-V4 the model's expert scores and its ``input_ids`` argument (by class:
    the layer's own state, groups and placement stay as AutoEP built them)."""
    layer_cls, router_cls = _v4_classes(getattr(model_config, "scoring_func", "sqrtsoftplus"))
    layer.router.__class__ = router_cls
    layer.__class__ = layer_cls


@functools.cache
def _v4_classes(scoring: str) -> tuple[type, type]:
    from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer
    from deepspeed.moe.ep_count import count_tokens_per_expert
    from deepspeed.moe.ep_router import TokenChoiceTopKRouter

    score_fn = _V4_SCORES[scoring]

    class DeepseekV4Router(TokenChoiceTopKRouter):
        """AutoEP's top-k router with DeepSeek-V4's ``DeepseekV4TopKRouter`` scores: experts chosen by top-k of
        ``score(logits) + e_score_correction_bias``, weighted by their unbiased scores renormalised over the k, times
        ``routed_scaling_factor``. Returns what AutoEP's router returns: (weights [T, k], experts [T, k], counts [E])."""

        def forward(self, x: torch.Tensor, expert_bias: torch.Tensor | None = None) -> tuple:
            scores = score_fn(self.gate(x).float())  # [T, E], in fp32 as AutoEP does
            choice = scores if self.e_score_correction_bias is None else scores + self.e_score_correction_bias
            selected = torch.topk(choice, k=self.top_k, dim=-1, sorted=False).indices  # [T, k]
            top = scores.gather(1, selected)
            if self.route_norm:
                top = top / (top.sum(dim=-1, keepdim=True) + 1e-20)
            return top * self.route_scale, selected, count_tokens_per_expert(selected, self.num_experts)

    class DeepseekV4EPLayer(AutoEPMoELayer):
        """AutoEP's layer taking the ``input_ids`` DeepSeek-V4's decoder layers pass (only hash layers read it)."""

        def forward(self, hidden_states: torch.Tensor, input_ids: torch.Tensor | None = None) -> Any:
            return super().forward(hidden_states)

    return DeepseekV4EPLayer, DeepseekV4Router


def deepspeed_config(base: dict[str, Any], ep: int, preset: str, model: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a ZeRO config) with AutoEP on: experts split over ``ep`` ranks, ZeRO over the rest; ``model`` is the
    model's config (``model_config``), which decides DeepSeek-V4's expert-parallel layers.

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
    block = {"enabled": True, "autoep_size": ep, "preset_model": preset}
    if preset == DEEPSEEK_V4:  # only the learned-router layers: hash-routed blocks stay ordinary (ZeRO-sharded) modules
        block["moe_layer_pattern"] = "|".join(name.replace(".", r"\.") for name in learned_layers(model))
    return {**base, "zero_optimization": zero, "optimizer": optimizer, "expert_parallel": block}


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
    """What the manifest says about an expert-parallel model: the preset, which layers are expert-parallel and which
    MoE layers stay on ZeRO sharding (DeepSeek-V4's hash-routed ones), and the routed-expert bytes this rank holds
    against the whole model's, for the expert-parallel layers and for every MoE layer (a ZeRO-3 partition counts as
    the rank's share; under ZeRO-2 the other layers' experts are whole on every rank)."""
    from align.moe import find_moe_blocks

    layers = ep_layers(model)
    local = sum(p.numel() * p.element_size() for layer in layers.values() for p in layer.experts.parameters())
    ep = next(iter(layers.values())).ep_size if layers else 1
    others = {name: block for name, block in find_moe_blocks(model) if name not in layers}
    other_local = other_whole = 0
    for block in others.values():
        for p in block.experts.parameters():
            whole = getattr(p, "ds_numel", p.numel())
            part = p.ds_tensor.numel() if hasattr(p, "ds_tensor") else whole  # ZeRO-3: this rank's partition
            other_local += part * p.element_size()
            other_whole += whole * p.element_size()
    return {"preset": preset, "ep": ep, "layers": sorted(layers), "expert_bytes_this_rank": local,
            "expert_bytes_whole": local * ep, "expert_share_this_rank": 1 / ep,
            "zero_layers": sorted(others),
            "all_expert_bytes_this_rank": local + other_local, "all_expert_bytes_whole": local * ep + other_whole}

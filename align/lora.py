"""LoRA: adapter targets found structurally (attention, dense MLP, router, experts), and wrapping a model.

Adapters are merged into plain weights at finalize (``align.checkpoint``), so every stage still writes a plain
Hugging Face model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


def lora_targets(model: torch.nn.Module, groups: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(target_modules, target_parameters) for peft, found structurally.

    attention: ``nn.Linear`` children of ``*attn*`` modules; mlp: dense/shared-expert linears; router: the ``gate`` /
    ``router`` weight of each MoE block; experts: the fused 3-D expert parameters (peft ``target_parameters``) or the
    per-expert linears of a ``ModuleList`` MoE.
    """
    from align.moe import ROUTER_NAMES, find_moe_blocks, router_of

    # Full dotted names, not leaf names: peft matches target_modules by suffix, so a leaf name like "kv_proj" would
    # also catch DeepSeek-V4's compressor.kv_proj.
    modules: set[str] = set()
    params: set[str] = set()
    blocks = dict(find_moe_blocks(model))
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or type(module) is not torch.nn.Linear:
            continue  # subclasses (e.g. grouped projections) have their own forward peft cannot wrap
        leaf = name.rsplit(".", 1)[-1]
        if "attention" in groups and ".self_attn." in name and ".compressor." not in name:
            modules.add(name)
        if "mlp" in groups and (".shared_expert" in name or (".mlp." in name and ".experts" not in name and leaf not in ROUTER_NAMES)):
            modules.add(name)
        if "experts" in groups and ".experts." in name:
            modules.add(name)
    for bname, block in blocks.items():
        router_name, router = router_of(block)
        if "router" in groups:
            if type(router) is torch.nn.Linear:
                modules.add(f"{bname}.{router_name}")
            elif isinstance(getattr(router, "weight", None), torch.nn.Parameter):
                params.add(f"{bname}.{router_name}.weight")
        if "experts" in groups:
            for pname, p in block.experts.named_parameters(recurse=False):
                if p.dim() == 3:
                    params.add(f"{bname}.experts.{pname}")
    return sorted(modules), sorted(params)


def wrap_lora(model: torch.nn.Module, lora: Any) -> torch.nn.Module:
    """Add LoRA adapters on the configured groups; everything else is frozen."""
    from peft import LoraConfig, get_peft_model

    modules, params = lora_targets(model, lora.targets)
    if not modules and not params:
        raise ValueError(f"lora.targets {list(lora.targets)}: no matching modules in {type(model).__name__}")
    cfg = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=modules or None,
        target_parameters=params or None, task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, cfg)
    from align.distributed import zero_stage

    if zero_stage() == 3 and params:
        from align.moe import zero3_adapter_params

        zero3_adapter_params(peft_model)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    logger.info("LoRA on %d modules and %d parameters: %d trainable parameters", len(modules), len(params), trainable)
    return peft_model

"""Everything MoE-specific, in one place: finding sparse blocks, parameter counts, router policy, config fixes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)


ROUTER_NAMES = ("gate", "router")
"""Child names a sparse MoE block's router goes by (DeepSeek/Qwen/Mixtral: ``gate``; others: ``router``)."""


def router_of(block: nn.Module) -> tuple[str, nn.Module]:
    """The router of an MoE block: ``(child name, module)``. The one place that knows what a router is called."""
    for name in ROUTER_NAMES:
        router = getattr(block, name, None)
        if isinstance(router, nn.Module):
            return name, router
    raise ValueError(f"{type(block).__name__} has no router child ({' or '.join(ROUTER_NAMES)})")


def find_moe_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Sparse MoE blocks found structurally: a module holding a router (``ROUTER_NAMES``) and ``experts``."""
    blocks = []
    for name, module in model.named_modules():
        children = dict(module.named_children())
        if "experts" in children and any(r in children for r in ROUTER_NAMES):
            blocks.append((name, module))
    return blocks


def mark_zero3_leaves(model: nn.Module) -> list[str]:
    """Make every sparse MoE block class of ``model`` a DeepSpeed ZeRO-3 *leaf module*; returns the class names.

    ZeRO-3 gathers a module's partitioned parameters in hooks that fire when the module runs. Inside an MoE block
    only the experts a rank's tokens chose run, so the ranks gather different experts and wait on collectives the
    others never join (a hang, or a "tracing error" when LoRA wraps DeepSeek-V4's experts). A leaf
    module is gathered whole when the block starts. The flag (``_z3_leaf``, what DeepSpeed's ``set_z3_leaf_modules``
    sets on instances) is set on the *class*, so models built later from the same classes (TRL's reference model,
    a reload) are leaves too; it changes nothing outside ZeRO-3.
    """
    classes = {type(block) for _, block in find_moe_blocks(model)}
    for cls in classes:
        cls._z3_leaf = True
    names = sorted(c.__name__ for c in classes)
    if names:
        logger.info("ZeRO-3 leaf modules: %s", ", ".join(names))
    return names


def zero3_adapter_params(model: nn.Module) -> int:
    """ZeRO-3 bookkeeping for LoRA on *parameters* (peft ``target_parameters``: fused experts, DeepSeek routers).

    Such a wrapper builds ``W + B @ A`` from tensors that belong to other modules (its ``lora_A``/``lora_B`` and the
    wrapped layer's weight), never by calling them, so ZeRO-3's per-module hooks would not gather them ("tracing
    error"). Each is registered as an external parameter of its wrapper (gathered when the wrapper runs). The MoE
    block holding such a wrapper is taken off the leaf list again (on the instance): a leaf block reduces its
    parameters' gradients when the gradient of its *input* is ready, but autograd accumulates the adapters'
    gradients only at the very end of the backward pass, so DeepSpeed would reduce zeros and then fail on the real
    gradient. Without the leaf flag every adapter gradient is reduced by its own hook when it arrives; fused-expert
    blocks run every child on every rank, so they need no leaf flag to keep the ranks in step. Returns how many
    parameters were registered.
    """
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter

    n = 0
    wrapper_blocks = set()
    blocks = find_moe_blocks(model)
    for name, module in model.named_modules():
        if not (hasattr(module, "parameter_name") and hasattr(module, "lora_A")):  # peft's ParamWrapper
            continue
        for p in module.parameters():
            register_external_parameter(module, p)
            n += 1
        wrapper_blocks.update(id(b) for bname, b in blocks if name.startswith(bname + "."))
    for _, block in blocks:
        if id(block) in wrapper_blocks:
            block._z3_leaf = False
    if n:
        logger.info("ZeRO-3: %d LoRA-on-parameter tensors registered with their wrappers; %d MoE blocks gather "
                    "per module instead of as leaves", n, len(wrapper_blocks))
    return n


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, active per token). Routed experts count ``top_k / n_experts`` of their parameters as active."""
    total = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    top_k = getattr(config, "num_experts_per_tok", None)
    inactive = 0
    for _, block in find_moe_blocks(model):
        experts = block.experts
        n = getattr(experts, "num_experts", None) or (len(experts) if isinstance(experts, nn.ModuleList) else None)
        if not n or not top_k:
            continue
        expert_params = sum(p.numel() for p in experts.parameters())
        inactive += expert_params - expert_params * top_k // n
    return total, total - inactive


def init_hash_routing(model: nn.Module, seed: int) -> int:
    """Fill DeepSeek-V4 hash routers' ``tid2eid`` with distinct random experts per token.

    transformers zero-initialises the table ("real values come from the checkpoint"), so a model built from a config
    sends every token of a hash layer to expert 0 twice. Returns how many tables were filled.
    """
    gen = torch.Generator().manual_seed(seed + 7919)
    filled = 0
    for _, module in model.named_modules():
        table = getattr(module, "tid2eid", None)
        if not isinstance(table, torch.Tensor):
            continue
        vocab, top_k = table.shape
        n_experts = module.num_experts
        # [vocab, n_experts] random keys -> top_k distinct experts per token id
        choice = torch.rand(vocab, n_experts, generator=gen).argsort(dim=-1)[:, :top_k]
        with torch.no_grad():
            table.copy_(choice.to(table.dtype))
        filled += 1
    return filled


def fix_config(model: nn.Module) -> None:
    """Config aliases TRL needs: its MoE aux loss reads ``config.num_experts``, which DeepSeek-V3/V4 name
    ``n_routed_experts`` (without it: "'DeepseekV4Config' object has no attribute 'num_experts'")."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if not hasattr(config, "num_experts"):
        for alias in ("n_routed_experts", "num_local_experts"):
            if getattr(config, alias, None):
                config.num_experts = getattr(config, alias)
                break


def is_moe(model: nn.Module) -> bool:
    """True when the model has at least one sparse MoE block."""
    return bool(find_moe_blocks(model))


def apply_router_policy(model: nn.Module, aux_loss_coef: float | None) -> float:
    """Set the aux-loss coefficient on the config *and* the model (DeepSeek-V4 copies it at init). Returns the
    effective coefficient (0 when the model has no router aux loss)."""
    config = model.config
    if not hasattr(config, "output_router_logits"):
        return 0.0
    coef = getattr(config, "router_aux_loss_coef", None) if aux_loss_coef is None else aux_loss_coef
    coef = float(coef or 0.0)
    config.router_aux_loss_coef = coef
    config.output_router_logits = coef > 0
    for module in model.modules():
        if hasattr(module, "router_aux_loss_coef"):
            module.router_aux_loss_coef = coef
    return coef


def freeze_routers(model: nn.Module) -> int:
    """Stop gradients to every MoE block's router weights; returns how many tensors were frozen."""
    n = 0
    for _, block in find_moe_blocks(model):
        for p in router_of(block)[1].parameters():
            p.requires_grad_(False)
            n += 1
    return n


@contextlib.contextmanager
def generation_mode(model: nn.Module) -> Iterator[None]:
    """Turn router-logit output off while generating: on a padded batch it crashes inside the load-balancing loss
    (SFTTrainer saves ``output_router_logits=True`` into checkpoints)."""
    configs = [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "output_router_logits")]
    saved = [c.output_router_logits for c in configs]
    for c in configs:
        c.output_router_logits = False
    try:
        yield
    finally:
        for c, s in zip(configs, saved):
            c.output_router_logits = s


def set_top_k(model: nn.Module, top_k: int) -> int:
    """Route every token to ``top_k`` experts (ablation): the config's ``num_experts_per_tok`` and every router's
    ``top_k``; a DeepSeek-V4 hash table keeps its first ``top_k`` columns. Returns how many routers changed."""
    n_experts = getattr(model.config, "num_experts", None) or getattr(model.config, "n_routed_experts", None)
    if n_experts and top_k > n_experts:
        raise ValueError(f"router.top_k {top_k}: the model has only {n_experts} experts")
    model.config.num_experts_per_tok = top_k
    changed = 0
    for _, block in find_moe_blocks(model):
        for module in (block, router_of(block)[1]):
            if hasattr(module, "top_k"):
                module.top_k = top_k
                changed += module is not block
            table = getattr(module, "tid2eid", None)
            if isinstance(table, torch.Tensor) and table.shape[1] != top_k:
                if top_k > table.shape[1]:
                    raise ValueError(f"router.top_k {top_k}: a hash table holds {table.shape[1]} experts per token")
                module.tid2eid = nn.Buffer(table[:, :top_k].clone(), persistent=True)
    return changed

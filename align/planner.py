"""Memory planner: per-GPU bytes of a training stage before anything runs.

    python run_pipeline.py plan --model deepseek-v3 --gpus 64 --zero 3 [--lora] [--seq-len 4096] [--micro-batch 1]

The model is built on the ``meta`` device from its config (a built-in preset, a planning config such as
``deepseek-v3``, a ``config.json`` or a model directory), so a 671B config is counted in a second without memory.

Model states follow DeepSpeed's accounting for bf16 mixed precision with Adam (its
``estimate_zero{2,3}_model_states_mem_needs``): per parameter, 2 bytes of bf16 weight, gradients (ZeRO-2: 2 bytes bf16
+ 4 bytes fp32, partitioned; ZeRO-3: 4 bytes, partitioned) and 12 bytes of fp32 master weight + Adam moments
(partitioned); ZeRO-3 partitions the weights too and adds a buffer of 4 bytes x the largest unit it gathers at once. With MoE leaf modules
(``align.moe.mark_zero3_leaves``) that unit is a whole MoE block, so the planner uses the block, not the largest single
module. Activations and the rollout KV cache are estimates (formula in ``activation_bytes`` / ``kv_cache_bytes``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

GiB = 1024**3

# Configs for planning only (no weights exist here): the published architectures of large MoE models.
PLAN_CONFIGS: dict[str, dict[str, Any]] = {
    "deepseek-v3": dict(  # 671B total / 37B active
        model_type="deepseek_v3", vocab_size=129280, hidden_size=7168, intermediate_size=18432,
        moe_intermediate_size=2048, num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128,
        n_shared_experts=1, n_routed_experts=256, num_experts_per_tok=8, first_k_dense_replace=3, kv_lora_rank=512,
        q_lora_rank=1536, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, n_group=8, topk_group=4,
        max_position_embeddings=163840),
    "qwen3-30b-a3b": dict(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
        num_experts_per_tok=8, max_position_embeddings=40960),
    "mixtral-8x7b": dict(
        model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=32768),
}


@dataclass
class Counts:
    """Parameter counts of one model (elements, not bytes)."""

    total: int
    active: int
    experts: int
    trainable: int
    largest_module: int
    """Largest single module's own parameters (what DeepSpeed's estimator calls the largest layer)."""
    largest_gathered: int
    """Largest unit ZeRO-3 gathers at once with MoE blocks as leaf modules."""
    largest_block: int = 0
    """Parameters of the largest MoE block (router, experts, shared experts)."""
    largest_block_experts: int = 0
    """Routed-expert parameters of that block (what expert parallelism splits across ranks)."""
    moe_layers: int = 0
    largest_dense_module: int = 0
    """Largest single module outside the routed experts (what ZeRO-3 gathers whole under expert parallelism)."""


def load_config(model: str) -> Any:
    """A transformers config from a planning name, a built-in preset, a ``config.json`` or a model directory."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model in PLAN_CONFIGS:
        kwargs = dict(PLAN_CONFIGS[model])
        return CONFIG_MAPPING[kwargs.pop("model_type")](**kwargs)
    from align import modeling

    if model in modeling.PRESETS:
        tok = modeling.build_tokenizer()
        config_cls, kwargs = modeling.PRESETS[model]((len(tok) + 7) // 8 * 8, tok)
        return config_cls(**kwargs)
    path = Path(model)
    if path.is_file():
        model_type = json.loads(path.read_text()).get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"{path}: model_type {model_type!r} is not a transformers model type")
        return CONFIG_MAPPING[model_type].from_json_file(str(path))
    if (path / "config.json").is_file():
        return AutoConfig.from_pretrained(path)
    names = ", ".join([*PLAN_CONFIGS, *modeling.PRESETS])
    raise FileNotFoundError(f"--model {model}: not a known name ({names}), a config.json or a model directory")


def meta_model(config: Any) -> torch.nn.Module:
    """The model on the ``meta`` device: shapes only, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def count(model: torch.nn.Module, lora: Any = None) -> Counts:
    """Parameter counts; with ``lora`` (an ``align.config.LoraConfig``) the trainable count is the adapters'."""
    from align import moe

    total, active = moe.count_parameters(model)
    blocks = moe.find_moe_blocks(model)
    experts = sum(p.numel() for _, b in blocks for p in b.experts.parameters())
    largest_module = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    largest_block = max((sum(p.numel() for p in b.parameters()) for _, b in blocks), default=0)
    trainable = total
    if lora is not None:
        from align.lora import wrap_lora

        peft_model = wrap_lora(model, lora)
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    block_experts = max((sum(p.numel() for p in b.experts.parameters()) for _, b in blocks), default=0)
    expert_modules = {id(m) for _, b in blocks for m in b.experts.modules()}
    largest_dense = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()
                         if id(m) not in expert_modules), default=0)
    return Counts(total, active, experts, trainable, largest_module, max(largest_module, largest_block),
                  largest_block, block_experts, len(blocks), largest_dense)


def model_state_bytes(c: Counts, gpus: int, zero: int, ep: int = 1) -> dict[str, int]:
    """Per-GPU bytes of parameters, gradients, optimizer state and the ZeRO-3 gather buffer (bf16 + Adam).

    ``ep`` > 1 (expert parallelism): each rank owns ``1/ep`` of every MoE layer's routed experts, and ZeRO shards
    those over the expert-data-parallel group (``gpus / ep`` ranks) — so partitioned states per GPU are what full
    sharding gives, while replicated ones (ZeRO-2/DDP weights) shrink by the expert share, and ZeRO-3 never gathers a
    whole block: its largest unit holds ``1/ep`` of the block's experts."""
    if ep > 1 and c.trainable == c.total:
        dense, experts = c.total - c.experts, c.experts
        local = dense + experts // ep  # what one rank holds unsharded
        if zero == 3:
            unit = max(c.largest_dense_module,
                       c.largest_block - c.largest_block_experts + c.largest_block_experts // ep)
            return {"parameters": 2 * c.total // gpus, "gradients": 4 * c.total // gpus,
                    "optimizer": 12 * c.total // gpus, "gather_buffer": 4 * unit}
        if zero == 2:
            return {"parameters": 2 * local, "gradients": 6 * c.total // gpus, "optimizer": 12 * c.total // gpus,
                    "gather_buffer": 0}
        return {"parameters": 4 * local, "gradients": 4 * local, "optimizer": 8 * local, "gather_buffer": 0}
    frozen, t = c.total - c.trainable, c.trainable
    if zero == 3:
        return {"parameters": 2 * c.total // gpus, "gradients": 4 * t // gpus, "optimizer": 12 * t // gpus,
                "gather_buffer": (4 if t == c.total else 2) * c.largest_gathered}  # LoRA: frozen, no gradient
    if zero == 2:  # gradients partitioned too: bf16 + fp32 partitions
        return {"parameters": 2 * (frozen + t), "gradients": 6 * t // gpus, "optimizer": 12 * t // gpus,
                "gather_buffer": 0}
    # plain DDP / ZeRO-0 with bf16 autocast: fp32 weights, fp32 gradients, Adam moments, all replicated
    return {"parameters": 4 * (frozen + t), "gradients": 4 * t, "optimizer": 8 * t, "gather_buffer": 0}


def activation_bytes(config: Any, seq_len: int, micro_batch: int, checkpointing: bool) -> int:
    """Training activations per GPU (bf16), an estimate: per layer and token, ~8 hidden-size tensors around attention
    and the norms (flash/SDPA attention stores no s x s scores) plus the routed experts' and shared experts'
    intermediate tensors (gate, up, product: 3 x intermediate each); fp32 logits once. With activation checkpointing
    only each layer's input is kept, plus one layer recomputed at a time."""
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    h, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    top_k = getattr(c, "num_experts_per_tok", 0) or 0
    inner = getattr(c, "moe_intermediate_size", None) or c.intermediate_size
    shared = (getattr(c, "n_shared_experts", 0) or 0) * inner + (getattr(c, "shared_expert_intermediate_size", 0) or 0)
    per_token_layer = 2 * (8 * h + 3 * (top_k * inner + shared) if top_k else 8 * h + 3 * c.intermediate_size)
    tokens = seq_len * micro_batch
    logits = 4 * tokens * vocab
    if checkpointing:
        return tokens * (2 * h * layers + per_token_layer) + logits
    return tokens * per_token_layer * layers + logits


def kv_cache_bytes(config: Any, tokens: int, sequences: int) -> dict[str, int]:
    """Rollout KV cache (bf16) for ``sequences`` sequences of ``tokens`` tokens. HF generation caches full keys and
    values per layer; for multi-head latent attention (DeepSeek-V2/V3) the compressed latent an inference engine
    (vLLM) caches is reported as well."""
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = c.num_hidden_layers
    if getattr(c, "kv_lora_rank", None):
        k_dim = c.qk_nope_head_dim + c.qk_rope_head_dim
        full = layers * c.num_attention_heads * (k_dim + c.v_head_dim)
        latent = layers * (c.kv_lora_rank + c.qk_rope_head_dim)
        return {"kv_cache": 2 * full * tokens * sequences, "kv_cache_latent": 2 * latent * tokens * sequences}
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return {"kv_cache": 2 * 2 * layers * kv_heads * head_dim * tokens * sequences}


def all_to_all_bytes(config: Any, c: Counts, ep: int, seq_len: int, micro_batch: int) -> int:
    """Bytes one GPU sends by all-to-all per micro-step under expert parallelism: in every MoE layer each of its
    tokens goes to ``top_k`` experts (hidden-size bf16 vectors), ``(ep - 1) / ep`` of them on other ranks, there
    (dispatch) and back (combine), in the forward and again in the backward pass."""
    if ep <= 1 or not c.moe_layers:
        return 0
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    top_k = getattr(cfg, "num_experts_per_tok", 1) or 1
    per_layer = seq_len * micro_batch * top_k * cfg.hidden_size * 2 * (ep - 1) // ep
    return 2 * 2 * per_layer * c.moe_layers


def deepspeed_estimate(c: Counts, gpus: int, zero: int) -> int | None:
    """DeepSpeed's own per-GPU model-state estimate (no offload), for comparison; None for ZeRO-0 or LoRA."""
    if c.trainable != c.total or zero not in (2, 3):
        return None
    if zero == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        return estimate_zero3_model_states_mem_needs(c.total, c.largest_module, num_gpus_per_node=gpus,
                                                     cpu_offload=False)[1]
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    return estimate_zero2_model_states_mem_needs(c.total, num_gpus_per_node=gpus, cpu_offload=False)[1]


def plan(model: str, gpus: int, zero: int, lora: bool = False, seq_len: int = 2048, micro_batch: int = 1,
         checkpointing: bool = True, rollout_tokens: int | None = None, rollout_sequences: int = 8,
         ep: int = 1) -> dict[str, Any]:
    """Everything the ``plan`` command prints, as a dict (bytes per GPU)."""
    if gpus < 1:
        raise ValueError("--gpus must be at least 1")
    if ep < 1 or gpus % ep:
        raise ValueError(f"--ep {ep}: must be at least 1 and divide --gpus {gpus}")
    if ep > 1 and lora:
        raise ValueError("--ep with --lora: the planner counts expert parallelism for full fine-tuning only")
    if zero not in (0, 2, 3):
        raise ValueError(f"--zero {zero}: use 0 (plain DDP), 2 or 3")
    from align.config import LoraConfig

    config = load_config(model)
    counts = count(meta_model(config), LoraConfig() if lora else None)
    states = model_state_bytes(counts, gpus, zero, ep)
    if ep > 1 and counts.experts and counts.experts % ep == 0 and counts.largest_block_experts % ep:
        raise ValueError(f"--ep {ep}: the experts of a block do not split evenly")
    out: dict[str, Any] = {
        "model": model, "gpus": gpus, "zero": zero, "lora": lora, "ep": ep, "counts": asdict(counts),
        "expert_bytes_per_gpu": expert_bytes(counts, gpus, zero, ep),
        "all_to_all_per_micro_step": all_to_all_bytes(config, counts, ep, seq_len, micro_batch),
        "model_states": states, "model_states_total": sum(states.values()),
        "activations": activation_bytes(config, seq_len, micro_batch, checkpointing),
        **kv_cache_bytes(config, rollout_tokens or seq_len, rollout_sequences),
        "deepspeed_estimate": deepspeed_estimate(counts, gpus, zero) if ep == 1 else None,
        "settings": {"seq_len": seq_len, "micro_batch": micro_batch, "checkpointing": checkpointing,
                     "rollout_tokens": rollout_tokens or seq_len, "rollout_sequences": rollout_sequences},
    }
    out["training_total"] = out["model_states_total"] + out["activations"]
    out["grpo_total"] = out["training_total"] + out["kv_cache"]
    return out


def expert_bytes(c: Counts, gpus: int, zero: int, ep: int = 1) -> int:
    """Model-state bytes per GPU that belong to routed experts (bf16 weights, gradients, fp32 master + Adam)."""
    e = c.experts if c.trainable == c.total else 0
    if zero == 3:
        return 18 * e // gpus
    if zero == 2:
        return 2 * e // ep + 16 * e // gpus
    return 16 * e // ep


def format_plan(p: dict[str, Any]) -> str:
    """The table ``run_pipeline.py plan`` prints."""
    c, s = p["counts"], p["settings"]

    def g(x: float) -> str:
        for unit, size in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if x >= size or unit == "KiB":
                return f"{x / size:10.2f} {unit}"
        return ""

    def n(x: float) -> str:
        return f"{x / 1e9:.3f}B" if x >= 1e8 else f"{x / 1e6:.3f}M"

    zero = {0: "plain DDP", 2: "ZeRO-2", 3: "ZeRO-3"}[p["zero"]] + (
        f" + expert parallelism {p['ep']}" if p.get("ep", 1) > 1 else "")
    lines = [
        f"{p['model']}: {n(c['total'])} parameters ({n(c['active'])} active per token, "
        f"{n(c['experts'])} in routed experts); trainable {n(c['trainable'])}"
        + (" (LoRA)" if p["lora"] else ""),
        f"per GPU, {p['gpus']} GPUs, {zero}, bf16 + Adam:",
        f"  parameters        {g(p['model_states']['parameters'])}",
        f"  gradients         {g(p['model_states']['gradients'])}",
        f"  optimizer state   {g(p['model_states']['optimizer'])}",
    ]
    if p["zero"] == 3:
        unit = p["model_states"]["gather_buffer"] // 4 if p.get("ep", 1) > 1 else c["largest_gathered"]
        lines.append(f"  gather buffer     {g(p['model_states']['gather_buffer'])}   (largest gathered unit: "
                     f"{n(unit)} parameters)")
    lines.append(f"  model states      {g(p['model_states_total'])}   (routed experts: "
                 f"{g(p['expert_bytes_per_gpu']).strip()})")
    if p.get("ep", 1) > 1:
        lines.append(f"  all-to-all        {g(p['all_to_all_per_micro_step'])}   sent per GPU per micro-step (dispatch + "
                     "combine, forward + backward)")
    if p["deepspeed_estimate"] is not None:
        ratio = p["model_states_total"] / p["deepspeed_estimate"]
        lines.append(f"  (DeepSpeed's estimator: {g(p['deepspeed_estimate']).strip()}; ours / theirs {ratio:.3f})")
    lines += [
        f"  activations       {g(p['activations'])}   (seq {s['seq_len']} x micro-batch {s['micro_batch']}, "
        f"checkpointing {'on' if s['checkpointing'] else 'off'})",
        f"  training total    {g(p['training_total'])}",
        f"  rollout KV cache  {g(p['kv_cache'])}   ({s['rollout_sequences']} sequences x {s['rollout_tokens']} tokens,"
        " HF generation)",
    ]
    if "kv_cache_latent" in p:
        lines.append(f"  (MLA latent cache, as vLLM keeps it: {g(p['kv_cache_latent']).strip()})")
    lines.append(f"  GRPO total        {g(p['grpo_total'])}")
    return "\n".join(lines)

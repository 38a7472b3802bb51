"""Run on 2 processes (torchrun): a model under DeepSpeed ZeRO-3, then align's start-up self-test.

    python -m torch.distributed.run --nproc_per_node 2 tests/align/zero3_leaf_check.py MODEL [--no-leaf]

MODEL is ``modulelist`` (a per-expert ``nn.ModuleList`` MoE, the pre-v5 transformers layout that only runs the
experts a rank's tokens chose) or a preset name (``tiny-deepseek-v4``, ``tiny-qwen3-moe``, ``tiny-mixtral``).
Exit 0 when the self-test passes; the self-test's own exit status or a traceback otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging

import torch
from torch import nn


class ExpertMLP(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class ModuleListMoeBlock(nn.Module):
    """Top-k routed experts, one module each, run only for the tokens that chose them."""

    def __init__(self, hidden: int, inner: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, n_experts, bias=False)
        self.experts = nn.ModuleList(ExpertMLP(hidden, inner) for _ in range(n_experts))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        weights, chosen = self.gate(x).softmax(-1).topk(self.top_k, dim=-1)
        out = torch.zeros_like(x)
        for e in chosen.unique().tolist():
            token, slot = torch.where(chosen == e)
            out.index_add_(0, token, self.experts[e](x[token]) * weights[token, slot, None])
        return out.reshape(shape)


def modulelist_model(seed: int = 0) -> nn.Module:
    """A tiny Qwen3-MoE whose sparse blocks are replaced by ``ModuleListMoeBlock``s (8 experts, top-2)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    config = Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                            num_experts=8, num_experts_per_tok=2, max_position_embeddings=64)
    model = Qwen3MoeForCausalLM(config)
    for layer in model.model.layers:
        layer.mlp = ModuleListMoeBlock(32, 32, 8, 2)
    return model


def preset_model(preset: str, out_dir: str, seed: int = 0) -> nn.Module:
    """A preset built by rank 0 into ``out_dir``, loaded by every rank."""
    from align import distributed, modeling

    if distributed.is_main_process():
        modeling.build_base(preset, {}, seed, out_dir)
    distributed.barrier()
    model, _ = modeling.load_model(out_dir)
    return model


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--model-dir", default="/tmp/align_zero3_leaf_check", help="where rank 0 builds a preset")
    p.add_argument("--lora", action="store_true", help="LoRA adapters on the experts and the router first")
    p.add_argument("--no-leaf", action="store_true", help="skip align.moe.mark_zero3_leaves")
    p.add_argument("--no-adapter-fix", action="store_true", help="with --lora: skip align.moe.zero3_adapter_params")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--skip-self-test", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import deepspeed

    from align import distributed, moe

    distributed.init_distributed()
    model = modulelist_model() if args.model == "modulelist" else preset_model(args.model, args.model_dir)
    if not args.no_leaf:
        moe.mark_zero3_leaves(model)
    if args.lora:
        from align.config import LoraConfig
        from align.lora import wrap_lora

        model = wrap_lora(  # outside a launch with a ZeRO-3 config, wrap_lora leaves ZeRO-3 bookkeeping to us
            model, LoraConfig(r=4, targets=("experts", "router")))
        if not args.no_adapter_fix:
            moe.zero3_adapter_params(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config={
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        "zero_optimization": {"stage": 3}})
    result = None if args.skip_self_test else distributed.zero3_self_test(engine, timeout_s=args.timeout)
    # three real optimizer steps afterwards: their losses must not depend on whether the self-test ran
    gen = torch.Generator().manual_seed(5 + torch.distributed.get_rank())
    losses = []
    for _ in range(3):
        ids = torch.randint(0, model.config.vocab_size, (2, 8), generator=gen)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    if distributed.is_main_process():
        print("SELF-TEST " + json.dumps(result))
        print("LOSSES " + json.dumps(losses))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    from align.distributed import exit_process

    exit_process(main())

"""Backbones and tokenizers: build a tiny MoE from a preset, or load any local Hugging Face MoE checkpoint.

Nothing is downloaded: presets are transformers configs built here, and the tokenizer is a character-level
tokenizer over printable ASCII built locally and saved with the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from align import moe

logger = logging.getLogger(__name__)

# Role markers are special tokens; <think>/</think> are *ordinary* added tokens, because TRL decodes completions
# with skip_special_tokens=True and reward functions must still see the think tags.
PAD, UNK, EOS = "<pad>", "<unk>", "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
THINK_TOKENS = ("<think>", "</think>")
# The end-of-turn token sits inside {% generation %} so assistant-only loss teaches the model to stop.
# Thinking modes (align.thinking), DeepSeek-V3.1's convention: enable_thinking=false puts </think> right after the
# assistant marker, outside {% generation %} (it is prompt: never trained on, never sampled); unset or true renders
# as before and the model opens <think> itself. Measured against Qwen3's empty <think></think> (the default SFT stage,
# seed 0, 1,200 steps): 0.997 held-out with </think>, 0.457 with <think></think> (1.000 only after 2,000 steps).
_NO_THINK = "{%- if enable_thinking is defined and enable_thinking is false -%}</think>{%- endif -%}"
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}<|assistant|>" + _NO_THINK + "{% generation %}"
    "{%- if m.get('reasoning_content') -%}<think>{{ m['reasoning_content'] }}</think>{%- endif -%}"
    "{{ m['content'] }}<|end|>{% endgeneration %}"
    "{%- else -%}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>" + _NO_THINK + "{%- endif -%}"
)


# For base models without a template (asked for by name, never applied silently): "role: content" lines, the
# assistant's turn inside {% generation %} with the end-of-sequence token, so assistant-only loss teaches it to stop.
PLAIN_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}assistant: {% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}\n"
    "{%- else -%}{{ m['role'] }}: {{ m['content'] }}\n{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}assistant: {%- endif -%}"
)
# Closed set: built-in chat templates by name (model.chat_template).
CHAT_TEMPLATES: dict[str, str] = {"align": CHAT_TEMPLATE, "plain": PLAIN_TEMPLATE}


def resolve_chat_template(spec: str) -> str:
    """The template text of ``model.chat_template``: a built-in name or a template file."""
    if spec in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(f"model.chat_template {spec!r}: neither a built-in template ({', '.join(CHAT_TEMPLATES)}) "
                         "nor a template file")
    return path.read_text()


def build_tokenizer() -> Any:
    """A character-level tokenizer (printable ASCII + newline) with our chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate([PAD, UNK, EOS, *ROLE_TOKENS, *THINK_TOKENS, *chars])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, unk_token=UNK, eos_token=EOS)
    tok.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS)})
    tok.add_tokens(list(THINK_TOKENS))
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"  # decoder-only batched generation
    return tok


# ------------------------------------------------------------------------------------------------------ presets


def _tiny_deepseek_v4(vocab_size: int, tok: Any) -> tuple[type, dict[str, Any]]:
    from transformers import DeepseekV4Config

    # 3 layers as in the DeepSeek-V4 notes: layer 0 hash-routed MoE, layers 1-2 top-k routed; 8 routed experts top-2
    # plus 1 shared. The last layer uses compressed-sparse attention so the compressor and Lightning Indexer run; the
    # others use sliding-window attention (cheapest; 512 tokens cover the default suites' 400-character contexts).
    # Where the CSA layer sits matters: measured on 3-digit addition traces (400 steps), CSA in layer 0 reached 7 % held-out, all-sliding 52 %,
    # CSA last 96 % — a first layer that only sees compressed blocks cannot do exact digit lookups. hc_mult=2 and 3 Sinkhorn
    # iterations halve the training step vs the V4 defaults (4, 20) at this size (bench/preset_speed.py: 63 vs 131 ms). V4's default rotary
    # fraction (64/512 of head_dim) would leave 4 rotary dims at head_dim 32; half the head gets RoPE instead, which
    # took chain-arithmetic trace loss from 0.89 to 0.59 at 300 steps (position lookups need the rotary dims).
    return DeepseekV4Config, dict(
        vocab_size=vocab_size,
        hidden_size=64,
        moe_intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        q_lora_rank=32,
        partial_rotary_factor=0.5,
        num_experts_per_tok=2,
        n_routed_experts=8,
        n_shared_experts=1,
        layer_types=["sliding_attention", "sliding_attention", "compressed_sparse_attention"],
        mlp_layer_types=["hash_moe", "moe", "moe"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 16},
        hc_mult=2,
        hc_sinkhorn_iters=3,
        # 512, not 128: needle retrieval copies characters from up to ~420 positions back, and only full-resolution
        # attention copies exactly (CSA sees 4-token blocks); below 128 tokens both windows compute the same thing
        sliding_window=512,
        o_groups=2,
        o_lora_rank=32,
        index_n_heads=2,
        index_head_dim=16,
        index_topk=8,
        max_position_embeddings=2048,
        router_aux_loss_coef=0.001,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def _tiny_qwen3_moe(vocab_size: int, tok: Any) -> tuple[type, dict[str, Any]]:
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig, dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=8,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=2048,
        router_aux_loss_coef=0.001,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def _tiny_mixtral(vocab_size: int, tok: Any) -> tuple[type, dict[str, Any]]:
    from transformers import MixtralConfig

    return MixtralConfig, dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=2048,
        router_aux_loss_coef=0.001,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def _tiny_deepseek_v3(vocab_size: int, tok: Any) -> tuple[type, dict[str, Any]]:
    from transformers import DeepseekV3Config

    # DeepSeek-V3's layout at toy size: multi-head latent attention, a dense first layer, then 8 routed experts (top-2,
    # one group) plus a shared expert; transformers 5.24 computes no router aux loss for it.
    return DeepseekV3Config, dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def _tiny_deepseek_v4_dense(vocab_size: int, tok: Any) -> tuple[type, dict[str, Any]]:
    # Ablation baseline: the same model with every token sent to every routed expert (2 experts, top-2, + the shared
    # one), so the FFN is dense and its parameters per token equal the MoE preset's active ones; attention, mHC and
    # the tokenizer are identical.
    cls, kwargs = _tiny_deepseek_v4(vocab_size, tok)
    return cls, {**kwargs, "n_routed_experts": 2}


# Closed set: preset name -> (config class, constructor kwargs) builder.
PRESETS: dict[str, Callable[[int, Any], tuple[type, dict[str, Any]]]] = {
    "tiny-deepseek-v4": _tiny_deepseek_v4,
    "tiny-deepseek-v4-dense": _tiny_deepseek_v4_dense,
    "tiny-qwen3-moe": _tiny_qwen3_moe,
    "tiny-mixtral": _tiny_mixtral,
    "tiny-deepseek-v3": _tiny_deepseek_v3,
}


def preset_signature(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Everything that decides a preset's weights (class, constructor kwargs, tokenizer vocab), for hashing."""
    if preset not in PRESETS:
        raise KeyError(f"unknown model preset {preset!r}; presets: {', '.join(PRESETS)} (or set model.path)")
    tok = build_tokenizer()
    config_cls, kwargs = PRESETS[preset](len(tok), tok)
    return {"class": config_cls.__name__, "kwargs": {**kwargs, **overrides}, "vocab": tok.get_vocab()}


def build_base(preset: str, overrides: dict[str, Any], seed: int, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Build a preset model from scratch (seeded) and save it with its tokenizer as a plain HF dir; ``tokenizer``
    (e.g. a real BPE vocabulary) replaces the embedded character tokenizer."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    if preset not in PRESETS:
        raise KeyError(f"unknown model preset {preset!r}; presets: {', '.join(PRESETS)} (or set model.path)")
    tok = tokenizer if tokenizer is not None else build_tokenizer()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    vocab_size = (len(tok) + 7) // 8 * 8
    config_cls, kwargs = PRESETS[preset](vocab_size, tok)
    known = {f.name for f in dataclasses.fields(config_cls)} if dataclasses.is_dataclass(config_cls) else set()
    for key in overrides:
        if known and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            raise KeyError(f"model.overrides.{key}: {config_cls.__name__} has no such field"
                           + (f"; did you mean {', '.join(close)}?" if close else ""))
    # through the constructor, so derived fields (rope parameters, layer types) follow the overrides
    config = config_cls(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    moe.init_hash_routing(model, seed)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@contextlib.contextmanager
def whole_model_load() -> Iterator[None]:
    """Load a whole model on this rank even while a DeepSpeed ZeRO-3 trainer config is alive in the process.

    transformers partitions every ``from_pretrained`` across ranks (``zero.Init``) once a ZeRO-3 TrainingArguments
    exists; a model loaded by one rank alone (grading, eval) would then wait for the others forever. Stages load
    whole models and let the trainer partition them.
    """
    import transformers.integrations.deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    if config is not None:
        hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            hf_ds.set_hf_deepspeed_config(config)


def load_model(path: str | Path, dtype: torch.dtype = torch.float32,
               chat_template: str | None = None) -> tuple[Any, Any]:
    """Load a local HF causal-LM directory and its tokenizer, with the MoE fixes of ``align.moe`` applied;
    ``chat_template`` (template text) replaces the tokenizer's own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model directory (no config.json)")
    with whole_model_load():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(path)
    if chat_template is not None:
        tok.chat_template = chat_template
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    moe.fix_config(model)
    return model, tok


def describe(model: Any) -> str:
    """One line: class, total and active-per-token parameters."""
    total, active = moe.count_parameters(model)
    return f"{type(model).__name__}: {total / 1e6:.3f}M parameters total, {active / 1e6:.3f}M active per token"


@contextlib.contextmanager
def typed_checkpoint_configs() -> Iterator[None]:
    """Make ``PreTrainedConfig.from_json_file`` build the config class the file names.

    On resume, HF Trainer reads the checkpoint's ``config.json`` through the *base* ``PreTrainedConfig`` (only to
    compare versions); with DeepSeek-V4 that runs the base class's strict layer-type validator, which rejects
    ``mlp_layer_types: [hash_moe, moe]`` and kills every resume. Dispatching on ``model_type`` fixes it.
    """
    from transformers import PreTrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    original = PreTrainedConfig.__dict__["from_json_file"]

    def from_json_file(cls: type, json_file: str) -> Any:
        if cls is PreTrainedConfig:
            model_type = json.loads(Path(json_file).read_text()).get("model_type")
            if model_type in CONFIG_MAPPING:
                cls = CONFIG_MAPPING[model_type]
        return original.__func__(cls, json_file)

    PreTrainedConfig.from_json_file = classmethod(from_json_file)
    try:
        yield
    finally:
        PreTrainedConfig.from_json_file = original

"""Users' own checkpoints: tiny Qwen3-MoE, Mixtral and DeepSeek-V3 models around real BPE / SentencePiece
vocabularies (llama.cpp's ggml-vocab files: Qwen2, Llama SPM, DeepSeek LLM) run sft -> reasoning -> grpo -> eval with
the family's own template, with none plus ``model.chat_template``, and with a template TRL does not know (refused for
assistant-only loss, trained with it off); the loss mask of each template covers exactly the assistant's tokens."""

from __future__ import annotations

import json

import pytest

from align.config import ConfigError, load_config
from align.modeling import PLAIN_TEMPLATE, build_base
from align.pipeline import run_pipeline
from tests.conftest import SMOKE

pytestmark = pytest.mark.slow

FAMILIES = {"qwen3": ("tiny-qwen3-moe", "ggml-vocab-qwen2.gguf"),
            "mixtral": ("tiny-mixtral", "ggml-vocab-llama-spm.gguf"),
            "deepseek_v3": ("tiny-deepseek-v3", "ggml-vocab-deepseek-llm.gguf")}
INST = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}"
        "{% endfor %}")
FAST = ["stages.sft.trainer.max_steps=2", "stages.reasoning.trainer.max_steps=2", "stages.grpo.trainer.max_steps=2",
        "stages.sft.trainer.per_device_train_batch_size=4", "stages.reasoning.trainer.per_device_train_batch_size=4",
        "stages.eval.suites=[{name: arithmetic, n: 4}, {name: needle, n: 3, kwargs: {context_chars: 60}}]"]


@pytest.fixture(scope="module")
def checkpoints(bpe_vocab_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("families")
    out = {}
    for family, (preset, vocab) in FAMILIES.items():
        tok = AutoTokenizer.from_pretrained(bpe_vocab_dir, gguf_file=vocab)
        out[family] = build_base(preset, {}, 0, root / family, tokenizer=tok)
    return out


def _has_template(model_dir) -> bool:
    from transformers import AutoTokenizer

    return bool(AutoTokenizer.from_pretrained(model_dir).chat_template)


def _pipeline(tmp_path, model_dir, *extra):
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", f"model.path={model_dir}", *FAST, *extra])
    rows = run_pipeline(cfg)
    assert [r["stage"] for r in rows] == ["sft", "reasoning", "grpo", "eval"]
    from tests.align.test_checkpoint_serving import _check_final

    for stage in ("00_sft", "01_reasoning", "02_grpo"):
        m = json.loads((tmp_path / stage / "manifest.json").read_text())
        assert m["status"] == "completed" and m["steps"] == 2
        _check_final(tmp_path / stage / "final", model_dir)  # batched, left-padded generate in plain transformers
    return rows


def test_qwen3_moe_with_its_own_template(tmp_path, checkpoints):
    assert _has_template(checkpoints["qwen3"])  # the Qwen2 vocabulary ships its ChatML template
    try:
        _pipeline(tmp_path, checkpoints["qwen3"])
    except ConfigError as exc:  # a template TRL cannot patch is refused before weights, with both remedies
        assert "no {% generation %} markers" in str(exc) and "assistant_only_loss: false" in str(exc)
        _pipeline(tmp_path, checkpoints["qwen3"], "stages.sft.trainer.assistant_only_loss=false",
                  "stages.reasoning.trainer.assistant_only_loss=false")


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_no_template_plus_model_chat_template(tmp_path, checkpoints, family):
    assert not _has_template(checkpoints[family])
    with pytest.raises(ConfigError, match="no chat template"):
        run_pipeline(load_config(SMOKE, [f"output_dir={tmp_path / 'refused'}", f"model.path={checkpoints[family]}"]))
    _pipeline(tmp_path / "run", checkpoints[family], "model.chat_template=plain")


def test_unknown_template_refused_then_trained_without_assistant_only_loss(tmp_path, checkpoints):
    template = tmp_path / "inst.jinja"
    template.write_text(INST)
    with pytest.raises(ConfigError, match="no \\{% generation %\\} markers"):
        run_pipeline(load_config(SMOKE, [f"output_dir={tmp_path / 'refused'}", f"model.path={checkpoints['mixtral']}",
                                         f"model.chat_template={template}"]))
    _pipeline(tmp_path / "run", checkpoints["mixtral"], f"model.chat_template={template}",
              "stages.sft.trainer.assistant_only_loss=false", "stages.reasoning.trainer.assistant_only_loss=false")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_plain_template_mask_is_exactly_the_assistant_tokens(checkpoints, family):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoints[family])
    tok.chat_template = PLAIN_TEMPLATE
    messages = [{"role": "user", "content": "What is 12+34?"}, {"role": "assistant", "content": "The sum is 46."}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked).strip() == "The sum is 46." + tok.eos_token

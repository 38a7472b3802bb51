"""Chat templates of users' models: a base model without one and a template TRL cannot patch are refused before
any weights load, naming the model dir and both remedies; ``model.chat_template`` supplies one; the loss mask of the
supplied template covers exactly the assistant's tokens."""

from __future__ import annotations

import json
import shutil

import pytest

from align.config import ConfigError, load_config
from align.modeling import PLAIN_TEMPLATE, build_base, build_tokenizer
from align.pipeline import run_pipeline
from tests.conftest import SMOKE

MIXTRAL = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
           "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}"
           "{% endfor %}")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A checkpoint saved without any chat template (a base model)."""
    d = tmp_path_factory.mktemp("base") / "model"
    build_base("tiny-deepseek-v4", {}, 0, d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def _load(tmp_path, *overrides):
    return load_config(SMOKE, [f"output_dir={tmp_path / 'run'}", "stages.sft.trainer.max_steps=2", *overrides])


def test_base_model_without_template_is_refused_before_weights_load(tmp_path, base_model, monkeypatch):
    import align.modeling

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(align.modeling, "load_model", no_weights)
    with pytest.raises(ConfigError) as info:
        run_pipeline(_load(tmp_path, f"model.path={base_model}"), only="sft")
    msg = str(info.value)
    assert str(base_model) in msg and "no chat template" in msg and "model.chat_template" in msg and "'plain'" in msg


def test_unknown_template_is_refused_with_both_remedies(tmp_path, base_model):
    template = tmp_path / "mixtral.jinja"
    template.write_text(MIXTRAL)
    with pytest.raises(ConfigError) as info:
        run_pipeline(_load(tmp_path, f"model.path={base_model}", f"model.chat_template={template}"), only="sft")
    msg = str(info.value)
    assert "no {% generation %} markers" in msg and "model.chat_template" in msg
    assert "stages.sft.trainer.assistant_only_loss: false" in msg


def test_supplied_plain_template_trains_and_is_saved(tmp_path, base_model):
    rows = run_pipeline(_load(tmp_path, f"model.path={base_model}", "model.chat_template=plain"), only="sft")
    assert rows[0]["steps"] == 2
    final = tmp_path / "run" / "00_sft" / "final"
    saved = (final / "chat_template.jinja").read_text() if (final / "chat_template.jinja").is_file() else \
        json.loads((final / "tokenizer_config.json").read_text())["chat_template"]
    assert saved == PLAIN_TEMPLATE


def test_plain_template_loss_mask_is_exactly_the_assistant_turn():
    tok = build_tokenizer()
    tok.chat_template = PLAIN_TEMPLATE
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "12+3="},
                {"role": "assistant", "content": "15"}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked) == "15" + tok.eos_token  # the answer and the stop token, nothing of the prompt


def test_unknown_template_trains_with_assistant_only_loss_off(tmp_path, base_model):
    template = tmp_path / "mixtral.jinja"
    template.write_text(MIXTRAL)
    rows = run_pipeline(_load(tmp_path, f"model.path={base_model}", f"model.chat_template={template}",
                              "stages.sft.trainer.assistant_only_loss=false"), only="sft")
    assert rows[0]["steps"] == 2
    shutil.rmtree(tmp_path / "run")

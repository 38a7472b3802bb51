"""Thinking and non-thinking modes: the template's switch, where a row's mode comes from, refusal of a template that
cannot express a mode a row asks for (before any weights load), and each consumer rendering every row in its mode
(SFT's tokenized rows and loss mask, GRPO's rollout prompts, held-out and eval generation)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from align.config import load_config
from align.modeling import PLAIN_TEMPLATE, build_tokenizer
from align.thinking import has_switch, mode_problem, render_prompt, resolve, shown_mode, with_modes
from tests.conftest import SMOKE

PROMPT = [{"role": "user", "content": "12+34="}]
ANSWER_ROW = {"messages": [*PROMPT, {"role": "assistant", "content": "46"}], "prompt": PROMPT, "answer": "46"}
TRACE_ROW = {"messages": [*PROMPT, {"role": "assistant", "content": "<think>2+4=6;1+3=4;=46</think>46"}],
             "prompt": PROMPT, "answer": "46"}
# Qwen3's convention, reduced to the switch: enable_thinking=false pre-fills an empty think block
QWEN3_LIKE = ("{%- for m in messages -%}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{%- endfor -%}"
              "{%- if add_generation_prompt -%}<|im_start|>assistant\n"
              "{%- if enable_thinking is defined and enable_thinking is false -%}<think>\n\n</think>\n\n{%- endif -%}"
              "{%- endif -%}")


@pytest.fixture()
def tok():
    return build_tokenizer()


def test_align_template_switch_is_prompt_not_completion(tok):
    assert render_prompt(tok, PROMPT, False).endswith("<|assistant|></think>")
    assert render_prompt(tok, PROMPT, True) == render_prompt(tok, PROMPT) == "<|user|>12+34=<|end|><|assistant|>"
    enc = tok.apply_chat_template(ANSWER_ROW["messages"], tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True, enable_thinking=False)
    trained = [tok.decode([i]) for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert trained == ["4", "6", "<|end|>"]  # the non-thinking marker is never trained on
    assert tok.decode(enc["input_ids"]).endswith("<|assistant|></think>46<|end|>")


def test_which_templates_have_the_switch(tok):
    assert has_switch(tok)
    tok.chat_template = QWEN3_LIKE
    assert has_switch(tok)
    tok.chat_template = PLAIN_TEMPLATE
    assert not has_switch(tok)
    tok.chat_template = "{{ undefined_filter | nope }}"  # a template that fails to render has no switch either
    assert not has_switch(tok)


def test_a_rows_mode_comes_from_row_then_turn_then_kind_default():
    prompt_only = {"prompt": PROMPT, "answer": "46"}
    assert shown_mode(ANSWER_ROW) is False and shown_mode(TRACE_ROW) is True and shown_mode(prompt_only) is None
    rows = with_modes([ANSWER_ROW, TRACE_ROW, prompt_only, {**TRACE_ROW, "thinking": False}], True, switch=True)
    assert [r["thinking"] for r in rows] == [False, True, True, False]
    assert with_modes([ANSWER_ROW], True, switch=False) == [ANSWER_ROW]  # a one-mode template: rows as they are


def test_a_mode_the_template_cannot_express_is_refused_naming_rows_and_remedy(tok):
    rows = [ANSWER_ROW, {**ANSWER_ROW, "thinking": False}]
    msg = mode_problem(rows, switch=False, where="stage 'sft'", model="my-model")
    assert "stage 'sft'" in msg and "row 2" in msg and "my-model" in msg and "model.chat_template=align" in msg
    assert mode_problem(rows, switch=True, where="x", model="m") is None
    assert mode_problem([ANSWER_ROW], switch=False, where="x", model="m") is None  # no row asks
    tok.chat_template = PLAIN_TEMPLATE
    with pytest.raises(ValueError, match="cannot express the mode"):
        resolve(rows, None, tok, "stage 'sft'", "m")


def test_validation_refuses_a_source_mode_without_the_switch_before_weights(tmp_path, monkeypatch):
    import yaml

    import align.modeling
    from align.validate import ValidationError, validate_pipeline

    monkeypatch.setattr(align.modeling, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    raw = yaml.safe_load(SMOKE.read_text())
    raw["stages"][0]["data"]["sources"][0]["thinking"] = False
    raw["stages"][-1]["suites"][0]["thinking"] = True
    moded = tmp_path / "moded.yaml"
    moded.write_text(yaml.safe_dump(raw))
    plain = [f"output_dir={tmp_path}", "model.chat_template=plain", "stages.sft.trainer.assistant_only_loss=false",
             "stages.reasoning.trainer.assistant_only_loss=false"]
    with pytest.raises(ValidationError) as err:
        validate_pipeline(load_config(moded, plain))
    problems = err.value.problems
    assert any("stages.sft.data (train)" in p and "thinking=false" in p for p in problems), problems
    assert any("stages.eval.suites[0].thinking" in p for p in problems), problems
    # with the switch (align's template) the same modes are fine, and without modes a one-mode template is fine too
    validate_pipeline(load_config(moded, [f"output_dir={tmp_path}"]))
    validate_pipeline(load_config(SMOKE, plain))


def test_sft_renders_each_row_in_its_mode(tmp_path):
    """The tokenized rows SFTTrainer trains on: the non-thinking row carries the marker in its prompt part (masked),
    the trace row opens <think> itself inside the trained part."""
    from align.config import load_config
    from align.pipeline import ensure_base
    from align.stage import StageContext
    from align.training import prepare_model, resolve_modes, train_sft

    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "stages.sft.trainer.max_steps=1"])
    stage = cfg.stages[0]
    base = ensure_base(cfg)
    ctx = StageContext(cfg.run_dir, tmp_path / "00_sft", base, 0, cfg.router_for(stage), cfg.monitor, cfg.distributed,
                       {}, None, None)
    ctx.stage_dir.mkdir()
    model, tk, coef = prepare_model(ctx, stage)
    rows = resolve_modes(stage, ctx, tk, [ANSWER_ROW, TRACE_ROW])
    trainer, _ = train_sft(model, tk, rows, stage, ctx, coef)
    seen = {}
    for ex in trainer.train_dataset:
        assert set(ex) >= {"input_ids", "labels"}, set(ex)
        text = tk.decode(ex["input_ids"])
        trained = tk.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100])
        seen[trained] = text
    assert seen["46<|end|>"].endswith("<|assistant|></think>46<|end|>")
    assert seen["<think>2+4=6;1+3=4;=46</think>46<|end|>"].endswith("<|assistant|><think>2+4=6;1+3=4;=46</think>46<|end|>")


def test_grpo_rollout_prompts_are_the_templates_tokens_in_each_mode(tok):
    from stages.grpo import AlignGRPOTrainer

    rows = with_modes([{"prompt": PROMPT, "answer": "46"}, {"prompt": PROMPT, "answer": "46", "thinking": False}],
                      True, switch=True)
    texts = [render_prompt(tok, r["prompt"], r["thinking"]) for r in rows]
    ids, images, extra = AlignGRPOTrainer._tokenize_prompts(SimpleNamespace(processing_class=tok), texts)
    for r, got in zip(rows, ids):
        want = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True,
                                       enable_thinking=r["thinking"])["input_ids"]
        assert got == want
    assert images is None and extra == {}
    assert len(ids[1]) == len(ids[0]) + 1  # </think>


def test_eval_suites_carry_their_mode_and_a_suite_override(tok):
    from align.config import SuiteConfig
    from stages.eval import suite_rows

    rows, _ = suite_rows(SuiteConfig(name="arithmetic", n=3), 0)
    assert {r["thinking"] for r in rows} == {False}
    rows, _ = suite_rows(SuiteConfig(name="math", n=3), 0)
    assert {r["thinking"] for r in rows} == {True}
    rows, _ = suite_rows(SuiteConfig(name="arithmetic", n=3, thinking=True), 0)
    assert {r["thinking"] for r in rows} == {True}
    rows, _ = suite_rows(SuiteConfig(name="arithmetic", n=3), 0, switch=False)  # a one-mode template: no default
    assert all("thinking" not in r for r in rows)


def test_think_format_grades_a_non_thinking_row_the_other_way():
    from rewards import get_verifier

    v = get_verifier("think_format")
    assert v("46", "46", row={"thinking": False}).status == "ok"
    assert v("<think>x</think>46", "46", row={"thinking": False}).status == "wrong"
    assert v("", "46", row={"thinking": False}).status == "wrong"
    assert v("46", "46", row={"thinking": True}).status == "wrong"

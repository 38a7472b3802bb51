"""Held-out generation: input order kept, no prompt ever left-padded (DeepSeek-V4's CSA is not padding-neutral)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

from align import evaluation, modeling
from align.config import load_config
from tests.conftest import SMOKE


def test_left_padding_moves_deepseek_v4_logits_and_generate_avoids_it(tmp_path):
    base = modeling.build_base("tiny-deepseek-v4", {}, 0, tmp_path / "m")
    model, tok = modeling.load_model(base)
    model.eval()
    # the stack fact the bucketing exists for
    ids = tok("<|user|>123+456=<|end|><|assistant|>", return_tensors="pt", add_special_tokens=False)["input_ids"]
    padded = torch.cat([torch.full((1, 9), tok.pad_token_id), ids], 1)
    mask = torch.cat([torch.zeros(1, 9, dtype=torch.long), torch.ones_like(ids)], 1)
    with torch.no_grad():
        a = model(input_ids=ids).logits[0, -1]
        b = model(input_ids=padded, attention_mask=mask).logits[0, -1]
    assert (a - b).abs().max() > 1e-3
    # batched generation equals one-by-one generation, in input order, with several lengths in one call
    prompts = [[{"role": "user", "content": c}] for c in ["1+2=", "123+456=", "7=", "the code word is abc1 ."]]
    batched = evaluation.generate(model, tok, prompts, max_new_tokens=6, batch_size=8)
    single = [evaluation.generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    # num_return_sequences stays grouped per prompt
    multi = evaluation.generate(model, tok, prompts, 4, 8, do_sample=True, num_return_sequences=3)
    assert len(multi) == 12


def test_eval_data_is_graded_instead_of_the_stage_data():
    cfg = load_config(SMOKE, ["stages.sft.eval.data={sources: [{recipe: chain}], n_train: 1, n_heldout: 7}"]).stage("sft")
    rows = evaluation.heldout_rows(cfg, SimpleNamespace(seed=0))
    assert len(rows) == 7
    assert all(re.fullmatch(r"\d([+-]\d){2,4}=", r["prompt"][0]["content"]) for r in rows)  # chain problems
    assert len(evaluation.heldout_rows(load_config(SMOKE).stage("sft"), SimpleNamespace(seed=0))) == 32


def test_grade_before_records_the_input_models_accuracy_and_grading_time(tmp_path):
    from data_recipes import build_rows

    base = modeling.build_base("tiny-deepseek-v4", {}, 0, tmp_path / "m")
    model, tok = modeling.load_model(base)
    cfg = load_config(SMOKE, ["stages.sft.eval.before=true", "stages.sft.data.n_heldout=6"]).stage("sft")
    rows = build_rows(cfg.data, "heldout", 0, "sft")
    metrics: dict = {}
    evaluation.grade_before(model, tok, cfg, rows, metrics)
    assert metrics["heldout_accuracy_before"] == 0.0  # the untrained model solves nothing
    assert metrics["heldout_before_s"] > 0
    assert set(metrics["heldout_by_verifier_before"]) == {r["verifier"] for r in rows}  # per task of the mixture
    off: dict = {}
    evaluation.grade_before(model, tok, load_config(SMOKE, []).stage("sft"), rows, off)
    assert off == {}  # eval.before off (the default): the input model is not graded

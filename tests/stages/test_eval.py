"""Eval stage: pass@k, suites (deterministic, intended verifier, held out, needle depth), report from a smoke run."""

from __future__ import annotations

import json

import pytest

from align.config import SuiteConfig, load_config
from data_recipes.registry import resolve_recipe
from data_recipes.suites import SUITES
from rewards import get_verifier
from stages.eval import pass_at_k, suite_rows
from tests.conftest import SMOKE, run_cli

INTENDED = {"arithmetic": "exact", "math": "math", "code": "code", "needle": "retrieval", "needle_long": "retrieval",
            "two_hop": "retrieval", "instructions": "instructions"}


@pytest.mark.parametrize(("n", "c", "k", "want"), [
    (5, 2, 1, 0.4), (5, 2, 2, 1 - 3 / 10), (10, 3, 5, 1 - 21 / 252), (4, 0, 4, 0.0), (4, 4, 1, 1.0), (3, 1, 3, 1.0),
])
def test_pass_at_k_hand_computed(n, c, k, want):
    assert pass_at_k(n, c, k) == pytest.approx(want)


def test_pass_at_k_needs_k_samples():
    with pytest.raises(ValueError, match="at least 5"):
        pass_at_k(4, 1, 5)


@pytest.mark.parametrize("name", sorted(SUITES))
def test_suite_is_deterministic_graded_by_intended_verifier_and_held_out(name):
    suite = SuiteConfig(name=name, n=12)
    rows, budget = suite_rows(suite, seed=3)
    again, _ = suite_rows(suite, seed=3)
    other, _ = suite_rows(suite, seed=4)
    prompts = [r["prompt"][-1]["content"] for r in rows]
    assert prompts == [r["prompt"][-1]["content"] for r in again]
    assert prompts != [r["prompt"][-1]["content"] for r in other]
    assert {r["verifier"] for r in rows} == {INTENDED[name]} and budget
    # the reference answer of every row passes the intended verifier; an empty answer does not
    v = get_verifier(INTENDED[name])
    for r in rows:
        gold = r["answer"]
        ref = r["messages"][-1]["content"]
        meta = {"meta": r["meta"]} if r.get("meta") is not None else {}
        assert v(ref, gold, **meta).accepted, (name, ref, gold)
        assert not v("", gold, **meta).accepted
    # disjoint from the recipe's training split, whatever seed training used
    recipe, kwargs, *_ = SUITES[name]
    for seed in (0, 3):
        train = resolve_recipe(recipe)(split="train", n=400, seed=seed, **kwargs)
        assert not set(prompts) & {r["prompt"][-1]["content"] for r in train}


@pytest.mark.parametrize("chars", [400, 2000])
def test_needle_sits_at_the_stated_depth_by_token_position(chars):
    from align.modeling import build_tokenizer

    tok = build_tokenizer()
    rows = resolve_recipe("needle")(split="heldout", n=30, seed=0, context_chars=chars, depths=[0.05, 0.5, 0.95])
    for r in rows:
        context = r["prompt"][-1]["content"].rsplit("\n", 1)[0]
        ids = tok(context, add_special_tokens=False)["input_ids"]
        needle = tok("the code word is", add_special_tokens=False)["input_ids"]
        at = next(i for i in range(len(ids)) if ids[i:i + len(needle)] == needle)
        assert len(ids) >= chars
        assert abs(at / len(ids) - r["meta"]["depth"]) < 0.03, (at, len(ids), r["meta"])


def test_eval_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("{name: two_hop,", "{name: two_hops,"))
    proc = run_cli(str(bad), "--dry-run")
    assert proc.returncode == 2 and "two_hops" in proc.stderr and "two_hop" in proc.stderr
    bad.write_text(SMOKE.read_text().replace("compare: [sft, reasoning]", "compare: [sft, nope]"))
    proc = run_cli(str(bad), "--dry-run")
    assert proc.returncode == 2 and "compare" in proc.stderr and "nope" in proc.stderr


def test_smoke_eval_stage_and_report(smoke_run):
    cfg, out, rows = smoke_run
    ev = json.loads((out / "03_eval" / "manifest.json").read_text())
    assert ev["status"] == "completed" and ev["steps"] == 0
    assert ev["final_dir"] == str(out / "02_grpo" / "final")  # trains nothing: passes its input on
    suites = ev["metrics"]["suites"]
    assert set(suites) == {"arithmetic", "math", "code", "needle", "two_hop", "instructions"}
    for name, res in suites.items():
        assert res["verifiers"] == [INTENDED[name]]
        assert sum(res["statuses"].values()) == res["n"]
        assert set(res["pass_at_k"]) == {"1", "2"} and 0 <= res["pass_at_k"]["1"] <= res["pass_at_k"]["2"] <= 1
    assert set(suites["needle"]["accuracy_by_depth"]) == {"0.05", "0.5", "0.95"}
    assert set(ev["metrics"]["by_stage"]) == {"sft", "reasoning"}
    for graded in ev["metrics"]["by_stage"].values():  # compare_samples: 0 grades the earlier models greedy only
        assert all("pass_at_k" not in res and 0 <= res["accuracy"] <= 1 for res in graded.values())
    # the skill ledger: the graded models in pipeline order, every suite, which stages trained on each
    ledger = ev["metrics"]["ledger"]
    assert ledger["stages"] == ["sft", "reasoning", "grpo"]
    assert set(ledger["suites"]) == set(suites)
    assert ledger["suites"]["arithmetic"]["trained_by"] == ["sft", "reasoning", "grpo"]  # all use the recipe
    assert ledger["suites"]["needle"]["trained_by"] == ["sft", "grpo"]
    assert ledger["suites"]["code"]["trained_by"] == []
    for stage in ledger["stages"]:
        cell = ledger["suites"]["arithmetic"]["stages"][stage]
        graded = suites["arithmetic"] if stage == "grpo" else ev["metrics"]["by_stage"][stage]["arithmetic"]
        assert cell["accuracy"] == graded["accuracy"] and cell["ci95"][0] <= cell["accuracy"] <= cell["ci95"][1]
    # the report: stage table, eval table, ledger, PNGs that open as images
    from align.report import write_report

    report = write_report(out)
    text = report.read_text()
    for stage in ("sft", "reasoning", "grpo", "eval"):
        assert f"| {stage} |" in text
    assert "## Eval: eval" in text and "needle" in text and "### Skill ledger" in text
    import matplotlib.image as mpimg

    pngs = sorted((out / "report").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"accuracy_by_stage.png", "suites_eval.png", "needle_by_depth_eval.png", "curves_grpo.png"} <= names
    for p in pngs:
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert f"(report/{p.name})" in text


def test_report_cli_regenerates_and_refuses_empty_dirs(smoke_run, tmp_path):
    _, out, _ = smoke_run
    (out / "report.md").unlink()
    proc = run_cli("report", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "report.md").is_file()
    proc = run_cli("report", str(tmp_path))
    assert proc.returncode == 2 and "no completed stage" in proc.stderr


def test_rerun_skips_the_eval_stage(smoke_run):
    cfg, out, _ = smoke_run
    from align.pipeline import run_pipeline

    rows = run_pipeline(load_config(SMOKE, [f"output_dir={out}"]), only="eval")
    assert rows[0]["skipped"] is True


def test_ledger_is_in_pipeline_order_wherever_the_models_live(tmp_path):
    """A skipped stage's model may sit in another run folder (a copied or moved run): the ledger still reads the
    stages in the order the pipeline ran them, so "best earlier" means earlier."""
    from align.config import RouterPolicy
    from align.stage import StageContext
    from stages.eval import skill_ledger

    cfg = load_config(SMOKE).stage("eval")
    finals = {"sft": tmp_path / "zz_copied_run" / "00_sft" / "final",  # sorts after the others by path
              "reasoning": tmp_path / "run" / "01_reasoning" / "final", "grpo": tmp_path / "run" / "02_grpo" / "final"}
    ctx = StageContext(tmp_path / "run", tmp_path / "run" / "03_eval", finals["grpo"], 0, RouterPolicy(),
                       final_dirs=finals)
    grade = {"sft": 1.0, "reasoning": 0.9, "grpo": 0.9}
    by_stage = {name: {s.name: {"accuracy": grade[name], "n": 200} for s in cfg.suites} for name in reversed(finals)}
    ledger = skill_ledger(cfg, ctx, by_stage, by_stage["grpo"])
    assert ledger["stages"] == ["sft", "reasoning", "grpo"]
    assert {(r["stage"], r["best_stage"]) for r in ledger["regressions"]} >= {("reasoning", "sft")}

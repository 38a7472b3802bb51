"""Check the whole pipeline before any stage runs or any weights load.

``validate_pipeline`` reads only configs, tokenizers and data (never model weights) and collects every problem it
finds, one line each, naming the stage and key (or file, row and column): TRL's own constraints on each stage's
trainer block (the TRL config class is built from it, plus the GRPO batch rule for the planned world size), router
``top_k`` against the model's expert count, every verifier named anywhere (stage verifiers, trace filters, eval
suites, and each data row's ``verifier`` column) resolved, every data source opened and schema-checked, and every row
measured in tokens against the stage's limit. Rows over the limit are not an error: ``fit_rows`` drops them in the
stage (SFT would silently truncate them, GRPO has no prompt limit and would try to allocate for a 1 MB prompt), and
validation logs how many will go. A stage whose rows would all be dropped is an error.

Data rows are built exactly as the stage builds them (recipes are deterministic by seed), so a procedural recipe is
checked in full. Token lengths are measured on every row up to ``LENGTH_SAMPLE`` rows per split and on an evenly
spaced sample of that many beyond it (the count of over-long rows is then an estimate and says so).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any

from align.config import ConfigError, PipelineConfig, StageConfig, freeze_problems

logger = logging.getLogger(__name__)

LENGTH_SAMPLE = 20_000
"""Rows per split whose token length validation measures (every row up to this; an even sample beyond)."""


class ValidationError(ConfigError):
    """Every problem ``validate_pipeline`` found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# -------------------------------------------------------------------------------------------- model facts


def template_problem(tok: Any, model_dir: str, stage: StageConfig, override: str | None) -> str | None:
    """Why the stage cannot use this tokenizer's chat template (``override``: ``model.chat_template`` text), or None.

    Every stage renders chat rows, so a tokenizer without a template is refused (transformers fails only after the
    weights loaded). SFT with assistant-only loss (align's default) needs ``{% generation %}`` markers: a template
    that has none and that TRL cannot patch is refused, naming both remedies."""
    template = override if override is not None else getattr(tok, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        return (f"{model_dir}: the tokenizer has no chat template (a base model?). Remedy: set model.chat_template "
                "to a template file, or to 'plain' (a role: content template) knowingly")
    assistant_only = stage.trainer_settings().get("assistant_only_loss", False)  # the SFT kinds default it on
    if not assistant_only:
        return None
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(template):
        return None
    saved = tok.chat_template
    try:
        tok.chat_template = template
        get_training_chat_template(tok)  # TRL patches the templates it knows (Qwen3, DeepSeek-V3...)
        return None
    except ValueError:
        return (f"{model_dir}: its chat template has no {{% generation %}} markers and TRL cannot add them, so the "
                "assistant-only loss cannot find the assistant's tokens. Remedy: set model.chat_template to a "
                "template with {% generation %}...{% endgeneration %} around the assistant turn (or 'align' / "
                f"'plain'), or set stages.{stage.name}.trainer.assistant_only_loss: false knowingly (the loss then "
                "covers the prompt tokens too)")
    finally:
        tok.chat_template = saved


def model_facts(path: Path | None, preset: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Expert count, top-k, position limit and tokenizer of a model dir or preset, without loading weights."""
    from align import modeling

    if path is not None:
        cfg_file = Path(path) / "config.json"
        try:
            config = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{cfg_file}: cannot read the model config ({exc})") from None
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001 - any tokenizer failure is the user's dir, named here
            raise ConfigError(f"{path}: cannot load its tokenizer ({type(exc).__name__}: {exc})") from None
    else:
        sig = modeling.preset_signature(preset, overrides)
        config, tok = sig["kwargs"], modeling.build_tokenizer()

    def parameter_names() -> list[str] | None:
        """The model's parameter names from a ``meta``-device build (shapes only, no weights); None where the config
        cannot be built that way (the load-time check in ``align.training.freeze_parameters`` then still holds)."""
        from align.planner import meta_model

        try:
            if path is not None:
                from transformers import AutoConfig

                built = AutoConfig.from_pretrained(path)
            else:
                config_cls, kwargs = modeling.PRESETS[preset](len(tok), tok)
                built = config_cls(**{**kwargs, **overrides})
            return [name for name, _ in meta_model(built).named_parameters()]
        except Exception as exc:  # noqa: BLE001 - best effort before the weights load; the load checks again
            logger.debug("parameter names of %s not known before load: %s", path or preset, exc)
            return None

    text = config.get("text_config") or config
    experts = next((text[k] for k in ("n_routed_experts", "num_experts", "num_local_experts") if text.get(k)), None)
    return {"experts": experts, "top_k": text.get("num_experts_per_tok"),
            "max_positions": text.get("max_position_embeddings"), "tokenizer": tok,
            "name": str(path) if path is not None else f"preset {preset}",
            "parameter_names": functools.cache(parameter_names)}


# -------------------------------------------------------------------------------------------- rows and limits


def row_tokens(tok: Any, row: dict[str, Any], kind: str) -> int:
    """Tokens a stage feeds for ``row`` in its mode (``align.thinking``): the whole chat for sft/reasoning, the prompt
    with the generation prompt for grpo/eval."""
    from align.thinking import row_thinking, template_kwargs

    mode = template_kwargs(row_thinking(row))
    if kind in ("sft", "reasoning"):
        ids = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True, **mode)["input_ids"]
    else:
        ids = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True,
                                      **mode)["input_ids"]
    return len(ids)


def token_limit(kind: str, trainer: dict[str, Any], max_positions: int | None) -> int | None:
    """The most tokens a row may take in a stage of ``kind``: SFT's ``max_length`` (TRL truncates beyond it, which
    would cut the assistant's answer); GRPO: the model's positions minus ``max_completion_length``."""
    if kind in ("sft", "reasoning"):
        from trl import SFTConfig

        default = {f.name: f.default for f in dataclasses.fields(SFTConfig)}["max_length"]
        return trainer.get("max_length", default)
    if kind == "grpo" and max_positions:
        from align.config import GrpoStageConfig

        return max_positions - trainer.get("max_completion_length",
                                           GrpoStageConfig.trainer_defaults["max_completion_length"])
    return None


def fit_rows(rows: list[dict[str, Any]], tok: Any, kind: str, limit: int | None, where: str) -> list[dict[str, Any]]:
    """``rows`` without those over ``limit`` tokens (count logged); an error when none is left."""
    if limit is None:
        return rows
    kept = [r for r in rows if row_tokens(tok, r, kind) <= limit]
    if len(kept) < len(rows):
        logger.warning("%s: %d of %d rows are longer than %d tokens and were dropped", where, len(rows) - len(kept),
                       len(rows), limit)
    if not kept:
        from data_recipes import DataError

        raise DataError(f"{where}: every row is longer than the stage's limit of {limit} tokens")
    return kept


def _over_limit(rows: list[dict[str, Any]], tok: Any, kind: str, limit: int) -> tuple[int, int, bool]:
    """(rows over ``limit``, rows measured, whether it is a sample)."""
    if len(rows) <= LENGTH_SAMPLE:
        sample = rows
    else:
        step = len(rows) / LENGTH_SAMPLE
        sample = [rows[int(i * step)] for i in range(LENGTH_SAMPLE)]
    over = sum(row_tokens(tok, r, kind) > limit for r in sample)
    return over, len(sample), sample is not rows


# -------------------------------------------------------------------------------------------- the check


def validate_pipeline(cfg: PipelineConfig, only: str | None = None, init_from: str | Path | None = None) -> dict:
    """Raise ``ValidationError`` listing every problem of the planned stages; returns a summary per stage (rows,
    verifiers, dropped rows) for ``--dry-run``."""
    from align.pipeline import plan

    problems: list[str] = []
    summary: dict[str, Any] = {}
    run_dir = cfg.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        problems.append(f"output_dir {run_dir}: exists and is not a directory")
    for p in [run_dir, *run_dir.parents]:
        if p.exists():
            if p.is_dir() and not _writable(p):
                problems.append(f"output_dir {run_dir}: {p} is not writable")
            break
    facts_cache: dict[str, Any] = {}

    def facts_for(path: Path | None) -> dict[str, Any] | None:
        key = str(path)
        if key not in facts_cache:
            try:
                facts_cache[key] = model_facts(path, cfg.model.preset, cfg.model.overrides)
            except (ConfigError, KeyError, ValueError) as exc:
                problems.append(str(exc).strip("'\""))
                facts_cache[key] = None
        return facts_cache[key]

    base_path = Path(cfg.model.path) if cfg.model.path else None
    if base_path is not None and not (base_path / "config.json").is_file():
        problems.append(f"model.path {base_path}: not a Hugging Face model directory (no config.json)")
        base_path = None
    planned = plan(cfg, only)
    for pos, (_, stage) in enumerate(planned):
        where = f"stages.{stage.name}"
        if cfg.distributed.ep > 1:  # what AutoEP's swapped-in layers cannot carry
            if stage.lora is not None:
                problems.append(f"{where}.lora: LoRA with expert parallelism (distributed.ep {cfg.distributed.ep}) is "
                                "not supported: AutoEP replaces the expert and router modules LoRA would wrap; train "
                                "this stage without --ep (ZeRO sharding) or without lora")
            if stage.freeze:
                problems.append(f"{where}.freeze: freezing parameters with expert parallelism (distributed.ep "
                                f"{cfg.distributed.ep}) is not supported: AutoEP builds new expert modules when the "
                                "engine starts; train this stage without --ep or without freeze")
            if getattr(stage, "routing_replay", "none") != "none":
                problems.append(f"{where}.routing_replay: {stage.routing_replay!r} with expert parallelism is not "
                                "supported: the replay patches transformers' routers, which AutoEP replaces; set "
                                "routing_replay: none or train without --ep")
        src = base_path
        if pos == 0 and init_from is not None:
            src = Path(init_from)
            if not (src / "config.json").is_file():
                problems.append(f"--init-from {src}: not a Hugging Face model directory (no config.json)")
                src = None
        bad_dir = src is None and (cfg.model.path or (pos == 0 and init_from is not None))
        facts = None if bad_dir else facts_for(src)
        if facts is not None:
            override = None
            if cfg.model.chat_template:
                from align.modeling import resolve_chat_template

                try:
                    override = resolve_chat_template(cfg.model.chat_template)
                except ValueError as exc:
                    problems.append(str(exc))
            problem = template_problem(facts["tokenizer"], str(src or cfg.model.preset), stage, override)
            if problem:
                problems.append(f"{where}: {problem}")
                facts = {**facts, "tokenizer": None}  # rows cannot be measured without a template
            elif override is not None:
                facts["tokenizer"].chat_template = override
        summary[stage.name] = _check_stage(cfg, stage, where, facts, problems)
    if problems:
        raise ValidationError(problems)
    return summary


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK | os.X_OK)


def _check_stage(cfg: PipelineConfig, stage: StageConfig, where: str, facts: dict[str, Any] | None,
                 problems: list[str]) -> dict[str, Any]:
    from data_recipes import DataError, build_rows

    info: dict[str, Any] = {"kind": stage.kind}
    router = cfg.router_for(stage)
    if facts and router.top_k is not None and facts["experts"] and router.top_k > facts["experts"]:
        problems.append(f"{where}.router.top_k (or model.router.top_k): {router.top_k} experts per token, but the "
                        f"model has {facts['experts']} routed experts")
    _check_trainer(cfg, stage, where, problems)
    names_known = facts["parameter_names"]() if facts and stage.freeze else None
    if names_known is not None:
        problems += freeze_problems(names_known, stage.freeze, f"{where}.freeze", facts["name"])

    names: dict[str, str] = {}  # verifier spec -> where it is named
    for i, spec in enumerate(getattr(stage, "verifiers", ())):
        names.setdefault(spec.name, f"{where}.verifiers[{i}].name")
    if getattr(stage, "traces", None) is not None:
        for i, name in enumerate(stage.traces.verifiers):
            names.setdefault(name, f"{where}.traces.verifiers[{i}]")
    for i, suite in enumerate(getattr(stage, "suites", ())):
        if suite.verifier:
            names.setdefault(suite.verifier, f"{where}.suites[{i}].verifier")
    asking = [i for i, s in enumerate(getattr(stage, "suites", ())) if s.thinking is not None]
    if asking and facts and facts["tokenizer"] is not None:
        from align.thinking import has_switch

        if not has_switch(facts["tokenizer"]):
            problems.append(f"{where}.suites[{asking[0]}].thinking: the chat template of {facts['name']} renders the "
                            "same generation prompt with enable_thinking true and false, so it cannot express the "
                            "mode; use a template with the switch (model.chat_template=align, or your own that reads "
                            "enable_thinking or thinking) or drop the suite's thinking:")

    if stage.data is not None:
        limit = token_limit(stage.kind, stage.trainer_settings(), facts["max_positions"] if facts else None)
        blocks = [("train", stage.data, stage.row_schema("train")), ("heldout", stage.data, stage.row_schema("heldout"))]
        if stage.eval.data is not None:
            blocks[1] = ("heldout", stage.eval.data, "eval")
        for split, data, row_kind in blocks:
            try:
                rows = build_rows(data, split, cfg.seed, row_kind, cfg.model.system_prompt)
            except (DataError, KeyError, FileNotFoundError, OSError, ValueError) as exc:
                problems.append(f"{where}.data ({split}): {str(exc).strip(chr(39) + chr(34))}")
                continue
            info[f"rows_{split}"] = len(rows)
            if facts and facts["tokenizer"] is not None:
                from align.thinking import has_switch, mode_problem, with_modes

                switch = has_switch(facts["tokenizer"])
                problem = mode_problem(rows, switch, f"{where}.data ({split})", facts["name"])
                if problem:
                    problems.append(problem)
                rows = with_modes(rows, stage.thinking_default, switch)
            for j, r in enumerate(rows):
                if r.get("verifier"):
                    names.setdefault(r["verifier"], f"{where}.data ({split} row {j + 1}, column 'verifier')")
            if facts and facts["tokenizer"] is not None and limit is not None and split == "train":
                over, measured, sampled = _over_limit(rows, facts["tokenizer"], row_kind, limit)
                if over:
                    est = " (estimated from an even sample)" if sampled else ""
                    logger.warning("%s: %d of %d %s rows%s are longer than %d tokens; the stage drops them", where,
                                   over, measured, split, est, limit)
                    info["rows_over_limit"] = over
                if over == measured:
                    problems.append(f"{where}.data: every {split} row is longer than the stage's limit of {limit} "
                                    "tokens (raise trainer.max_length, or shorten the rows)")
    info["verifiers"] = _resolve_verifiers(names, problems)
    return info


def _resolve_verifiers(names: dict[str, str], problems: list[str]) -> dict[str, str]:
    from rewards import get_verifier

    resolved = {}
    for name, where in names.items():
        try:
            resolved[name] = get_verifier(name).origin
        except (KeyError, ValueError, TypeError, ImportError, AttributeError, OSError, SyntaxError, RuntimeError) as exc:
            msg = str(exc).strip("'\"") if not isinstance(exc, SyntaxError) else (
                f"syntax error in {exc.filename}, line {exc.lineno}: {exc.msg}")
            problems.append(f"{where}: verifier {name!r}: {msg}")
    return resolved


def _check_trainer(cfg: PipelineConfig, stage: StageConfig, where: str, problems: list[str]) -> None:
    """TRL's own cross-field rules: build the TRL config class from our defaults + the trainer block (single
    process only: under a launcher, building TrainingArguments would touch the live DeepSpeed state), and the GRPO
    batch rule for the planned world size."""
    if stage.kind not in ("sft", "reasoning", "grpo"):
        return
    from align.distributed import world_size, zero_stage

    world = max(world_size(), cfg.distributed.nproc)
    if stage.kind == "grpo":
        t = stage.trainer_settings()
        # TRL: generation_batch_size defaults to per-device batch x steps_per_generation (default: the accumulation
        # steps) x processes, and must hold whole groups of num_generations
        steps = t.get("steps_per_generation") or t.get("gradient_accumulation_steps", 1)
        gen_batch = t.get("generation_batch_size") or t["per_device_train_batch_size"] * steps * world
        if t["num_generations"] < 2:
            problems.append(f"{where}.trainer.num_generations: {t['num_generations']}; GRPO needs at least 2 "
                            "completions per prompt (the advantage is relative to the group)")
        elif gen_batch % t["num_generations"]:
            problems.append(
                f"{where}.trainer.num_generations: {t['num_generations']} does not divide the generation batch "
                f"{gen_batch} (per_device_train_batch_size {t['per_device_train_batch_size']} x steps per generation"
                f" x {world} process(es)); TRL needs whole prompt groups in every batch")
    if world > 1 or zero_stage() is not None:
        return
    from align.config import trainer_config_class
    from align.training import trainer_defaults

    config_cls = trainer_config_class(stage.kind)
    name = config_cls.__name__
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            config_cls(**{**trainer_defaults(Path(tmp), cfg.seed), **stage.trainer_settings()})
        except (ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problems.append(f"{where}.trainer: TRL {name} refuses it: {first}")


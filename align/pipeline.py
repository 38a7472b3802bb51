"""Plan and run stages: each consumes and produces a plain HF model dir; finished stages are skipped by hash.

Run folder layout (``runs/<name>`` unless ``output_dir``)::

    pipeline.resolved.yaml     the resolved config of the last invocation
    base/                      the preset backbone built from scratch (when model.path is not set)
    NN_<stage>/                checkpoint-*/, final/, manifest.json

A stage is skipped when its manifest says completed with the same config hash and input-model hash. A different
config over an existing stage folder is refused unless ``overwrite``. A stage whose manifest says ``running`` (killed)
resumes from its last complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from align import checkpoint
from align.config import PipelineConfig, StageConfig, config_hash, dump_yaml, to_dict
from align.stage import StageContext

logger = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """A pipeline-level refusal (hash mismatch without --overwrite, missing input...)."""


def stage_dir_name(index: int, stage: StageConfig) -> str:
    """``NN_<name>``: the folder of stage ``index``."""
    return f"{index:02d}_{stage.name}"


def plan(cfg: PipelineConfig, only: str | None = None) -> list[tuple[int, StageConfig]]:
    """The (index, stage) pairs to run; ``only`` selects one stage by name."""
    indexed = list(enumerate(cfg.stages))
    if only is None:
        return indexed
    cfg.stage(only)  # raises with the known names
    return [(i, s) for i, s in indexed if s.name == only]


def stage_config_hash(cfg: PipelineConfig, stage: StageConfig) -> str:
    """Hash of everything in the config that decides a stage's output, given its input model."""
    return config_hash({"stage": to_dict(stage, for_hash=True), "router": to_dict(cfg.router_for(stage), for_hash=True),
                        "seed": cfg.seed})


def ensure_base(cfg: PipelineConfig) -> Path:
    """The first stage's input: ``model.path``, or the preset built (once) into ``<run>/base``."""
    if cfg.model.path:
        path = Path(cfg.model.path)
        if not (path / "config.json").is_file():
            raise PipelineError(f"model.path {path}: not a Hugging Face model directory (no config.json)")
        return path
    from align import modeling

    base = cfg.run_dir / "base"
    # the preset's content, not just its name: editing a preset rebuilds the base (and so reruns every stage)
    want = config_hash({"preset": modeling.preset_signature(cfg.model.preset, cfg.model.overrides), "seed": cfg.seed})
    manifest = checkpoint.read_json(base / "manifest.json")
    if manifest and manifest.get("config_hash") == want and (base / "config.json").is_file():
        return base
    if checkpoint.is_main_process():  # one writer; the other ranks wait at the barrier
        if base.exists():
            shutil.rmtree(base)
        modeling.build_base(cfg.model.preset, cfg.model.overrides, cfg.seed, base)
        checkpoint.write_json_atomic(base / "manifest.json", {"stage": "base", "preset": cfg.model.preset,
                                                              "config_hash": want, "status": "completed"})
    checkpoint.barrier()
    return base


def run_pipeline(
    cfg: PipelineConfig, only: str | None = None, init_from: str | Path | None = None, overwrite: bool = False
) -> list[dict[str, Any]]:
    """Run the planned stages in order; returns one summary row per stage (ran or skipped)."""
    from align.runlock import hold_run_lock
    from align.validate import validate_pipeline

    checkpoint.init_distributed()
    validate_pipeline(cfg, only, init_from)  # every config, verifier and data problem, before any weights load
    with hold_run_lock(cfg.run_dir):
        return _run_planned(cfg, only, init_from, overwrite)


def _run_planned(cfg: PipelineConfig, only: str | None, init_from: str | Path | None,
                 overwrite: bool) -> list[dict[str, Any]]:
    run_dir = cfg.run_dir
    if checkpoint.is_main_process():
        (run_dir / "pipeline.resolved.yaml").write_text(dump_yaml(cfg))
    rows = []
    planned = plan(cfg, only)
    progress = Progress(planned)
    for pos, (index, stage) in enumerate(planned):
        source, init = stage_input(cfg, index, init_from if pos == 0 else None)
        if source == "--init-from" and not (init / "config.json").is_file():
            raise PipelineError(f"--init-from {init}: not a Hugging Face model directory (no config.json)")
        if source == "base":
            init = ensure_base(cfg)
        if source.startswith("stage "):
            prev_index = index - 1
            prev_dir = run_dir / stage_dir_name(prev_index, cfg.stages[prev_index])
            manifest = checkpoint.read_json(prev_dir / "manifest.json")
            if not manifest or manifest.get("status") != "completed":
                raise PipelineError(
                    f"stage {stage.name!r} starts from the output of stage {cfg.stages[prev_index].name!r} "
                    f"({prev_dir}), which is not complete: run that stage first or pass --init-from DIR"
                )
        progress.banner(pos, stage, init)
        row = run_stage(cfg, index, stage, init, overwrite, input_from_run=source == "base" or
                        source.startswith("stage "))
        progress.done(pos, stage, row)
        rows.append(row)
    return rows


def planned_steps(stage: StageConfig) -> int | None:
    """The optimizer steps a stage will take when its trainer block says (``max_steps``), else None."""
    steps = stage.trainer_settings().get("max_steps")
    return steps if isinstance(steps, int) and steps > 0 else None


class Progress:
    """Stage banners, a result line per stage, and the pipeline's ETA from the step times measured so far."""

    def __init__(self, planned: list[tuple[int, StageConfig]]) -> None:
        self.planned, self.t0 = planned, time.time()
        self.sec_per_step: dict[str, float] = {}  # by stage kind, from stages that ran in this invocation
        self.sec_fixed: dict[str, float] = {}  # stages without steps (eval): their wall time

    def banner(self, pos: int, stage: StageConfig, init: Path) -> None:
        steps = planned_steps(stage)
        what = (f"{steps:,} steps" if steps else "train epochs" if stage.trainer_config else
                f"{len(getattr(stage, 'suites', ()))} suites")
        logger.info("==== stage %d/%d: %s (%s), %s, from %s", pos + 1, len(self.planned), stage.name, stage.kind, what,
                    init)

    def done(self, pos: int, stage: StageConfig, row: dict[str, Any]) -> None:
        if row["skipped"]:
            logger.info("==== stage %d/%d: %s unchanged since it ran: skipped (%s)", pos + 1, len(self.planned),
                        stage.name, describe_result(row))
        else:
            wall, steps = row.get("wall_time_s") or 0.0, row.get("steps") or 0
            if steps:
                self.sec_per_step[stage.kind] = wall / steps
            else:
                self.sec_fixed[stage.kind] = wall
            logger.info("==== stage %d/%d: %s done in %.0f s: %s; model: %s", pos + 1, len(self.planned), stage.name,
                        wall, describe_result(row), row.get("final_dir"))
        left = self.planned[pos + 1 :]
        if not left:
            logger.info("==== pipeline: %d stage(s) in %.0f s", len(self.planned), time.time() - self.t0)
            return
        eta, unknown = 0.0, []
        for _, s in left:
            steps = planned_steps(s)
            # seconds per step of the same kind if one ran, else of the latest stage (a rough first guess)
            rate = self.sec_per_step.get(s.kind) or (list(self.sec_per_step.values())[-1:] or [None])[0]
            if steps and rate:
                eta += steps * rate
            elif not steps and s.kind in self.sec_fixed:
                eta += self.sec_fixed[s.kind]
            else:
                unknown.append(s.name)
        left_text = f"about {eta:.0f} s left by measured step times" if eta else "time left unknown"
        if unknown and eta:
            left_text += f", plus {', '.join(unknown)} (not measured yet)"
        logger.info("==== pipeline: %d/%d stages done, %.0f s elapsed; %s", pos + 1, len(self.planned),
                    time.time() - self.t0, left_text)


def describe_result(row: dict[str, Any]) -> str:
    """``held-out 0.297 -> 0.823 (n=300)``, or what a stage without a held-out split did."""
    after, before = row.get("heldout_accuracy"), row.get("heldout_accuracy_before")
    if after is None:
        return f"{row.get('steps') or 0} steps, no held-out split"
    text = f"held-out {before:.3f} -> {after:.3f}" if before is not None else f"held-out {after:.3f}"
    return f"{text} (n={row.get('heldout_n')})"


def stage_input(cfg: PipelineConfig, index: int, init_from: str | Path | None = None) -> tuple[str, Path]:
    """Where stage ``index`` starts: ``(source, model dir)`` with source ``--init-from``, ``model.path``, ``base``
    (the preset built into ``<run>/base``) or ``stage <name>`` (the previous stage's output: its manifest's
    ``final_dir`` once it ran; a stage that trains nothing passes its own input on). The run and ``--dry-run`` both
    answer from here."""
    if init_from is not None:
        return "--init-from", Path(init_from)
    if index == 0:
        return ("model.path", Path(cfg.model.path)) if cfg.model.path else ("base", cfg.run_dir / "base")
    prev = cfg.stages[index - 1]
    manifest = checkpoint.read_json(cfg.run_dir / stage_dir_name(index - 1, prev) / "manifest.json") or {}
    if manifest.get("status") == "completed" and manifest.get("final_dir"):
        return f"stage {prev.name}", Path(manifest["final_dir"])
    if prev.trainer_config is None:  # an eval stage: its output is its input
        return f"stage {prev.name}", stage_input(cfg, index - 1)[1]
    return f"stage {prev.name}", cfg.run_dir / stage_dir_name(index - 1, prev) / "final"


def stage_status(cfg: PipelineConfig, index: int, init: Path) -> str:
    """What running stage ``index`` from ``init`` would do now, and why (for ``--dry-run``), by the rule
    ``run_stage`` applies: skip, resume from a checkpoint, refuse, or run."""
    stage = cfg.stages[index]
    stage_dir = cfg.run_dir / stage_dir_name(index, stage)
    manifest = checkpoint.read_json(stage_dir / "manifest.json")
    if not stage_dir.exists() or not any(stage_dir.iterdir()):
        return "run (no earlier output)"
    if not (init / "config.json").is_file():
        return "run (its input is not built yet)"
    if not manifest:
        return "refused without --overwrite (the folder holds files but no manifest)"
    same_cfg = manifest.get("config_hash") == stage_config_hash(cfg, stage)
    same_input = manifest.get("input_hash") == checkpoint.dir_hash(init)
    if not same_cfg:
        return "refused without --overwrite (the config changed since it ran)"
    if not same_input:
        return "run again (its input changed upstream; the old outputs move to .stale)"
    if manifest.get("status") == "completed":
        return "skip (finished with the same config and input)"
    ckpt = checkpoint.last_complete_checkpoint(stage_dir, move_aside=False)
    return f"resume from {ckpt.name}" if ckpt else "run (interrupted before its first complete checkpoint)"


def run_stage(cfg: PipelineConfig, index: int, stage: StageConfig, init: Path, overwrite: bool,
              input_from_run: bool = False) -> dict[str, Any]:
    """Run (or skip, or resume) one stage and write its manifest.

    ``input_from_run``: the input model is this run's own product (its base, or the previous stage's output). When
    only that input changed (an upstream stage was rebuilt) the stage's outputs are stale, not a user's mix-up: they
    are moved aside to ``NN_<stage>.stale`` and the stage reruns, and so on down the chain.
    """
    from stages import STAGES

    stage_dir = cfg.run_dir / stage_dir_name(index, stage)
    chash, ihash = stage_config_hash(cfg, stage), checkpoint.dir_hash(init)
    manifest_path = stage_dir / "manifest.json"
    manifest = checkpoint.read_json(manifest_path)
    # every rank decides from the folder as it was: rank 0 writes the running manifest right after, and a rank that
    # read the folder between rank 0's mkdir and that write saw "files but no manifest" and refused to mix runs
    checkpoint.barrier()
    same = bool(manifest) and manifest.get("config_hash") == chash and manifest.get("input_hash") == ihash
    final_dir = Path(manifest.get("final_dir") or stage_dir / "final") if manifest else stage_dir / "final"
    if same and manifest.get("status") == "completed" and (final_dir / "config.json").is_file():
        logger.info("stage %s: finished with the same config and input; skipped", stage.name)
        return _summary(stage, manifest, skipped=True)
    stale_input = bool(manifest) and manifest.get("config_hash") == chash and manifest.get("input_hash") != ihash
    if stage_dir.exists() and any(stage_dir.iterdir()) and not same and stale_input and input_from_run:
        aside = stage_dir.with_name(stage_dir.name + ".stale")
        logger.warning("stage %s: its input %s changed since it ran (an upstream stage was rebuilt); moving its "
                       "outputs aside to %s and running it again", stage.name, init, aside.name)
        if checkpoint.is_main_process():
            if aside.exists():
                shutil.rmtree(aside)
            stage_dir.rename(aside)
        checkpoint.barrier()
    elif stage_dir.exists() and any(stage_dir.iterdir()) and not same:
        if not overwrite:
            what = "config" if manifest and manifest.get("config_hash") != chash else "input model"
            raise PipelineError(
                f"{stage_dir} holds a run with a different {what} (or no manifest); refusing to mix them. "
                "Pass --overwrite to replace it, or set output_dir to a new folder."
            )
        logger.warning("--overwrite: removing %s", stage_dir)
        if checkpoint.is_main_process():
            shutil.rmtree(stage_dir)
        checkpoint.barrier()
    stage_dir.mkdir(parents=True, exist_ok=True)
    base_manifest = {
        "stage": stage.name, "kind": stage.kind, "index": index, "config_hash": chash, "input_model": str(init),
        "input_hash": ihash, "config": to_dict(stage), "router": to_dict(cfg.router_for(stage)),
        "data": ({"sources": to_dict(stage.data.sources), "hash": config_hash(stage.data)} if stage.data else
                 {"suites": to_dict(stage.suites)}),
        "packages": checkpoint.package_versions(), "git_commit": checkpoint.git_commit(),
    }
    if checkpoint.is_main_process():
        checkpoint.write_manifest(manifest_path, {**base_manifest, "status": "running", "started": time.time()},
                                  reserve=True)
    earlier = {s.name: stage_input(cfg, i + 1)[1] for i, s in enumerate(cfg.stages[:index])}
    from align.modeling import resolve_chat_template

    template = resolve_chat_template(cfg.model.chat_template) if cfg.model.chat_template else None
    ctx = StageContext(cfg.run_dir, stage_dir, init, cfg.seed, cfg.router_for(stage), cfg.monitor, cfg.distributed,
                       earlier, template, cfg.model.system_prompt)
    t0 = time.time()
    try:
        result = STAGES[stage.kind](stage, ctx)
    except BaseException as exc:
        full = disk_full(stage_dir, exc)
        if checkpoint.is_main_process():
            error = f"{type(exc).__name__}: {exc}"[:2000]
            checkpoint.write_manifest(manifest_path, {**base_manifest, "status": "failed", "error": error,
                                                      **({"disk_full": True} if full else {})})
        if full:
            raise PipelineError(
                f"stage {stage.name!r}: the disk holding {stage_dir} is full ({shutil.disk_usage(stage_dir).free:,} "
                f"bytes free; {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). Free "
                f"space and rerun the same command: the stage resumes from its last complete checkpoint; manifest: "
                f"{manifest_path}") from exc
        exc.add_note(f"stage {stage.name!r} failed; its manifest: {manifest_path}")
        raise
    manifest = {
        **base_manifest, "status": "completed", "steps": result.steps, "wall_time_s": round(time.time() - t0, 2),
        "final_dir": str(result.final_dir), "output_hash": checkpoint.dir_hash(result.final_dir),
        "metrics": result.metrics, **result.extra, **_sandbox_record(),
    }
    if checkpoint.is_main_process():
        checkpoint.write_json_atomic(manifest_path, manifest)
    checkpoint.barrier()  # the next stage (on every rank) reads this manifest
    return _summary(stage, manifest, skipped=False)


def _sandbox_record() -> dict[str, Any]:
    """``{"sandbox": ...}`` (backend, active and missing protections) when this process resolved a verifier that runs
    generated code in the OS sandbox; else nothing."""
    import sys

    sandbox = sys.modules.get("rewards.sandbox")
    if sandbox is None or not sandbox.backend.cache_info().currsize:
        return {}
    return {"sandbox": sandbox.protections()}


def disk_full(path: Path, exc: BaseException) -> bool:
    """Whether ``exc`` most likely came from a full disk under ``path``: ENOSPC / EDQUOT, or a writer's RuntimeError
    (torch's checkpoint writer reports a full disk as ``iostream error`` / ``unexpected pos``) with under 64 MiB free."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, RuntimeError):
        try:
            return shutil.disk_usage(path).free < 64 << 20
        except OSError:
            return False
    return False


def _summary(stage: StageConfig, manifest: dict[str, Any], skipped: bool) -> dict[str, Any]:
    metrics = manifest.get("metrics", {})
    return {
        "stage": stage.name, "kind": stage.kind, "steps": manifest.get("steps"), "wall_time_s": manifest.get("wall_time_s"),
        "heldout_accuracy": metrics.get("heldout_accuracy"), "heldout_accuracy_before": metrics.get("heldout_accuracy_before"),
        "heldout_n": metrics.get("heldout_n"), "skipped": skipped,
        "by_verifier": metrics.get("heldout_by_verifier") or {},
        "by_verifier_before": metrics.get("heldout_by_verifier_before") or {},
        "final_dir": manifest.get("final_dir"), "ledger": metrics.get("ledger"),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """The end-of-run table: stage, steps, wall time, held-out accuracy (all, and per task = verifier)."""
    head = (f"{'stage':<12} {'kind':<10} {'steps':>6} {'wall s':>8} {'held-out acc':>13} {'(before)':>9} {'n':>5}  "
            "per task: after (before) n")
    lines = [head, "-" * (len(head) + 12)]
    for r in rows:
        acc = "-" if r["heldout_accuracy"] is None else f"{r['heldout_accuracy']:.3f}"
        before = "" if r.get("heldout_accuracy_before") is None else f"{r['heldout_accuracy_before']:.3f}"
        tasks = []
        for name, v in r.get("by_verifier", {}).items():
            b = r.get("by_verifier_before", {}).get(name)
            tasks.append(f"{name} {v['accuracy']:.3f}" + (f" ({b['accuracy']:.3f})" if b else "") + f" {v['n']}")
        note = ("; ".join(tasks) if len(tasks) > 1 else "") + (" [skipped: unchanged]" if r["skipped"] else "")
        lines.append(
            f"{r['stage']:<12} {r['kind']:<10} {r['steps'] if r['steps'] is not None else '-':>6} "
            f"{r['wall_time_s'] if r['wall_time_s'] is not None else '-':>8} {acc:>13} {before:>9} "
            f"{r['heldout_n'] or '-':>5}  {note}"
        )
    return "\n".join(lines)


def run_pipeline_launched(cfg: PipelineConfig, config_path: str | None, overrides: list[str], nproc: int, zero: int,
                          only: str | None = None, init_from: str | Path | None = None,
                          overwrite: bool = False) -> list[dict[str, Any]]:
    """Run the planned stages one after another, each as its own ``accelerate launch`` job on ``nproc`` processes
    (``zero`` 0: plain DDP, 2 or 3: DeepSpeed ZeRO). Each job is ``run_pipeline.py CONFIG --only STAGE``, so it
    resumes, skips and writes manifests exactly as a single-process run does; a fresh process group per stage frees
    every rank's memory between stages. Returns the same summary rows as ``run_pipeline``."""
    from align.runlock import hold_run_lock
    from align.validate import validate_pipeline

    validate_pipeline(cfg, only, init_from)
    with hold_run_lock(cfg.run_dir):  # held for every stage job (they inherit it through the environment)
        return _launch_planned(cfg, config_path, overrides, nproc, zero, only, init_from, overwrite)


def _launch_planned(cfg: PipelineConfig, config_path: str | None, overrides: list[str], nproc: int, zero: int,
                    only: str | None, init_from: str | Path | None, overwrite: bool) -> list[dict[str, Any]]:
    from align.distributed import launch_command, run_launched

    ds_config = None
    if cfg.distributed.ep > 1:  # AutoEP: our ZeRO config with the expert-parallel block, for the model's family
        from align import expert_parallel as ep

        first = plan(cfg, only)[0][0]
        src = stage_input(cfg, first, init_from)[1]
        model_dir = src if (src / "config.json").is_file() else (Path(cfg.model.path) if cfg.model.path else None)
        config = ep.model_config(model_dir, cfg.model.preset, cfg.model.overrides)
        preset = ep.autoep_preset(config, str(model_dir or f"preset {cfg.model.preset}"))
        zero_name = f"zero{cfg.distributed.zero}"
        base = json.loads((Path(__file__).resolve().parent.parent / "configs" / "deepspeed" / f"{zero_name}.json")
                          .read_text())
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        ds_config = cfg.run_dir / f"deepspeed_{zero_name}_ep{cfg.distributed.ep}.json"
        checkpoint.write_json_atomic(ds_config, ep.deepspeed_config(base, cfg.distributed.ep, preset, config))
        logger.info("expert parallelism: AutoEP preset %s, experts over %d ranks, ZeRO-%d over the rest (%s)", preset,
                    cfg.distributed.ep, cfg.distributed.zero, ds_config)
    rows = []
    for pos, (index, stage) in enumerate(plan(cfg, only)):
        args = [config_path or "configs/default.yaml", *overrides, "--only", stage.name]
        if pos == 0 and init_from is not None:
            args += ["--init-from", str(init_from)]
        if overwrite:
            args.append("--overwrite")
        manifest_path = cfg.run_dir / stage_dir_name(index, stage) / "manifest.json"
        started = time.time()
        rc = run_launched(launch_command(args, nproc, zero, ds_config))
        if rc != 0:
            raise PipelineError(f"stage {stage.name!r}: the {nproc}-process job exited with status {rc} (its log is "
                                "above; the stage resumes from its last complete checkpoint when rerun)")
        manifest = checkpoint.read_json(manifest_path) or {}
        skipped = manifest_path.stat().st_mtime < started
        rows.append(_summary(stage, manifest, skipped=skipped))
    return rows

"""align command line: run the whole pipeline, one stage, or inspect.

    python run_pipeline.py                                   # configs/default.yaml, every stage
    python run_pipeline.py configs/x.yaml                    # every stage of x.yaml, in order
    python run_pipeline.py configs/x.yaml --only sft --init-from DIR
    python run_pipeline.py configs/x.yaml output_dir=/tmp/r stages.sft.trainer.learning_rate=3e-4
    python run_pipeline.py configs/x.yaml --dry-run          # resolved config + plan, runs nothing
    python run_pipeline.py configs/x.yaml --nproc 2 --zero 3 # each stage as a 2-process DeepSpeed ZeRO-3 job
    python run_pipeline.py plan --model tiny-deepseek-v4 --gpus 8 --zero 3   # memory per GPU, runs nothing
    python run_pipeline.py --list-stages | --list-verifiers
    python run_pipeline.py report runs/<name>                # regenerate runs/<name>/report.md
    python run_pipeline.py ablate configs/x.yaml --vary stages.grpo.trainer.learning_rate=1e-4,3e-5 [--vary ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

SUBCOMMANDS = {
    "report": "regenerate a run folder's report.md and plots (align report runs/<name>)",
    "ablate": "run config variants and compare them in one report (align ablate x.yaml --vary key=v1,v2)",
    "plan": "per-GPU memory of a training stage, runs nothing (align plan --model deepseek-v3 --gpus 64 --zero 3)",
}


def build_parser() -> argparse.ArgumentParser:
    epilog = "subcommands (run `align <subcommand> --help`):\n" + "\n".join(
        f"  {name:<8} {text}" for name, text in SUBCOMMANDS.items())
    p = argparse.ArgumentParser(prog="align", description="Staged post-training for MoE language models: run every "
                                "stage of a pipeline YAML (or one), resumably.", epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="pipeline YAML (default: configs/default.yaml)")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides; stages by name: stages.sft.trainer.max_steps=10")
    p.add_argument("--only", metavar="STAGE", help="run only this stage (by name)")
    p.add_argument("--init-from", metavar="DIR", help="HF model dir the (first) planned stage starts from")
    p.add_argument("--overwrite", action="store_true", help="replace stage folders whose config or input changed")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan; run nothing")
    p.add_argument("--nproc", type=int, metavar="N", help="launch each stage on N processes (distributed.nproc)")
    p.add_argument("--zero", type=int, choices=(0, 2, 3), help="ZeRO stage of --nproc runs: 0 (DDP), 2, 3 (distributed.zero)")
    p.add_argument("--ep", type=int, metavar="N", help="expert parallelism over N ranks of --nproc (DeepSpeed AutoEP; "
                   "distributed.ep)")
    p.add_argument("--list-stages", action="store_true", help="print the stage kinds and exit")
    p.add_argument("--list-verifiers", action="store_true", help="print every verifier name with its origin and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def report_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="align report", description="Regenerate a run folder's report.md and plots.")
    p.add_argument("run_dir")
    args = p.parse_args(argv)
    from align.console import setup_logging

    setup_logging()
    from align.report import write_report

    try:
        print(write_report(args.run_dir))
    except FileNotFoundError as exc:
        logging.getLogger("align").error("%s", exc)
        return 2
    return 0


def ablate_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="align ablate", description="Run config variants; compare them in one report.")
    p.add_argument("config", help="pipeline YAML")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides shared by every variant")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="a key and its values (repeatable; variants = every combination)")
    p.add_argument("--dry-run", action="store_true", help="list the variants; run nothing")
    args = p.parse_intermixed_args(argv)
    from align.console import setup_logging

    setup_logging()
    from align.ablation import run_ablation, variants
    from align.config import ConfigError
    from align.pipeline import PipelineError
    from data_recipes import DataError

    try:
        if args.dry_run:
            for v in variants(args.vary):
                print(" ".join(v) or "(base)")
            return 0
        print(run_ablation(args.config, args.overrides, args.vary))
    except (ConfigError, PipelineError, DataError, FileNotFoundError, ValueError) as exc:
        logging.getLogger("align").error("%s", exc)
        return 2
    return 0


def plan_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="align plan", description="Per-GPU memory of a training stage; runs nothing.")
    p.add_argument("--model", required=True,
                   help="a preset (tiny-deepseek-v4...), a planning config (deepseek-v3, qwen3-30b-a3b, mixtral-8x7b), "
                        "a config.json or a model directory")
    p.add_argument("--gpus", type=int, default=8, help="GPUs in total (all nodes)")
    p.add_argument("--zero", type=int, choices=(0, 2, 3), default=3)
    p.add_argument("--lora", action="store_true", help="LoRA on attention, experts and router (align's default targets)")
    p.add_argument("--ep", type=int, default=1, help="expert parallelism: ranks each MoE layer's experts are split over")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--no-checkpointing", action="store_true", help="activations without activation checkpointing")
    p.add_argument("--rollout-tokens", type=int, help="prompt + completion tokens per GRPO rollout (default: --seq-len)")
    p.add_argument("--rollout-sequences", type=int, default=8, help="sequences generated at once per GPU")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = p.parse_args(argv)
    from align.console import setup_logging

    setup_logging()
    logging.getLogger().handlers[0].setLevel(logging.WARNING)
    from align.planner import format_plan, plan

    try:
        result = plan(args.model, args.gpus, args.zero, lora=args.lora, seq_len=args.seq_len,
                      micro_batch=args.micro_batch, checkpointing=not args.no_checkpointing,
                      rollout_tokens=args.rollout_tokens, rollout_sequences=args.rollout_sequences, ep=args.ep)
    except (FileNotFoundError, ValueError) as exc:
        logging.getLogger("align").error("%s", exc)
        return 2
    import json

    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0


def is_expected_failure(exc: BaseException) -> bool:
    """Failures a user causes or can fix (config, data, verifier files, a busy run folder, a full disk...): reported
    in one line with exit status 2. Anything else is a bug and keeps its traceback."""
    from align.checkpoint import CheckpointError
    from align.config import ConfigError
    from align.distributed import DistributedError
    from align.monitor import MonitorError
    from align.pipeline import PipelineError
    from align.runlock import RunLockError
    from data_recipes import DataError

    expected = (ConfigError, PipelineError, DataError, MonitorError, DistributedError, RunLockError, CheckpointError,
                OSError, UnicodeError, SyntaxError, KeyError)
    return isinstance(exc, expected) or type(exc).__module__.startswith("pyarrow")


def one_line(exc: BaseException) -> str:
    """The message of an expected failure: what and where (file, line), plus notes such as the stage manifest."""
    if isinstance(exc, SyntaxError):
        msg = f"syntax error in {exc.filename}, line {exc.lineno}: {exc.msg}"
    elif isinstance(exc, OSError) and exc.filename:
        msg = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, KeyError):
        msg = str(exc.args[0]) if exc.args else "KeyError"
    elif type(exc).__module__.split(".")[0] in ("builtins", "pyarrow"):  # not ours: its type says what went wrong
        msg = f"{type(exc).__name__}: {exc}"
    else:
        msg = str(exc) or type(exc).__name__
    notes = [n for n in getattr(exc, "__notes__", []) if n]
    return "; ".join([msg, *notes]) if notes else msg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "plan":
        return plan_main(argv[1:])
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    if argv and argv[0] == "ablate":
        return ablate_main(argv[1:])
    args = build_parser().parse_intermixed_args(argv)  # overrides may come after options too
    from align.console import add_run_log, setup_logging

    setup_logging(args.verbose)
    # a positional "key=value" given first is an override, not a config path
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)
        args.config = None

    if args.list_stages:
        from align.config import STAGE_CONFIGS

        for kind, cls in STAGE_CONFIGS.items():
            print(f"{kind:<10} {(cls.__doc__ or '').strip().splitlines()[0].split(': ', 1)[-1]}")
        return 0
    if args.list_verifiers:
        from rewards import get_verifier, list_verifiers

        for name, origin in list_verifiers():
            try:
                v = get_verifier(name)
                doc = ((v.fn.__doc__ or "").strip().splitlines() or [""])[0]
                runs = v.runs
            except Exception as exc:  # noqa: BLE001 - e.g. the code sandbox unavailable here: say so on its line
                doc, runs = f"unavailable here: {str(exc).splitlines()[0][:80]}", "-"
            print(f"{name:<14} {runs:<7} {doc}  [{origin}]")
        return 0

    from align.config import dump_yaml, load_config
    from align.distributed import is_main_process, world_size
    from align.pipeline import (
        format_table,
        plan,
        run_pipeline,
        run_pipeline_launched,
        stage_dir_name,
        stage_input,
        stage_status,
    )

    try:
        if args.nproc is not None:
            args.overrides.append(f"distributed.nproc={args.nproc}")
        if args.zero is not None:
            args.overrides.append(f"distributed.zero={args.zero}")
        if args.ep is not None:
            args.overrides.append(f"distributed.ep={args.ep}")
        cfg = load_config(args.config, args.overrides)
        if not args.dry_run and is_main_process():
            add_run_log(cfg.run_dir)
        if args.dry_run:
            print(dump_yaml(cfg))
            print(f"# plan (run folder {cfg.run_dir}):")
            for pos, (index, stage) in enumerate(plan(cfg, args.only)):
                source, src = stage_input(cfg, index, args.init_from if pos == 0 else None)
                print(f"#   {stage_dir_name(index, stage)}  kind={stage.kind}  from {src} ({source}): "
                      f"{stage_status(cfg, index, src)}")
            from align.validate import validate_pipeline

            for name, info in validate_pipeline(cfg, args.only, args.init_from).items():
                print(f"#   {name}: " + ", ".join(f"{k}={v}" for k, v in info.items()))
            print("# checks passed: configs, verifiers and data")
            return 0
        # a run already launched on several ranks (accelerate launch, or our own launch below) runs in-process
        if cfg.distributed.nproc > 1 and world_size() == 1 and not os.environ.get("ALIGN_LAUNCHED"):
            rows = run_pipeline_launched(cfg, args.config, args.overrides, cfg.distributed.nproc, cfg.distributed.zero,
                                         only=args.only, init_from=args.init_from, overwrite=args.overwrite)
        else:
            rows = run_pipeline(cfg, only=args.only, init_from=args.init_from, overwrite=args.overwrite)
    except BaseException as exc:  # noqa: BLE001 - sorted into expected (one line, exit 2) and unexpected below
        if not is_expected_failure(exc):
            raise  # a bug: Python prints the traceback (with the stage manifest's path as a note)
        for line in one_line(exc).splitlines():
            logging.getLogger("align").error("%s", line)
        return 2
    from align.distributed import shutdown

    shutdown()
    if not is_main_process():  # one table, one report: rank 0's
        return 0
    print()
    print(format_table(rows))
    from align.ledger import ledger_lines

    for r in rows:
        if r.get("ledger"):  # an eval stage: every suite x every graded stage, regressions flagged
            print(f"\nskill ledger ({r['stage']}):")
            print("\n".join(ledger_lines(r["ledger"])))
    from align.report import write_report

    print(f"report: {write_report(cfg.run_dir)}")
    print(f"\nrun folder: {cfg.run_dir}")
    return 0


if __name__ == "__main__":
    from align.distributed import exit_process

    exit_process(main())

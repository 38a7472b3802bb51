"""TRL's dataset preparation (chat template, tokenization, assistant mask, labels) in one process vs a worker pool.

    python bench/prep_speed.py [--config bench/configs/recall.yaml] [--stage retrieval] [--procs 2]

Anchor (same run): ``dataset_num_proc=1``, TRL's default. Ours: ``align.training.prep_processes`` of the stage's rows
(what ``train_sft`` passes; ``--procs`` overrides it). The rows are the stage's own training rows (``build_rows``),
rendered in their modes, through ``SFTTrainer.__init__`` on the preset model; prints seconds and the ratio, and
checks both give the same token ids and labels.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def prepare(rows: list[dict], procs: int) -> tuple[float, object]:
    """Seconds ``SFTTrainer`` takes to prepare ``rows`` with ``procs`` processes, and the prepared dataset."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from align import modeling
    from align.thinking import row_thinking, template_kwargs
    from align.training import trainer_defaults

    tok = modeling.build_tokenizer()
    cls, kwargs = modeling.PRESETS["tiny-deepseek-v4"]((len(tok) + 7) // 8 * 8, tok)
    model = AutoModelForCausalLM.from_config(cls(**kwargs))
    dataset = Dataset.from_list([{"messages": r["messages"], "chat_template_kwargs": template_kwargs(row_thinking(r))}
                                 for r in rows])
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(**{**trainer_defaults(Path(out), 0), "dataset_num_proc": procs})
        t0 = time.perf_counter()
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
        return time.perf_counter() - t0, trainer.train_dataset


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(Path(__file__).parent / "configs" / "recall.yaml"))
    p.add_argument("--stage", default="retrieval")
    p.add_argument("--procs", type=int, help="worker processes (default: what align.training.prep_processes picks)")
    args = p.parse_args()

    from align.config import load_config
    from align.training import prep_processes
    from data_recipes.mixture import build_rows

    cfg = load_config(args.config)
    stage = next(s for s in cfg.stages if s.name == args.stage)
    rows = build_rows(stage.data, "train", cfg.seed, stage.kind)
    procs = args.procs or prep_processes(len(rows))
    anchor, ref = prepare(rows, 1)
    ours, got = prepare(rows, procs)
    same = ref["input_ids"] == got["input_ids"] and ref["labels"] == got["labels"]
    print(f"{len(rows)} rows of stage {args.stage!r}: 1 process {anchor:.1f} s | {procs} processes {ours:.1f} s | "
          f"ratio {ours / anchor:.2f} | same ids and labels: {same}")


if __name__ == "__main__":
    main()

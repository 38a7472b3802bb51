"""The anchor of bench/grpo_overhead.py: a plain TRL GRPO script, as a user would write it without align.

    python bench/plain_grpo.py MODEL_DIR OUT_DIR STEPS [SEED] [cpu-defaults]

Same task, reward and settings as the overhead bench's run of our grpo stage: 2-digit + and - prompts, exact-match
reward on the text after the last </think>, 32 prompts x 8 completions per step, temperature 0.3, lr 1e-4.
TRL's own defaults otherwise (gradient checkpointing on); ``cpu-defaults`` turns gradient checkpointing off, as
align's CPU defaults do, so the two differ only in what align adds.
"""

import sys

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from data_recipes.arithmetic import arithmetic

model_dir, out_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
cpu_defaults = len(sys.argv) > 5 and sys.argv[5] == "cpu-defaults"
rows = arithmetic("train", 12000, seed, digits=2, ops=["+", "-"])
dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])


def exact(completions, answer, **kwargs):
    return [float(c[0]["content"].rsplit("</think>", 1)[-1].strip() == a) for c, a in zip(completions, answer)]


tok = AutoTokenizer.from_pretrained(model_dir)
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(model_dir)
model.config.output_router_logits = False
args = GRPOConfig(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=256, num_generations=8,
                  max_completion_length=8, temperature=0.3, learning_rate=1e-4, lr_scheduler_type="cosine",
                  warmup_steps=20, beta=0.0, logging_steps=20, save_strategy="no", report_to="none",
                  use_cpu=True, bf16=False, seed=seed, router_aux_loss_coef=0.0,
                  **({"gradient_checkpointing": False} if cpu_defaults else {}))
trainer = GRPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, reward_funcs=[exact])
trainer.train()
trainer.save_model(out_dir + "/final")

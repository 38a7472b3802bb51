"""Can the tiny DeepSeek-V4 preset learn needle retrieval, and what in its attention layout decides it?

    python bench/retrieval_layout.py [--steps 600] [--variants base,sw512,...] [--parallel 1] [--device cpu]

Each variant trains a fresh preset model (seed 0) on needle rows (answer only, the code word after a filler context)
with a plain AdamW loop on the assistant tokens — the same loss the SFT stage's assistant-only mode computes, without
TRL, so many variants fit one run — and grades greedy retrieval every ``--eval-every`` steps on the ``needle`` eval
suite's problems (held-out code words, 400-character context, needle at 5 / 50 / 95 % depth). Variants differ in the
model's attention layout (``sliding_window``, which layers use compressed-sparse attention), the training
contexts' lengths, the code word's alphabet (``digits-*``: 5-digit pass keys), a dense copy task mixed in
(``copy-*``), the quote-then-answer trace (``trace-*``, graded in the template's default mode, which is thinking) and
curricula of context lengths (``phases``: short contexts first, each phase with its own steps and batch size;
``--steps`` does not apply to them). Printed: accuracy by depth per checkpoint, and each variant's step time relative to ``base`` (the
preset as shipped, same run). ``--parallel N`` runs N variants at once, each with ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SLIDING, CSA = "sliding_attention", "compressed_sparse_attention"
# variant -> model config overrides, training context characters (min, max), and optionally another preset, learning
# rate, batch size, or the loss on every token (``full_loss``) instead of the assistant turn only
SW = {"sliding_window": 512}
VARIANTS: dict[str, dict] = {
    "base": {"context": (400, 400)},
    "base-mixed": {"context": (40, 400)},
    "sw512": {"overrides": SW, "context": (400, 400)},
    "sw512-mixed": {"overrides": SW, "context": (40, 400)},
    "sw512-short": {"overrides": SW, "context": (40, 160)},
    "all-sliding-512-mixed": {"overrides": {**SW, "layer_types": [SLIDING] * 3}, "context": (40, 400)},
    "csa-first-512-mixed": {"overrides": {**SW, "layer_types": [CSA, SLIDING, SLIDING]}, "context": (40, 400)},
    "sw512-mixed-topk32": {"overrides": {**SW, "index_topk": 32}, "context": (40, 400)},
    "qwen3-moe-short": {"context": (40, 160), "preset": "tiny-qwen3-moe"},
    "sw512-tiny": {"overrides": SW, "context": (10, 40)},
    "sw512-tiny-lr1e-3": {"overrides": SW, "context": (10, 40), "lr": 1e-3},
    "sw512-tiny-kv4": {"overrides": {**SW, "num_key_value_heads": 4}, "context": (10, 40)},
    "sw512-tiny-full-loss": {"overrides": SW, "context": (10, 40), "full_loss": True},
    "sw512-tiny-b64": {"overrides": SW, "context": (10, 40), "batch": 64},
    "sw512-tiny-4layers": {"overrides": {**SW, "num_hidden_layers": 4, "layer_types": [SLIDING] * 3 + [CSA],
                                         "mlp_layer_types": ["hash_moe", "moe", "moe", "moe"]}, "context": (10, 40)},
    "sw512-tiny-wide": {"overrides": {**SW, "hidden_size": 128, "num_key_value_heads": 4}, "context": (10, 40)},
    "qwen3-moe-tiny": {"context": (10, 40), "preset": "tiny-qwen3-moe"},
    # pass keys (5 digits, characters the filler never holds) instead of letter code words
    "digits-tiny": {"context": (10, 40), "needle": {"code": "digits"}},
    "digits-mixed": {"context": (40, 400), "needle": {"code": "digits"}},
    "digits-sw512-tiny": {"overrides": SW, "context": (10, 40), "needle": {"code": "digits"}},
    "digits-sw512-mixed": {"overrides": SW, "context": (40, 400), "needle": {"code": "digits"}},
    # half the rows a dense copy task ("repeat this string": every answer token is a copy), the needle's sparse copy
    # signal (5 answer tokens per row) helped by a task that teaches copying itself
    "copy-tiny": {"context": (10, 40), "copy": 0.5},
    "copy-mixed": {"context": (40, 400), "copy": 0.5},
    "copy-tiny-lr1e-3": {"context": (10, 40), "copy": 0.5, "lr": 1e-3},
    # the quote-then-answer trace (thinking: "<think>the code word is X .</think>X"): the first copy becomes an
    # induction step (the model has just written "the code word is "), the answer a copy a few characters back
    "trace-sw512-tiny": {"overrides": SW, "context": (10, 40), "needle": {"style": "trace"}, "lr": 1e-3},
    "trace-sw512-mixed": {"overrides": SW, "context": (40, 400), "needle": {"style": "trace"}, "lr": 1e-3},
    # curricula: (steps, shortest, longest context) phases in order; the copy forms in short contexts first
    "trace-sw512-curriculum": {"overrides": SW, "phases": [(800, 10, 40), (400, 100, 400)],
                               "needle": {"style": "trace"}, "lr": 1e-3},
    "trace-sw512-curriculum-b4": {"overrides": SW, "phases": [(800, 10, 40), (800, 100, 400, 4)],
                                  "needle": {"style": "trace"}, "lr": 1e-3},
    "trace-sw512-wide": {"overrides": SW, "context": (10, 400), "needle": {"style": "trace"}, "lr": 1e-3},
    "sw512-tiny-full-loss-lr1e-3": {"overrides": SW, "context": (10, 40), "full_loss": True, "lr": 1e-3},
    # the copy's onset against the learning rate and the batch (steps to form it decide a first stage's cost)
    "trace-tiny-lr2e-3": {"context": (10, 40), "needle": {"style": "trace"}, "lr": 2e-3},
    "trace-tiny-lr3e-3": {"context": (10, 40), "needle": {"style": "trace"}, "lr": 3e-3},
    "trace-tiny-const": {"context": (10, 40), "needle": {"style": "trace"}, "lr": 1e-3, "schedule": "constant"},
    "trace-tiny-b8": {"context": (10, 40), "needle": {"style": "trace"}, "lr": 1e-3, "batch": 8},
    "trace-tiny-b8-lr2e-3": {"context": (10, 40), "needle": {"style": "trace"}, "lr": 2e-3, "batch": 8},
    # the onset of the copy against the preset's attention heads and hyper-connections (session 9)
    "trace-tiny": {"context": (10, 40), "needle": {"style": "trace"}, "lr": 1e-3},
    "trace-tiny-h8": {"overrides": {"num_attention_heads": 8, "head_dim": 16}, "context": (10, 40),
                      "needle": {"style": "trace"}, "lr": 1e-3},
    "trace-tiny-hc1": {"overrides": {"hc_mult": 1}, "context": (10, 40), "needle": {"style": "trace"}, "lr": 1e-3},
    "trace-tiny-h8-hc1": {"overrides": {"num_attention_heads": 8, "head_dim": 16, "hc_mult": 1}, "context": (10, 40),
                          "needle": {"style": "trace"}, "lr": 1e-3},
}


def copy_rows(n: int, seed: int, lo: int = 8, hi: int = 32) -> list[dict]:
    """``n`` rows of "repeat this string" (lower-case letters and digits, ``lo``-``hi`` characters)."""
    rng = random.Random(f"copy/{seed}")
    rows = []
    for _ in range(n):
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(lo, hi)))
        rows.append({"messages": [{"role": "user", "content": f"{text}\nRepeat it."},
                                  {"role": "assistant", "content": text}]})
    return rows


def encode(tok, rows: list[dict], full_loss: bool = False) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels with -100 outside the assistant turn unless ``full_loss``) per row, through the preset's
    chat template."""
    out = []
    for r in rows:
        enc = tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = enc["input_ids"], enc["assistant_masks"]
        out.append((ids, [t if m or full_loss else -100 for t, m in zip(ids, mask)]))
    return out


@torch.no_grad()
def greedy(model, tok, rows: list[dict], device: str, max_new: int = 6) -> list[str]:
    """Greedy completions, one batch per prompt length (no padding), full forward per token (no cache needed)."""
    model.eval()
    texts = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    by_len: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_len.setdefault(len(x), []).append(i)
    out = [""] * len(rows)
    for idx in by_len.values():
        x = torch.tensor([ids[i] for i in idx], device=device)
        new = []
        for _ in range(max_new):
            nxt = model(input_ids=x).logits[:, -1].argmax(-1, keepdim=True)
            new.append(nxt)
            x = torch.cat([x, nxt], 1)
        gen = torch.cat(new, 1).tolist()
        for j, i in enumerate(idx):
            ids_j = gen[j][: gen[j].index(tok.eos_token_id)] if tok.eos_token_id in gen[j] else gen[j]  # stop at EOS
            out[i] = tok.decode(ids_j, skip_special_tokens=True)
    model.train()
    return out


def run_variant(name: str, steps: int, batch: int, lr: float, eval_every: int, device: str, threads: int,
                seed: int, max_seconds: float, suite_at_end: bool = False) -> dict:
    import tempfile

    from transformers import AutoModelForCausalLM

    from align import modeling
    from data_recipes.needle import needle
    from rewards.retrieval import verify as retrieval

    torch.set_num_threads(threads)
    v = VARIANTS[name]
    lr, batch = v.get("lr", lr), v.get("batch", batch)
    phases = v.get("phases", [(steps, *v.get("context", (0, 0)))])
    hi = phases[-1][2]
    with tempfile.TemporaryDirectory() as tmp:
        path = modeling.build_base(v.get("preset", "tiny-deepseek-v4"), v.get("overrides", {}), seed, tmp)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
        tok = modeling.build_tokenizer()
    rng = random.Random(seed)
    train = []
    sizes = []  # batch size per step
    for p, (n_steps, lo, hi, *rest) in enumerate(phases):
        size = rest[0] if rest else batch
        sizes += [size] * n_steps
        # context lengths spread over [lo, hi] in 8 bands (each band its own recipe call, as a data mixture)
        bands = sorted({lo + (hi - lo) * k // 7 for k in range(8)}) if hi > lo else [lo]
        rows = []
        per = n_steps * size // len(bands) + 1
        for k, chars in enumerate(bands):
            rows += encode(tok, needle("train", per, seed + 17 * k + 1000 * p, context_chars=chars,
                                       **v.get("needle", {})), v.get("full_loss", False))
        rng.shuffle(rows)  # before the copy rows take their share: the bands are in order of length
        if v.get("copy"):  # replace that share of the rows with copy rows
            k = int(len(rows) * v["copy"])
            rows = rows[k:] + encode(tok, copy_rows(k, seed + p), v.get("full_loss", False))
            rng.shuffle(rows)
        train += rows[: n_steps * size]
    steps = len(sizes)
    starts = [0, *itertools.accumulate(sizes)]  # row offset of each step's batch
    suite = needle("heldout", 60, seed, context_chars=400, depths=[0.05, 0.5, 0.95], **v.get("needle", {}))
    # the longest training context, random depth
    own = needle("heldout", 30, seed + 1, context_chars=hi, **v.get("needle", {}))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    decay = (lambda s: 1.0) if v.get("schedule") == "constant" else (
        lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))  # cosine (the default) or constant
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30) * decay(s))
    history, times = [], []
    phase_ends = {sum(ph[0] for ph in phases[: i + 1]) for i in range(len(phases))}
    start = time.monotonic()
    for step in range(1, steps + 1):
        last = step == steps or time.monotonic() - start > max_seconds  # a wall-clock budget ends the run early
        chunk = train[starts[step - 1]: starts[step]]
        width = max(len(ids) for ids, _ in chunk)
        x = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i, _ in chunk], device=device)
        y = torch.tensor([[-100] * (width - len(lab)) + lab for _, lab in chunk], device=device)
        att = (torch.arange(width, device=device)[None] >= torch.tensor([width - len(i) for i, _ in chunk],
                                                                          device=device)[:, None]).long()
        t0 = time.perf_counter()
        loss = model(input_ids=x, attention_mask=att, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
        if step % eval_every == 0 or last or step in phase_ends:
            max_new = 34 if v.get("needle", {}).get("style") == "trace" else 6
            # the 400-character suite is the slow part of an evaluation; --suite-at-end grades only the own contexts
            # between phase ends
            comps = [] if suite_at_end and not (last or step in phase_ends) else greedy(model, tok, suite, device,
                                                                                        max_new)
            by_depth: dict[float, list[float]] = {}
            for r, c in zip(suite, comps):
                by_depth.setdefault(r["meta"]["depth"], []).append(float(retrieval(c, r["answer"]).score))
            acc = {str(d): sum(x) / len(x) for d, x in sorted(by_depth.items())}
            own_acc = sum(float(retrieval(c, r["answer"]).score) for r, c in zip(own, greedy(model, tok, own, device, max_new)))
            history.append({"step": step, "loss": round(loss.item(), 4), "by_depth": acc, "own": own_acc / len(own)})
            print(f"{name:>26} step {step:5d} loss {loss.item():.3f} needle by depth {acc} own ({hi} chars) "
                  f"{own_acc / len(own):.2f}", flush=True)
        if last:
            break
    return {"variant": name, "history": history, "median_step_s": sorted(times)[len(times) // 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="base,sw512,sw512-mixed,all-sliding-512-mixed")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=float("inf"), help="per variant: stop training after this")
    ap.add_argument("--suite-at-end", action="store_true", help="grade the 400-character suite at phase ends only")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    jobs = [(n, args.steps, args.batch, args.lr, args.eval_every, args.device, args.threads, args.seed,
             args.max_seconds, args.suite_at_end) for n in names]
    if args.parallel > 1:
        with mp.get_context("spawn").Pool(args.parallel) as pool:
            results = pool.starmap(run_variant, jobs)
    else:
        results = [run_variant(*j) for j in jobs]
    anchor = next((r["median_step_s"] for r in results if r["variant"] == "base"), None)
    print("\n| variant | steps | needle 5 % / 50 % / 95 % (final) | best mean | own context (final) | step time vs base |")
    print("|---|---|---|---|---|---|")
    for r in results:
        final = r["history"][-1]["by_depth"]
        best = max(sum(h["by_depth"].values()) / len(h["by_depth"]) for h in r["history"] if h["by_depth"])
        ratio = f"{r['median_step_s'] / anchor:.2f}" if anchor else "-"
        print(f"| {r['variant']} | {r['history'][-1]['step']} | {' / '.join(f'{v:.2f}' for v in final.values())} "
              f"| {best:.2f} | {r['history'][-1]['own']:.2f} | {ratio} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Chain arithmetic: a run of small integers joined by ``+`` / ``-`` (``7+5-3+9=``), a mixture of lengths.

A task where reasoning traces pay: the answer-only model has to add several numbers at once, the traced model adds
one number per step (``7+5=12;12-3=9;9+9=18``). Longer chains are harder, so a batch mixes difficulties and GRPO
groups keep reward variance. Deterministic by seed; train and held-out splits are disjoint by construction (a hash
of the problem text picks its split). Graded by ``exact``.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from data_recipes.registry import register_recipe
from data_recipes.splits import in_heldout


def running_trace(terms: list[int], ops: list[str]) -> tuple[str, int]:
    """The step-by-step trace and the result: each step folds the first two numbers and restates the rest, so every
    step reads only the start of the previous line (no counting which term comes next).

    >>> running_trace([7, 5, 3, 9], ["+", "-", "+"])
    ('12-3+9;9+9;18', 18)
    """
    acc, steps = terms[0], []
    for i, (op, t) in enumerate(zip(ops, terms[1:])):
        acc = acc + t if op == "+" else acc - t
        steps.append(str(acc) + "".join(f"{o}{x}" for o, x in zip(ops[i + 1 :], terms[i + 2 :])))
    return ";".join(steps), acc


@register_recipe("chain")
def chain(
    split: Literal["train", "heldout"],
    n: int,
    seed: int,
    min_terms: int = 3,
    max_terms: int = 5,
    max_value: int = 9,
    ops: tuple[str, ...] | list[str] = ("+", "-"),
    style: Literal["answer", "trace"] = "answer",
) -> list[dict[str, Any]]:
    """``n`` distinct chains of ``min_terms``..``max_terms`` numbers in ``0..max_value``."""
    if not 2 <= min_terms <= max_terms:
        raise ValueError("chain: need 2 <= min_terms <= max_terms")
    if not set(ops) <= {"+", "-"} or not ops:
        raise ValueError(f"chain: ops must be a non-empty subset of ['+', '-'], got {list(ops)}")
    rng = random.Random(f"chain/{split}/{seed}")
    want_heldout = split == "heldout"
    rows, seen = [], set()
    budget = 50 * n + 1000
    while len(rows) < n and budget > 0:
        budget -= 1
        k = rng.randint(min_terms, max_terms)
        terms = [rng.randint(0, max_value) for _ in range(k)]
        signs = [rng.choice(list(ops)) for _ in range(k - 1)]
        text = str(terms[0]) + "".join(f"{o}{t}" for o, t in zip(signs, terms[1:])) + "="
        if text in seen or in_heldout(text) != want_heldout:
            continue
        seen.add(text)
        trace, result = running_trace(terms, signs)
        answer = str(result)
        prompt = [{"role": "user", "content": text}]
        content = f"<think>{trace}</think>{answer}" if style == "trace" else answer
        rows.append({"messages": [*prompt, {"role": "assistant", "content": content}], "prompt": prompt,
                     "answer": answer, "verifier": "exact"})
    if len(rows) < n:
        raise ValueError(f"chain: could not draw {n} distinct {split} problems; widen the term range")
    return rows

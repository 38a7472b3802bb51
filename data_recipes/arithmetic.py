"""Integer arithmetic (``a + b``, ``a - b``) with exact answers and column-by-column reasoning traces.

Deterministic by seed. Train and held-out splits are disjoint by construction: a problem belongs to the held-out
split iff a hash of its text falls in the held-out bucket (``data_recipes.splits``, 10 % of the space), and each split
only ever emits problems of its own bucket.

Row: ``messages`` (user prompt + assistant answer, with a ``<think>`` trace when ``style="trace"``), ``prompt``,
``answer`` (the literal result), ``verifier="exact"``.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from data_recipes.registry import register_recipe
from data_recipes.splits import in_heldout


def column_trace(a: int, op: str, b: int) -> str:
    """A step-by-step trace: digit columns right to left with carries (or borrows), then the result.

    >>> column_trace(47, "+", 85)
    '7+5=12 c1;4+8+1=13 c1;=132'
    """
    if op == "-" and a < b:
        inner = column_trace(b, "-", a).rsplit(";", 1)[0]  # a - b = -(b - a)
        return f"-({b}-{a});{inner};=-{b - a}"
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        if op == "+":
            s = x + y + carry
            steps.append(f"{x}+{y}{'+1' if carry else ''}={s}{' c1' if s >= 10 else ''}")
            carry = int(s >= 10)
        else:
            s = x - y - carry
            steps.append(f"{x}-{y}{'-1' if carry else ''}={s}{' b1' if s < 0 else ''}")
            carry = int(s < 0)
    result = a + b if op == "+" else a - b
    return ";".join(steps) + f";={result}"


def dropped_carry_demo(a: int, b: int) -> tuple[str, str]:
    """(trace, answer) of a teacher that forgets the carry out of the top column of ``a + b``.

    >>> dropped_carry_demo(746, 312)
    ('6+2=8;4+1=5;7+3=10;=058', '058')
    """
    trace = column_trace(a, "+", b)
    steps = trace.split(";")[:-1]
    steps[-1] = steps[-1].removesuffix(" c1")
    columns = max(len(str(a)), len(str(b)))
    wrong = str((a + b) % 10**columns).zfill(columns)
    return ";".join(steps) + f";={wrong}", wrong


def _problem(rng: random.Random, digits: int, ops: tuple[str, ...], mixed: bool) -> tuple[int, str, int]:
    if mixed:  # a mixture of difficulties: each operand gets 1..digits digits
        da, db = rng.randint(1, digits), rng.randint(1, digits)
    else:
        da = db = digits
    a = rng.randrange(10 ** (da - 1) if da > 1 else 0, 10**da)
    b = rng.randrange(10 ** (db - 1) if db > 1 else 0, 10**db)
    return a, rng.choice(ops), b


@register_recipe("arithmetic")
def arithmetic(
    split: Literal["train", "heldout"],
    n: int,
    seed: int,
    digits: int = 3,
    ops: tuple[str, ...] | list[str] = ("+", "-"),
    style: Literal["answer", "trace"] = "answer",
    mixed_lengths: bool = False,
    teacher_drops_carry: float = 0.0,
) -> list[dict[str, Any]]:
    """``n`` distinct problems of ``split``; ``style="trace"`` puts a column trace in ``<think>`` before the answer.

    ``teacher_drops_carry``: an imperfect teacher, as when traces are distilled from a weaker model. In this fraction
    of the *training* rows of ``a + b`` whose sum carries out of the top column, the demonstration (trace and
    answer) forgets that carry (``746+312`` -> ``058``). Each row's ``answer``, the gold the verifiers grade
    against, stays correct, and held-out rows are never corrupted. Supervised stages imitate the mistake;
    verifier-rewarded RL can undo it.
    """
    ops = tuple(ops)
    if not set(ops) <= {"+", "-"} or not ops:
        raise ValueError(f"arithmetic: ops must be a non-empty subset of ['+', '-'], got {list(ops)}")
    if digits < 1:
        raise ValueError("arithmetic: digits must be >= 1")
    if not 0.0 <= teacher_drops_carry <= 1.0:
        raise ValueError(f"arithmetic: teacher_drops_carry must be in [0, 1], got {teacher_drops_carry}")
    rng = random.Random(f"arithmetic/{split}/{seed}")
    teacher = random.Random(f"arithmetic/teacher/{split}/{seed}")  # its own stream: the problems stay the same
    want_heldout = split == "heldout"
    rows, seen = [], set()
    low = 0 if mixed_lengths or digits == 1 else 10 ** (digits - 1)
    space = (10**digits - low) ** 2 * len(ops)
    if n > space:  # refuse at once instead of drawing 50 n times
        raise ValueError(f"arithmetic: asked for {n} {split} problems, the whole problem space (both splits) holds "
                         f"{space} (digits={digits}, mixed_lengths={mixed_lengths})")
    budget = 50 * n + 1000
    while len(rows) < n and budget > 0:
        budget -= 1
        a, op, b = _problem(rng, digits, ops, mixed_lengths)
        text = f"{a}{op}{b}="
        if text in seen or in_heldout(text) != want_heldout:
            continue
        seen.add(text)
        answer = str(a + b if op == "+" else a - b)
        trace, shown = column_trace(a, op, b), answer
        slip = teacher.random() < teacher_drops_carry  # drawn for every row, so rows do not shift
        if slip and split == "train" and op == "+" and len(answer) > max(len(str(a)), len(str(b))):
            trace, shown = dropped_carry_demo(a, b)
        content = f"<think>{trace}</think>{shown}" if style == "trace" else shown
        prompt = [{"role": "user", "content": text}]
        rows.append(
            {
                "messages": [*prompt, {"role": "assistant", "content": content}],
                "prompt": prompt,
                "answer": answer,
                "verifier": "exact",
            }
        )
    if len(rows) < n:
        raise ValueError(f"arithmetic: asked for {n} {split} problems, the whole problem space (both splits) holds {space} (digits={digits}, mixed_lengths={mixed_lengths})")
    return rows

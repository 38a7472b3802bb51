"""Evaluation suites: procedural, offline task families graded by the training verifiers.

The evaluation plan we follow: mathematics (final-answer accuracy), code (unit-test pass rate), long context (a needle
at 5 %, 50 % and 95 % depth, and two-hop answers across separated passages), instruction following (format
constraints). Each suite is a recipe's **held-out** split (a hash bucket no training split ever emits, see
``data_recipes.splits``), so no suite problem can be trained on by any stage that uses these recipes.

Recipes defined here (usable for training too, through their ``train`` split): ``code_functions`` (small Python
functions with unit tests, ``code`` verifier), ``instructions`` (prompts with verifiable format constraints,
``instructions`` verifier), ``two_hop`` (two passages far apart; the answer needs both, ``retrieval`` verifier).
``SUITES`` names the built-in suites an ``eval`` stage can list by name.
"""

from __future__ import annotations

import random
import string
from typing import Any, Literal

from data_recipes.needle import context_range, filler_words
from data_recipes.registry import register_recipe
from data_recipes.splits import in_heldout

Split = Literal["train", "heldout"]

# name -> (recipe, recipe kwargs, verifier override or None, max_new_tokens, thinking mode). The mode is the one a
# hybrid model is asked in (``align.thinking``; a suite's ``thinking:`` overrides it; a template without the switch
# renders its one mode): answer-only skills without reasoning, the multi-step math suite with it.
SUITES: dict[str, tuple[str, dict[str, Any], str | None, int, bool]] = {
    "arithmetic": ("arithmetic", {"digits": 2, "ops": ["+", "-"]}, None, 32, False),
    "math": ("arithmetic", {"digits": 3, "ops": ["+", "-"]}, "math", 48, True),
    "code": ("code_functions", {}, None, 96, False),
    "needle": ("needle", {"context_chars": 400, "depths": [0.05, 0.5, 0.95]}, None, 40, False),
    "needle_long": ("needle", {"context_chars": 2000, "depths": [0.05, 0.5, 0.95]}, None, 40, False),
    "two_hop": ("two_hop", {"context_chars": 400}, None, 32, False),
    "instructions": ("instructions", {}, None, 64, False),
}


def _rows_until(n: int, split: Split, make: Any, rng: random.Random) -> list[dict[str, Any]]:
    """Draw problems from ``make(rng) -> (key, row)`` until ``n`` distinct ones of ``split`` are found."""
    rows, seen = [], set()
    budget = 200 * n + 1000
    while len(rows) < n and budget > 0:
        budget -= 1
        key, row = make(rng)
        if key in seen or in_heldout(key) != (split == "heldout"):
            continue
        seen.add(key)
        rows.append(row)
    if len(rows) < n:
        raise ValueError(f"asked for {n} {split} problems, only {len(rows)} distinct ones exist")
    return rows


def _chat(prompt: str, answer: str, reference: str, verifier: str, meta: dict[str, Any]) -> dict[str, Any]:
    p = [{"role": "user", "content": prompt}]
    return {"messages": [*p, {"role": "assistant", "content": reference}], "prompt": p, "answer": answer,
            "verifier": verifier, "meta": meta}


# --- code -------------------------------------------------------------------------------------------------------

_FN_WORDS = ["calc", "step", "mix", "turn", "fold", "scale", "shift", "pick", "count", "trim"]


def _code_task(rng: random.Random) -> tuple[str, str, str, list[dict[str, Any]]]:
    """(description, parameter, body, tests) of one small function."""
    kind = rng.choice(["linear", "repeat", "count_above", "clip", "digit_sum"])
    if kind == "linear":
        a, b = rng.randint(2, 9), rng.randint(-9, 9)
        xs = rng.sample(range(-20, 21), 4)
        return (f"returns {a} * x + {b}", "x", f"return {a} * x + {b}",
                [{"args": [x], "expected": a * x + b} for x in xs])
    if kind == "repeat":
        k = rng.randint(2, 4)
        words = ["ab", "x", "hey", "", "q1"]
        return (f"returns the string s repeated {k} times", "s", f"return s * {k}",
                [{"args": [w], "expected": w * k} for w in rng.sample(words, 3)])
    if kind == "count_above":
        t = rng.randint(0, 9)
        lists = [[rng.randint(0, 12) for _ in range(rng.randint(0, 6))] for _ in range(4)]
        return (f"returns how many items of the list xs are greater than {t}", "xs",
                f"return sum(1 for v in xs if v > {t})", [{"args": [xs], "expected": sum(v > t for v in xs)} for xs in lists])
    if kind == "clip":
        lo = rng.randint(-5, 3)
        hi = lo + rng.randint(2, 9)
        xs = [lo - 3, lo, (lo + hi) // 2, hi + 4]
        return (f"returns x limited to the range {lo} to {hi} (inclusive)", "x", f"return max({lo}, min({hi}, x))",
                [{"args": [x], "expected": max(lo, min(hi, x))} for x in xs])
    k = rng.randint(1, 3)
    ns = [rng.randint(0, 9999) for _ in range(4)]
    return (f"returns {k} times the sum of the decimal digits of the non-negative integer n", "n",
            f"return {k} * sum(int(c) for c in str(n))", [{"args": [v], "expected": k * sum(map(int, str(v)))} for v in ns])


@register_recipe("code_functions")
def code_functions(split: Split, n: int, seed: int) -> list[dict[str, Any]]:
    """Small Python functions with unit tests (``code`` verifier, run in the sandbox); a reference solution."""
    def make(rng: random.Random) -> tuple[str, dict[str, Any]]:
        name = f"{rng.choice(_FN_WORDS)}_{rng.choice(string.ascii_lowercase)}{rng.randint(0, 99)}"
        desc, param, body, tests = _code_task(rng)
        prompt = f"Write a Python function `{name}({param})` that {desc}. Answer with one ```python block."
        ref = f"```python\ndef {name}({param}):\n    {body}\n```"
        return prompt, _chat(prompt, "", ref, "code", {"fn_name": name, "tests": tests})

    return _rows_until(n, split, make, random.Random(f"code_functions/{split}/{seed}"))


# --- instructions -----------------------------------------------------------------------------------------------

_TOPICS = ["the sea", "a red kite", "old maps", "winter bread", "a quiet town", "the night train", "green tea"]
_ADJ = ["calm", "bright", "slow", "warm", "plain", "small", "wide"]


def _instruction_task(rng: random.Random) -> tuple[str, list[dict[str, Any]], str]:
    """(constraint text, instruction list, a compliant reference answer)."""
    topic, a1, a2 = rng.choice(_TOPICS), rng.choice(_ADJ), rng.choice(_ADJ)
    base = f"{topic} is {a1} and {a2}"
    picks = rng.sample(["lower", "no_comma", "end", "start", "keyword", "quote", "words"], 2)
    if "quote" in picks and {"start", "end"} & set(picks):  # contradictory: quotes must open and close the answer
        picks[picks.index("quote")] = "no_comma" if "no_comma" not in picks else "lower"
    texts, items = [], []
    end = start = keyword = None
    if "keyword" in picks:
        keyword = rng.choice(["river", "lamp", "stone", "cloud"])
        texts.append(f"Use the word '{keyword}'.")
        items.append({"id": "keywords:existence", "kwargs": {"keywords": [keyword]}})
    if "start" in picks:
        start = rng.choice(["Well", "Today", "Look"])
        texts.append(f"Start your answer with '{start}'.")
        items.append({"id": "startend:start_checker", "kwargs": {"start_phrase": start}})
    if "end" in picks:
        end = rng.choice(["That is all.", "The end.", "Done."])
        texts.append(f"End your answer with the phrase '{end}'.")
        items.append({"id": "startend:end_checker", "kwargs": {"end_phrase": end}})
    if "no_comma" in picks:
        texts.append("Do not use any commas.")
        items.append({"id": "punctuation:no_comma", "kwargs": {}})
    if "lower" in picks:
        texts.append("Write in lowercase letters only.")
        items.append({"id": "change_case:english_lowercase", "kwargs": {}})
    if "words" in picks:
        k = rng.randint(12, 20)
        texts.append(f"Use fewer than {k} words.")
        items.append({"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": k}})
    ref = base + (f" near the {keyword}" if keyword else "") + "."
    if start:
        ref = f"{start} {ref}"
    if end:
        ref = f"{ref} {end}"
    if "lower" in picks:
        ref = ref.lower()
    if "quote" in picks:
        texts.append("Wrap your whole answer in double quotation marks.")
        items.append({"id": "startend:quotation", "kwargs": {}})
        ref = f'"{ref}"'
    return " ".join(texts), items, ref


@register_recipe("instructions")
def instructions(split: Split, n: int, seed: int) -> list[dict[str, Any]]:
    """One-sentence writing prompts with two verifiable format constraints (``instructions`` verifier)."""
    def make(rng: random.Random) -> tuple[str, dict[str, Any]]:
        topic = rng.choice(_TOPICS)
        constraints, items, ref = _instruction_task(rng)
        prompt = f"Write one sentence about {topic}. {constraints}"
        return prompt, _chat(prompt, "", ref, "instructions", {"instructions": items})

    return _rows_until(n, split, make, random.Random(f"instructions/{split}/{seed}"))


# --- two-hop retrieval --------------------------------------------------------------------------------------------

_NAMES = ["ana", "bo", "cy", "dee", "eli", "fay", "gus", "ivy", "jo", "kim", "lu", "max", "ned", "ora"]
_COLOURS = ["red", "blue", "green", "grey", "gold", "pink", "teal", "brown", "black", "white"]


@register_recipe("two_hop")
def two_hop(split: Split, n: int, seed: int, context_chars: int | tuple[int, int] | list[int] = 400,
            depths: tuple[float, float] | list[float] | None = (0.2, 0.8)) -> list[dict[str, Any]]:
    """Two passages at fractional ``depths`` of a filler context: "<name> keeps the <colour> key ." and "the
    <colour> key opens the code word <word> ."; the question asks which code word <name>'s key opens. The reference
    (the SFT target) quotes both passages in ``<think>``, then answers.

    ``depths=None``: each row draws both depths (and so the passages' order) at random; ``context_chars=[lo, hi]``:
    each row's context length drawn from that range (training rows of many shapes; the suite keeps one shape).
    """
    lo, hi = context_range("two_hop", context_chars, 20)
    if depths is not None and (len(depths) != 2 or not all(0 <= d <= 1 for d in depths)):
        raise ValueError(f"two_hop: depths must be two fractions in [0, 1] or null, got {depths!r}")

    def make(rng: random.Random) -> tuple[str, dict[str, Any]]:
        name, colour = rng.choice(_NAMES), rng.choice(_COLOURS)
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(3)) + str(rng.randrange(10))
        # draws only where a range / random depths ask for them: a fixed shape makes the same rows as before
        d1, d2 = depths if depths is not None else (rng.random(), rng.random())
        words = filler_words(rng, lo if lo == hi else rng.randint(lo, hi))
        first, second = f"{name} keeps the {colour} key .", f"the {colour} key opens the code word {word} ."
        i, j = sorted((int(len(words) * d1), int(len(words) * d2)))
        parts = [*words[:i], first, *words[i:j], second, *words[j:]] if d1 <= d2 else \
            [*words[:i], second, *words[i:j], first, *words[j:]]
        context = " ".join(parts)
        prompt = f"{context}\nWhich code word does the key of {name} open?"
        ref = f"<think>{first} {second}</think>{word}"
        return word, _chat(prompt, word, ref, "retrieval", {"depths": [d1, d2], "hops": 2})

    return _rows_until(n, split, make, random.Random(f"two_hop/{split}/{seed}"))

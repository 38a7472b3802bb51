"""Needle retrieval: a code word hidden at a stated depth of a filler context; the answer is the code word.

Graded by the ``retrieval`` verifier (normalised exact match; listing candidates or copying the context scores 0).
Deterministic by seed. Train and held-out splits are disjoint by construction: the code word decides the split
(a hash bucket), so no held-out needle ever appears in training.

Row: ``prompt`` (the context then the question), ``answer`` (the code word), ``verifier="retrieval"``,
``meta={"depth": d, "needle_char": i}`` (the needle's fractional depth and character offset in the context),
and ``messages`` (prompt + answer, for SFT).
"""

from __future__ import annotations

import random
import string
from typing import Any, Literal

from data_recipes.registry import register_recipe
from data_recipes.splits import in_heldout

FILLER = ("the sky was grey and the road was long . birds sang in the old oak . a cart went by slowly . "
          "rain fell on the hills . the river ran past the mill . ").split()


# code word alphabets: ``letters`` (3 lower-case letters and a digit, characters the filler also uses) or ``digits``
# (a 5-digit pass key, as in passkey retrieval: characters the filler never holds, so the copy can key on them)
CODES = {"letters": (lambda rng: "".join(rng.choice(string.ascii_lowercase) for _ in range(3)) + str(rng.randrange(10)),
                     26**3 * 10),
         "digits": (lambda rng: "".join(rng.choice(string.digits) for _ in range(5)), 10**5)}


def filler_words(rng: random.Random, chars: int) -> list[str]:
    """Random filler words totalling about ``chars`` characters (with spaces)."""
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(FILLER))
    return words


def context_range(recipe: str, context_chars: int | tuple[int, int] | list[int], least: int) -> tuple[int, int]:
    """``context_chars`` as (lo, hi): an integer is a fixed length, ``[lo, hi]`` a range each row draws from."""
    bounds = (context_chars, context_chars) if isinstance(context_chars, int) else tuple(context_chars)
    if len(bounds) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
        raise ValueError(f"{recipe}: context_chars must be an integer or a range [lo, hi], got {context_chars!r}")
    lo, hi = bounds
    if not least <= lo <= hi:
        raise ValueError(f"{recipe}: context_chars must be >= {least} (a range [lo, hi] with lo <= hi), "
                         f"got {context_chars!r}")
    return lo, hi


def build_context(rng: random.Random, chars: int, needle: str, depth: float) -> tuple[str, int]:
    """Filler text of about ``chars`` characters with ``needle`` inserted at fraction ``depth``; returns (text, offset)."""
    text = " ".join(filler_words(rng, chars))
    cut = int((len(text) + len(needle) + 1) * depth)  # depth is measured in the final context, needle included
    if cut >= len(text):  # at the very end: after the last word, separated by a space
        return text + " " + needle, len(text) + 1
    cut = text.rfind(" ", 0, cut) + 1  # at a word boundary
    return text[:cut] + needle + " " + text[cut:], cut


@register_recipe("needle")
def needle(
    split: Literal["train", "heldout"],
    n: int,
    seed: int,
    context_chars: int | tuple[int, int] | list[int] = 120,
    depths: tuple[float, ...] | list[float] | None = None,
    style: Literal["answer", "trace"] = "answer",
    code: Literal["letters", "digits"] = "letters",
) -> list[dict[str, Any]]:
    """``n`` needle problems; ``depths`` cycles through given fractions (default: uniform random depth).

    ``style="trace"``: the assistant first quotes the sentence holding the needle in ``<think>``, then answers.
    ``code="digits"``: the code word is a 5-digit pass key (see ``CODES``).
    ``context_chars=[lo, hi]``: each row's context length drawn uniformly from that range (a length mixture in one
    source; sources in phases make a curriculum of lengths).
    """
    if style not in ("answer", "trace"):
        raise ValueError(f"needle: style must be 'answer' or 'trace', got {style!r}")
    if code not in CODES:
        raise ValueError(f"needle: code must be one of {', '.join(CODES)}, got {code!r}")
    draw, words = CODES[code]
    lo, hi = context_range("needle", context_chars, 10)
    rng = random.Random(f"needle/{split}/{seed}")
    want_heldout = split == "heldout"
    if n > words // 2:  # code words in all (both splits share them by a hash)
        raise ValueError(f"needle: asked for {n} {split} rows; there are about {words // 2:,} distinct code words "
                         f"per split ({code})")
    rows, seen = [], set()
    budget = 50 * n + 1000  # a larger n than one split holds ends with an error, not a loop forever
    while len(rows) < n and budget > 0:
        budget -= 1
        word = draw(rng)
        if word in seen or in_heldout(word) != want_heldout:
            continue
        seen.add(word)
        depth = depths[len(rows) % len(depths)] if depths else rng.random()
        sentence = f"the code word is {word} ."
        chars = lo if lo == hi else rng.randint(lo, hi)  # one draw fewer for a fixed length: same rows as before
        context, offset = build_context(rng, chars, sentence, depth)
        prompt = [{"role": "user", "content": f"{context}\nWhat is the code word?"}]
        content = f"<think>{sentence}</think>{word}" if style == "trace" else word
        rows.append({
            "messages": [*prompt, {"role": "assistant", "content": content}],
            "prompt": prompt,
            "answer": word,
            "verifier": "retrieval",
            "meta": {"depth": depth, "needle_char": offset},
        })
    if len(rows) < n:
        raise ValueError(f"needle: could not draw {n} distinct {split} code words (about {words // 2:,} exist per "
                         "split)")
    return rows

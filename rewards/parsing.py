"""Answer extraction shared by the built-in verifiers.

Policy (one place, so every verifier agrees):
- Only the text after the reasoning block is graded. If the completion has a ``</think>``, the answer is what follows
  the last one; an opened ``<think>`` that never closes means no answer at all (the model was still thinking).
- The final answer is the last ``\\boxed{...}`` of the answer text, else the last ``Answer:`` line, else the whole
  answer text. Several boxes with different contents are a candidate listing, not an answer.
"""

from __future__ import annotations

import re
import unicodedata

from rewards.types import Verdict, unparseable, wrong

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
MAX_ANSWER_CHARS = 20_000  # answers longer than this are not answers; keeps every verifier's cost bounded

_ANSWER_LINE = re.compile(r"(?im)^[ \t*_#]*(?:final\s+)?answer\s*[:：]\s*(.*)$")
# Characters that render as nothing or as a space; stripped so they cannot split or disguise a token.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"), None)


def reasoning_split(completion: str) -> tuple[int, int, str | None, str | None]:
    """``(opens, closes, reasoning, answer)`` of a completion: the one definition of a reasoning block that every
    verifier uses. Tags are the exact ASCII ``<think>`` / ``</think>`` of the raw text: look-alikes (full-width
    ``＜think＞``, tags split by invisible characters) are ordinary text for every verifier alike, never folded into a tag
    by one verifier and not another. ``reasoning`` is the text between the first ``<think>`` and the last
    ``</think>`` (None without both), ``answer`` what follows the last ``</think>`` (None while a ``<think>`` is open).

    >>> reasoning_split("<think>carry</think>42")
    (1, 1, 'carry', '42')
    >>> reasoning_split("\uff1cthink\uff1ex\uff1c/think\uff1e42")[:2]
    (0, 0)
    """
    opens, closes = completion.count(THINK_OPEN), completion.count(THINK_CLOSE)
    close = completion.rfind(THINK_CLOSE)
    start = completion.find(THINK_OPEN)
    reasoning = completion[start + len(THINK_OPEN) : close] if 0 <= start < close else None
    if close >= 0:
        answer: str | None = completion[close + len(THINK_CLOSE) :]
    else:
        answer = None if opens else completion
    return opens, closes, reasoning, answer


def answer_section(completion: str) -> str | None:
    """The part of ``completion`` after the reasoning, or None if the reasoning never ended.

    >>> answer_section("<think>2+2 is 4</think> 4")
    ' 4'
    >>> answer_section("<think>still thinking") is None
    True
    """
    return reasoning_split(completion)[3]


def boxed_contents(text: str, limit: int = 64) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` with balanced braces (at most ``limit``)."""
    out: list[str] = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            c = text[i]
            depth += 1 if c == "{" else -1 if c == "}" else 0
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
            if len(out) >= limit:
                break
    return out


def final_answer(text: str) -> tuple[str | None, list[str]]:
    """(answer, candidates): the last boxed or ``Answer:`` value of ``text`` (else all of it) and every boxed value.

    >>> final_answer("so \\\\boxed{12}")
    ('12', ['12'])
    >>> final_answer("Answer: 7")
    ('7', [])
    """
    boxes = boxed_contents(text)
    if boxes:
        return boxes[-1].strip(), [b.strip() for b in boxes]
    lines = _ANSWER_LINE.findall(text)
    if lines:
        return lines[-1].strip(), []
    stripped = text.strip()
    return (stripped or None), []


def clean_text(text: str) -> str:
    """Remove invisible characters and NUL bytes, replace lone surrogates, fold full-width forms (NFKC)."""
    text = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    return unicodedata.normalize("NFKC", text.translate(_INVISIBLE))


def is_candidate_listing(candidates: list[str]) -> bool:
    """Several distinct boxed answers: the model hedged between candidates."""
    return len({c.strip() for c in candidates}) > 1


def extract_final(completion: str, max_chars: int = MAX_ANSWER_CHARS) -> str | Verdict:
    r"""The common policy in one place: the cleaned final answer after the reasoning, or the Verdict rejecting the
    completion (reasoning never closed, empty, longer than ``max_chars``, or a candidate listing).

    >>> extract_final("<think>maybe 3</think> \\boxed{4}")
    '4'
    >>> extract_final("\\boxed{4} \\boxed{5}").status
    'wrong'
    """
    section = answer_section(completion)
    if section is None:
        return unparseable("reasoning block never closed")
    if len(section) > max_chars:
        return wrong({"reason": "answer too long", "chars": len(section)})
    parsed, candidates = final_answer(clean_text(section))
    if not parsed:
        return unparseable("empty answer")
    if is_candidate_listing(candidates):
        return wrong({"reason": "candidate listing", "candidates": candidates[:5], "candidates_all": candidates})
    return parsed

"""``instructions`` — IFEval-style verifiable format constraints (Zhou et al., 2023, "Instruction-Following Evaluation
for Large Language Models"), re-implemented without nltk or any download.

Row: ``meta={"instructions": [{"id": "punctuation:no_comma", "kwargs": {}}, ...]}``; every instruction must hold
(score 1), else 0; ``info`` lists which failed. Policy:
- Only the text after the reasoning is graded; an empty answer fails every instruction.
- Text is cleaned before checking: NFKC (full-width letters and punctuation fold to ASCII), invisible characters
  (zero-width space/joiners, soft hyphen, BOM) removed, common Cyrillic/Greek homoglyphs mapped to Latin, and every
  comma-like character (``，、‚﹐،``) counts as a comma — Unicode tricks do not evade a check.
- Missing or mistyped kwargs are a data error (``status="error"``), never a random threshold as in IFEval's code.
- Relations: ``at least``, ``at most``, ``less than``, ``more than``, ``exactly``.
- Each check follows IFEval's reference check (google-research ``instruction_following_eval/instructions.py``) and
  its unit-test expectations (``tests/rewards/test_instructions_ifeval.py`` replays them). Deliberate differences,
  each documented beside its check and pinned by a test: keywords match whole words (IFEval: any substring, so
  ``art`` is "included" in ``start``); a placeholder must hold text (``[]`` is not one); ``•`` also starts a bullet;
  sentences are split by a regex, not nltk's punkt model (no download).

>>> from rewards import get_verifier
>>> meta = {"instructions": [{"id": "punctuation:no_comma", "kwargs": {}},
...                          {"id": "length_constraints:number_words", "kwargs": {"relation": "at most", "num_words": 5}}]}
>>> get_verifier("instructions")("Short and sweet", "", meta=meta).status
'ok'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from rewards.parsing import answer_section, clean_text
from rewards.registry import register_verifier
from rewards.types import Verdict, ok, wrong

MAX_CHARS = 200_000
_HOMOGLYPHS = str.maketrans(
    "АВЕКМНОРСТХаеорсухіјѕԁɡΑΒΕΖΗΙΚΜΝΟΡΤΥΧοαν",
    "ABEKMHOPCTXaeopcyxijsdgABEZHIKMNOPTYXoav",
)
_COMMAS = ",\u060c\u3001\u201a\ufe10\ufe11\ufe50\ufe51\uff0c\ua4fe"
RELATIONS: dict[str, Callable[[int, int], bool]] = {
    "at least": lambda n, k: n >= k,
    "at most": lambda n, k: n <= k,
    "less than": lambda n, k: n < k,
    "more than": lambda n, k: n > k,
    "exactly": lambda n, k: n == k,
}


class KwargError(ValueError):
    """A row's instruction kwargs are missing or of the wrong type."""


def normalize(text: str) -> str:
    """The cleaned text every check sees."""
    return clean_text(text).translate(_HOMOGLYPHS)


def _arg(kwargs: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in kwargs:
        raise KwargError(f"missing kwarg {name!r}")
    value = kwargs[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise KwargError(f"kwarg {name!r} must be {kind}, got {type(value).__name__}")
    return value


def _relation(kwargs: dict[str, Any], key: str = "relation") -> Callable[[int, int], bool]:
    rel = _arg(kwargs, key, str)
    if rel not in RELATIONS:
        raise KwargError(f"kwarg {key!r} must be one of {list(RELATIONS)}, got {rel!r}")
    return RELATIONS[rel]


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*", text)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if re.search(r"\w", s)]


def _contains_word(text: str, word: str) -> int:
    # Whole words, case-insensitive; the keyword is stripped (IFEval strips it too: "  keyword " is "keyword").
    # Deliberate difference for keywords:existence: IFEval searches any substring ("art" in "start"); a whole word
    # is what the instruction asks for, and a substring match is a free reward for the policy.
    key = re.escape(normalize(word).strip().lower())
    return len(re.findall(r"(?<![A-Za-z0-9])" + key + r"(?![A-Za-z0-9])", text.lower()))


def number_words(t: str, kw: dict[str, Any]) -> bool:
    return _relation(kw)(len(_words(t)), _arg(kw, "num_words", int))


def number_sentences(t: str, kw: dict[str, Any]) -> bool:
    return _relation(kw)(len(_sentences(t)), _arg(kw, "num_sentences", int))


def number_paragraphs(t: str, kw: dict[str, Any]) -> bool:
    # IFEval: paragraphs are separated by the markdown divider ``***`` only; an empty paragraph before the first or
    # after the last divider is not counted, an empty one between two dividers fails the instruction.
    parts = re.split(r"\s?\*\*\*\s?", t)
    count = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                count -= 1
            else:
                return False
    return count == _arg(kw, "num_paragraphs", int)


def keyword_existence(t: str, kw: dict[str, Any]) -> bool:
    return all(_contains_word(t, k) > 0 for k in _arg(kw, "keywords", list))


def forbidden_words(t: str, kw: dict[str, Any]) -> bool:
    return all(_contains_word(t, k) == 0 for k in _arg(kw, "forbidden_words", list))


def keyword_frequency(t: str, kw: dict[str, Any]) -> bool:
    return _relation(kw)(_contains_word(t, _arg(kw, "keyword", str)), _arg(kw, "frequency", int))


def letter_frequency(t: str, kw: dict[str, Any]) -> bool:
    letter = _arg(kw, "letter", str).lower()
    if len(letter) != 1:
        raise KwargError("kwarg 'letter' must be a single character")
    return _relation(kw, "let_relation")(t.lower().count(letter), _arg(kw, "let_frequency", int))


def no_comma(t: str, kw: dict[str, Any]) -> bool:
    return not any(c in t for c in _COMMAS)


def json_format(t: str, kw: dict[str, Any]) -> bool:
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", t.strip(), flags=re.I)
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def number_bullet_lists(t: str, kw: dict[str, Any]) -> bool:
    # IFEval: a line starting with ``*`` not followed by another ``*`` (so ``***`` dividers are not bullets), or with
    # ``-``; no space is required after the marker (``*item``, ``-item``). Deliberate addition: ``•`` bullets.
    bullets = re.findall(r"^\s*(?:\*[^*]|-|•)", t, flags=re.M)
    return len(bullets) == _arg(kw, "num_bullets", int)


def title(t: str, kw: dict[str, Any]) -> bool:
    return any(m.strip() for m in re.findall(r"<<([^\n]+?)>>", t))


def multiple_sections(t: str, kw: dict[str, Any]) -> bool:
    splitter = _arg(kw, "section_spliter", str).strip()
    sections = re.split(r"\s?" + re.escape(splitter) + r"\s?\d+\s?", t)
    return len(sections) - 1 >= _arg(kw, "num_sections", int)


def end_checker(t: str, kw: dict[str, Any]) -> bool:
    # IFEval also drops quotation marks around the whole answer before checking the end.
    return t.strip().strip('"').lower().endswith(normalize(_arg(kw, "end_phrase", str)).strip().lower())


def start_checker(t: str, kw: dict[str, Any]) -> bool:
    return t.strip().lower().startswith(normalize(_arg(kw, "start_phrase", str)).strip().lower())


def quotation(t: str, kw: dict[str, Any]) -> bool:
    s = t.strip()
    return len(s) > 1 and s[0] == '"' and s[-1] == '"'


def english_lowercase(t: str, kw: dict[str, Any]) -> bool:
    return t == t.lower() and any(c.isalpha() for c in t)


def english_capital(t: str, kw: dict[str, Any]) -> bool:
    return t == t.upper() and any(c.isalpha() for c in t)


def capital_word_frequency(t: str, kw: dict[str, Any]) -> bool:
    caps = [w for w in _words(t) if w.isupper() and any(c.isalpha() for c in w)]
    return _relation(kw, "capital_relation")(len(caps), _arg(kw, "capital_frequency", int))


def number_placeholders(t: str, kw: dict[str, Any]) -> bool:
    # Deliberate difference: IFEval counts any ``[...]`` including ``[]``; an empty bracket holds no placeholder.
    return len(re.findall(r"\[[^\[\]\n]*[^\[\]\s][^\[\]\n]*\]", t)) >= _arg(kw, "num_placeholders", int)


def postscript(t: str, kw: dict[str, Any]) -> bool:
    # IFEval: anywhere in the text (not only at a line start), case-insensitive; for the markers P.S. and P.P.S a
    # space may follow each dot (``P. S.``); any other marker is matched literally.
    marker = _arg(kw, "postscript_marker", str).strip().lower()
    if marker == "p.p.s":
        pattern = r"\s*p\.\s?p\.\s?s"
    elif marker == "p.s.":
        pattern = r"\s*p\.\s?s\."
    else:
        pattern = r"\s*" + re.escape(marker)
    return re.search(pattern, t.lower(), flags=re.M) is not None


def number_highlighted_sections(t: str, kw: dict[str, Any]) -> bool:
    # IFEval: every ``*text*`` and every ``**text**`` on one line with non-blank text counts (a bold span counts as
    # both forms, as in IFEval).
    spans = [s for s in re.findall(r"\*[^\n*]*\*", t) if s.strip("*").strip()]
    spans += [s for s in re.findall(r"\*\*[^\n*]*\*\*", t) if s.strip("*").strip()]
    return len(spans) >= _arg(kw, "num_highlights", int)


# Closed set: instruction id -> check. IDs follow IFEval's naming.
CHECKS: dict[str, Callable[[str, dict[str, Any]], bool]] = {
    "length_constraints:number_words": number_words,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "keywords:existence": keyword_existence,
    "keywords:forbidden_words": forbidden_words,
    "keywords:frequency": keyword_frequency,
    "keywords:letter_frequency": letter_frequency,
    "punctuation:no_comma": no_comma,
    "detectable_format:json_format": json_format,
    "detectable_format:number_bullet_lists": number_bullet_lists,
    "detectable_format:title": title,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:number_highlighted_sections": number_highlighted_sections,
    "startend:end_checker": end_checker,
    "startend:start_checker": start_checker,
    "startend:quotation": quotation,
    "change_case:english_lowercase": english_lowercase,
    "change_case:english_capital": english_capital,
    "change_case:capital_word_frequency": capital_word_frequency,
    "detectable_content:number_placeholders": number_placeholders,
    "detectable_content:postscript": postscript,
}


@register_verifier("instructions")
def verify(completion: str, answer: str = "", meta: dict[str, Any] | None = None, **row: Any) -> Verdict:
    """Score 1 when every listed instruction holds for the answer."""
    items = (meta or {}).get("instructions") if isinstance(meta, dict) else None
    if not isinstance(items, list) or not items:
        return Verdict(0.0, "error", {"reason": "data error: meta.instructions must be a non-empty list"})
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("id") not in CHECKS:
            got = item.get("id") if isinstance(item, dict) else item
            return Verdict(0.0, "error", {"reason": f"data error: instructions[{i}]: unknown id {got!r}"})
    section = answer_section(completion)
    text = normalize(section or "")[:MAX_CHARS]
    if not text.strip():
        return wrong({"failed": [it["id"] for it in items], "reason": "empty answer"})
    failed = []
    for i, item in enumerate(items):
        try:
            if not CHECKS[item["id"]](text, item.get("kwargs") or {}):
                failed.append(item["id"])
        except KwargError as exc:
            return Verdict(0.0, "error", {"reason": f"data error: instructions[{i}] ({item['id']}): {exc}"})
    return ok({"checked": len(items)}) if not failed else wrong({"failed": failed})

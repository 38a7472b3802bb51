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


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n|\n?\*\*\*\n?", text.strip()) if p.strip()]


def _contains_word(text: str, word: str) -> int:
    return len(re.findall(r"(?<![A-Za-z0-9])" + re.escape(normalize(word).lower()) + r"(?![A-Za-z0-9])", text.lower()))


def number_words(t: str, kw: dict[str, Any]) -> bool:
    return _relation(kw)(len(_words(t)), _arg(kw, "num_words", int))


def number_sentences(t: str, kw: dict[str, Any]) -> bool:
    return _relation(kw)(len(_sentences(t)), _arg(kw, "num_sentences", int))


def number_paragraphs(t: str, kw: dict[str, Any]) -> bool:
    return len(_paragraphs(t)) == _arg(kw, "num_paragraphs", int)


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
    bullets = re.findall(r"^\s*[*\-•]\s+\S", t, flags=re.M)
    return len(bullets) == _arg(kw, "num_bullets", int)


def title(t: str, kw: dict[str, Any]) -> bool:
    return any(m.strip() for m in re.findall(r"<<([^\n]+?)>>", t))


def multiple_sections(t: str, kw: dict[str, Any]) -> bool:
    splitter = _arg(kw, "section_spliter", str).strip()
    sections = re.split(r"\s?" + re.escape(splitter) + r"\s?\d+\s?", t)
    return len(sections) - 1 >= _arg(kw, "num_sections", int)


def end_checker(t: str, kw: dict[str, Any]) -> bool:
    return t.strip().lower().endswith(normalize(_arg(kw, "end_phrase", str)).strip().lower())


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
    return len(re.findall(r"\[[^\[\]\n]+\]", t)) >= _arg(kw, "num_placeholders", int)


def postscript(t: str, kw: dict[str, Any]) -> bool:
    marker = _arg(kw, "postscript_marker", str).strip()
    return re.search(r"^\s*" + re.escape(marker).replace(r"\.", r"\.?") + r"\s*\S", t, flags=re.M | re.I) is not None


def number_highlighted_sections(t: str, kw: dict[str, Any]) -> bool:
    spans = [s for s in re.findall(r"(?<!\*)\*([^\n*]+)\*(?!\*)", t) if s.strip()]
    spans += [s for s in re.findall(r"\*\*([^\n*]+)\*\*", t) if s.strip()]
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

"""instructions: every constraint type, Unicode evasions, empty answers, data errors."""

from __future__ import annotations

import pytest

from rewards import get_verifier
from rewards.instructions import CHECKS

inst = get_verifier("instructions")


def one(id_: str, **kwargs):
    return {"instructions": [{"id": id_, "kwargs": kwargs}]}


CASES = [
    ("length_constraints:number_words", {"relation": "at most", "num_words": 3}, "one two three", "one two three four"),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 3}, "a b c d", "a b"),
    ("length_constraints:number_sentences", {"relation": "exactly", "num_sentences": 2}, "Hi there. Bye now!", "Hi."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "para one\n***\npara two", "para one\n\npara two"),
    ("keywords:existence", {"keywords": ["ruby", "gold"]}, "Ruby and gold.", "Only ruby."),
    ("keywords:forbidden_words", {"forbidden_words": ["apple"]}, "I like pineapple", "An apple a day"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "cat cat", "cat dog"),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "zz", "z"),
    ("punctuation:no_comma", {}, "no commas here", "a, b"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one"),
    ("detectable_format:title", {}, "<<My Title>>\nbody", "My Title\nbody"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\na\nSection 2\nb", "Section 1\na"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", "*one* only"),
    ("startend:end_checker", {"end_phrase": "Any questions?"}, "Done. Any questions?", "Any questions? Done."),
    ("startend:start_checker", {"start_phrase": "Dear team"}, "Dear team, hello", "Hello dear team"),
    ("startend:quotation", {}, '"quoted"', "not quoted"),
    ("change_case:english_lowercase", {}, "all lower", "Not lower"),
    ("change_case:english_capital", {}, "ALL CAPS", "Not Caps"),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "NASA and ESA", "NASA"),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Hi [name] at [address]", "Hi [name]"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body\nP.S. see you", "Body only"),
]


def test_at_least_fifteen_types_all_covered():
    assert len(CHECKS) >= 15
    assert {c[0] for c in CASES} == set(CHECKS)


@pytest.mark.parametrize("id_, kwargs, passing, failing", CASES)
def test_each_constraint(id_, kwargs, passing, failing):
    assert inst(passing, "", meta=one(id_, **kwargs)).status == "ok"
    assert inst(failing, "", meta=one(id_, **kwargs)).status == "wrong"


@pytest.mark.parametrize(
    "completion, meta",
    [
        ("a\uff0cb", one("punctuation:no_comma")),  # full-width comma
        ("a\u3001b", one("punctuation:no_comma")),  # ideographic comma
        ("a\u201ab", one("punctuation:no_comma")),  # low-9 quote that looks like a comma
        ("An \u0430pple", one("keywords:forbidden_words", forbidden_words=["apple"])),  # Cyrillic a
        ("An ap\u200bple", one("keywords:forbidden_words", forbidden_words=["apple"])),  # zero-width space
        ("An ap\u00adple", one("keywords:forbidden_words", forbidden_words=["apple"])),  # soft hyphen
        ("An \uff41\uff50\uff50\uff4c\uff45", one("keywords:forbidden_words", forbidden_words=["apple"])),  # full-width
        ("ALL CAPS\u200b", one("change_case:english_lowercase")),
    ],
)
def test_unicode_tricks_do_not_evade(completion, meta):
    assert inst(completion, "", meta=meta).status == "wrong"


def test_only_the_answer_is_graded_and_empty_fails_everything():
    meta = {"instructions": [{"id": "punctuation:no_comma", "kwargs": {}}, {"id": "change_case:english_lowercase", "kwargs": {}}]}
    assert inst("<think>a, B</think>all fine here", "", meta=meta).status == "ok"
    v = inst("<think>plan</think>   ", "", meta=meta)
    assert v.status == "wrong" and len(v.info["failed"]) == 2
    assert inst("<think>never closed", "", meta=meta).status == "wrong"


@pytest.mark.parametrize(
    "meta",
    [
        one("length_constraints:number_words"),  # missing kwargs
        one("length_constraints:number_words", relation="about", num_words=3),  # bad relation
        one("length_constraints:number_words", relation="at most", num_words="3"),  # wrong type
        one("no:such_check"),
        {"instructions": []},
        None,
    ],
)
def test_data_errors_are_errors_not_random_thresholds(meta):
    assert inst("some text", "", meta=meta).status == "error"


@pytest.mark.timeout(60)  # a hang guard, not a speed claim
def test_huge_input_is_bounded():
    meta = {"instructions": [{"id": i, "kwargs": k} for i, k, _, _ in CASES]}
    assert inst("word, " * 400_000, "", meta=meta).status in ("ok", "wrong")

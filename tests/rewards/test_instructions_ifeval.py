"""IFEval's own unit-test expectations, replayed on our ``instructions`` checks.

Inputs and expected booleans are those of google-research ``instruction_following_eval/instructions_test.py``
(Apache-2.0), for every instruction type we implement; ``LESS``/``AT_LEAST`` are IFEval's two comparison relations.
Every case must agree (the issue asks for >= 98 %; a case we deliberately decide differently would be listed in
``DELIBERATE`` with its reason — none of IFEval's own cases needs one). Our deliberate differences on inputs IFEval
does not test are pinned at the end.
"""

from __future__ import annotations

import pytest

from rewards.instructions import CHECKS, normalize

LESS, AT_LEAST = "less than", "at least"

BULLETS_1 = """
  A Markdown bullet point is a way of formatting text to create a list. To
  create a bullet point, start each line with an asterisk (*). For example:
  * This is a bullet point.
  *(no space required)Another bullet point.
  * (no newline ending required)Another bullet point.
  markdown bullet points are often used to create to-do lists or to list items
  in a step-by-step guide."""
BULLETS_2 = """
  Check that inline asterisk (*), *, will not be counted. Only * that starts a
  bullet list will be counted:
    * This is a bullet point.
    * Another bullet point.
    . dot is not counted"""
BULLETS_3 = """
  Here are three bullets starting with asterisk:
  * I am a large language model, also known as a conversational AI.
  * I am trained on a massive amount of text data, and I am able to communicate.
  * I am still under development, but I am learning new things every day."""
BULLETS_4 = """
  Here are three markdown bullets:
  - I am a large language model, also known as a conversational AI.
  - I am trained on a massive amount of text data, and I am able to communicate.
  -I am still under development, but I am learning new things every day."""
BULLETS_5 = """
  Paragraph 1
  ***
  Paragraph 2
  ***
  Paragraph 3
  * only one bullet point
  """
HIGHLIGHT_1 = """
  To highlight text with Markdown, you can use the * character before and after
  the text you want to highlight. For example, if you want to highlight the
  word `hello`, you would type:*hello*, You can also use the ** character to
  create bold text. For example, if you want to bold the word `hello`, you
  would type: **hello** """
HIGHLIGHT_2 = """
  Sure, here are the numerical methods for solving partial differential
  equations highlighted with Markdown:
  *Finite difference methods
  *Finite element methods*
  *Boundary element methods
  *Monte Carlo methods
  I hope this helps!"""
HIGHLIGHT_3 = """
  There is allowed to be *two different* highlighted *sections in the same*
  line. **This is also true** for **double markdown highlights.**
  """
SECTION_1 = """
  Your response must have multiple sections. Mark the beginning of each section
  with "Section X", such as:
  Section 1
  [content of section 1]
  Section 2
  [content of section 2]"""
SECTION_2 = """SECTION 1
  [content of section 1]
  SECTION 2
  [content of section 2]"""
PARAGRAPH_1 = """
  paragraph 1
  ***
  paragraph 2
  ***
  paragraph 3"""
PARAGRAPH_2 = """
          ***
  paragraph 1
          ***
      paragraph 2
          ***
      paragraph 3"""
PARAGRAPH_3 = """
  paragraph 1
          ***
      paragraph 2
          ***
      paragraph 3
          ***"""
PARAGRAPH_4 = """
  paragraph 1
          ***
      paragraph 2
          ***
          ***"""
PS_1 = """
  I will do my best to follow your instructions and always start my responses
  with "My response is:". I will try to be as consistent as possible, but
  please be patient with me if I make a mistake. I am still under development,
  and I am always learning new things.

  P.S. I hope this is what you were looking for."""
PS_2 = """
  Sure, here is my response with a postscript starting with P.P.S.:

  My response is: I hope this answers your question.

  P.P.S. I am always happy to answer any other questions you may have.

  Do you have any other questions for me?"""
PS_3 = """
  The radius of a unit circle is 1. However, I can give you a funny and wrong
  answer: the radius of a unit circle is 0. This is because a unit circle is a
  circle with a radius of 1, and if the radius is 0, then the circle has no
  size and is just a point. (not starting a new line) P.S. I hope you enjoyed
  my joke!"""
PS_4 = """
  If the length of a square is one, the area of the square will also be one.
  p.p.s what if the entire response was lower case letters?
  """
PS_5 = """
  The mysteries of space and time are mysterious.
  P. S. Sometimes there are even spaces between P. and S..
  """
KEYWORD_1 = """
  Paris is a city of beauty and romance. The romantic river Seine winds its way
  through the city, past iconic landmarks like the Eiffel Tower and the Louvre
  Museum, where the Mona Lisa resides. Whether you're taking a boat cruise down
  the river or simply strolling along the banks, you're sure to be captivated
  by the city's charm."""
KEYWORD_2 = """
  Paris is a city of beauty, romance, and history. It is home to some of the
  most iconic landmarks in the world, including the Eiffel Tower, the Louvre
  Museum, and the Notre Dame Cathedral. The city is also known for its romantic
  river cruises, its delicious food, and its stylish people.
  """
KEYWORDS = ["romantic", "river", "Mona Lisa"]
FREQ_1 = """
  keyword, Keyword, KEYWORD
  """
FREQ_2 = """
    *keyword
    *Keyword
    *KEYWORD
  """
WORDS_1 = """
  d3sCRi7 lArge lAnguagE M0del w1tH 20 w0RdS."""
WORDS_2 = """
  L4RGE L4NGU4GE M0DEL: AI syst3m th4t und3rstands, g3n3r4tes, or tr4nsforms
  l4ngu4g3 b4s3d on pr3vious l3arning & d4t4."""
FORBID_1 = """
  The Nazis came to power in 1933 through a combination of legal and illegal
  means. Hitler was appointed chancellor by President Paul von Hindenburg, and
  the Nazis quickly consolidated their power by passing a series of laws that
  restricted the rights of opposition parties and individuals. By 1934, Hitler
  had become dictator of Germany.
  """
FORBID_2 = """
  Dinosaurs were a diverse group of reptiles that dominated the Earth for over
  160 million years. They came in all shapes and sizes, from the tiny
  Compsognathus to the massive Argentinosaurus. Dinosaurs were the most
  successful land animals on Earth until they went extinct about 66 million
  years ago. The exact cause of their extinction is still unknown, but it
  is thought to have been a combination of factors, including an asteroid
  impact and climate change.
  """
FORBID_3 = """
  GPT, or Generative Pre-trained Transformer, is a family of neural network
  models that uses the transformer architecture. GPT models are trained on a
  massive dataset of text and code, and can be used for a variety of tasks,
  including text generation, translation, and question answering. GPT models
  have been shown to be very effective at these tasks, and are being used by
  a variety of companies and organizations like Google.
  """
PLACEHOLDERS_1 = ("Sure, here is a short template with 5 placeholders:\n[Name]\n[Email]\n[Phone]\n[Address]\n[Website]\n"
                  "This template can be used for a variety of purposes, such ascreating a contact list, sending out "
                  "surveys, or creating a sign-up form.")
PLACEHOLDERS_2 = "My [adjective] [noun] is [adjective] [noun]. I [verb] and [verb]."

# (instruction id, kwargs, response, IFEval's expected verdict)
IFEVAL_CASES = [
    ("length_constraints:number_sentences", {"relation": LESS, "num_sentences": 4}, "xx,x. xx,x! xx/x. x{x}x?", False),
    ("length_constraints:number_sentences", {"relation": LESS, "num_sentences": 5}, "xxxx. xx,x! xxxx. x(x)x?", True),
    ("length_constraints:number_sentences", {"relation": AT_LEAST, "num_sentences": 4}, "xxxx. xx,x! xx|x. x&x x?", True),
    ("length_constraints:number_sentences", {"relation": AT_LEAST, "num_sentences": 5}, "xx-x. xx,x! xx}x. x,xx?", False),
    ("detectable_content:number_placeholders", {"num_placeholders": 5}, PLACEHOLDERS_1, True),
    ("detectable_content:number_placeholders", {"num_placeholders": 7}, PLACEHOLDERS_2, False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, BULLETS_1, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, BULLETS_2, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, BULLETS_3, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, BULLETS_4, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 1}, BULLETS_5, True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, HIGHLIGHT_1, True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, HIGHLIGHT_2, False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 4}, HIGHLIGHT_3, True),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 3}, SECTION_1, False),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2}, SECTION_2, True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, PARAGRAPH_1, True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, PARAGRAPH_2, True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, PARAGRAPH_3, True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, PARAGRAPH_4, False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, PS_1, True),
    ("detectable_content:postscript", {"postscript_marker": "PS:"}, PS_1, False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, PS_2, True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, PS_3, True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, PS_4, True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, PS_5, True),
    ("keywords:existence", {"keywords": KEYWORDS}, KEYWORD_1, True),
    ("keywords:existence", {"keywords": KEYWORDS}, KEYWORD_2, False),
    ("keywords:frequency", {"keyword": "  keyword ", "frequency": 4, "relation": LESS}, FREQ_1, True),
    ("keywords:frequency", {"keyword": "  keyword ", "frequency": 3, "relation": AT_LEAST}, FREQ_1, True),
    ("keywords:frequency", {"keyword": "KEYWORD", "frequency": 4, "relation": AT_LEAST}, FREQ_2, False),
    ("length_constraints:number_words", {"num_words": 8, "relation": LESS}, WORDS_1, True),
    ("length_constraints:number_words", {"num_words": 16, "relation": LESS}, WORDS_2, False),
    ("length_constraints:number_words", {"num_words": 16, "relation": AT_LEAST}, WORDS_2, True),
    ("keywords:forbidden_words", {"forbidden_words": ["HOUSE", "POWER", "BECOME"]}, FORBID_1, False),
    ("keywords:forbidden_words", {"forbidden_words": ["HOUSE", "POWER", "BECOME"]}, FORBID_2, True),
    ("keywords:forbidden_words", {"forbidden_words": ["HOUSE", "POWER", "BECOME"]}, FORBID_3, True),
    ("keywords:forbidden_words", {"forbidden_words": ["GOOGLE", "TEXT"]}, FORBID_1, True),
    ("keywords:forbidden_words", {"forbidden_words": ["GOOGLE", "TEXT"]}, FORBID_2, True),
    ("keywords:forbidden_words", {"forbidden_words": ["GOOGLE", "TEXT"]}, FORBID_3, False),
    ("keywords:forbidden_words", {"forbidden_words": ["GENE", "TRANSFORM"]}, FORBID_3, True),
    ("startend:end_checker", {"end_phrase": "\n  Any more questions?\n  "},
     "\n  The answer is 7. Any more questions?\n  ", True),
    ("startend:end_checker", {"end_phrase": "\n  This is the end.\n  "},
     "\n  At the end of this prompt I am required to say that this is the end.\n  ", True),
    ("startend:end_checker", {"end_phrase": "\n  This will fail.\n  "}, "\n  This will fail. Paris is cool.\n  ", False),
    ("detectable_format:title", {}, "\n  <<Song of Joy>>\n  La la la. Happy song.\n  ", True),
    ("detectable_format:title", {}, "\n  Is it fine for title to be at the end?\n  <<This is the title>>\n  ", True),
    ("detectable_format:title", {}, "\n  << >>\n  There is no title.\n  ", False),
    ("detectable_format:title", {}, "\n  <<This is not a title.\n  This is a paragraph.>>\n  ", False),
    ("keywords:letter_frequency", {"letter": "T", "let_frequency": 4, "let_relation": AT_LEAST},
     "\n  There is the T. Four T's.\n  ", True),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 4, "let_relation": LESS}, "\n  asdfghjkl!!aA\n  ", True),
    ("keywords:letter_frequency", {"letter": "p", "let_frequency": 4, "let_relation": AT_LEAST},
     "\n  asdfghjkl!!aA\n  ", False),
    ("keywords:letter_frequency", {"letter": "#", "let_frequency": 4, "let_relation": AT_LEAST},
     "#one #two #three #four", True),
    ("keywords:letter_frequency", {"letter": "#", "let_frequency": 4, "let_relation": AT_LEAST},
     "#one #two #three", False),
    ("change_case:english_capital", {},
     "\n  THIS IS AN ENGLISH SENTENCE. EVERY LETTER IS CAPITALIZED!!! AMAZING.\n  ", True),
    ("change_case:english_capital", {}, "\n  Every Word Is Capitalized.\n  ", False),
    ("change_case:english_lowercase", {}, "\n  every letter is lowercase.\n  ", True),
    ("change_case:english_lowercase", {}, "\n  Almost every letter is lowercase.\n  ", False),
    ("punctuation:no_comma", {}, "\n  Every sentence is short. There is no need for a comma.\n  ", True),
    ("punctuation:no_comma", {}, "\n  Since the start of time, people have always found a way to punctuate.\n  ", False),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": AT_LEAST},
     "\n  HERE there are THREE FUlly CAPITAL words.\n  ", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 5, "capital_relation": LESS},
     "\n  THERE are Four FULLY CAPITAL WORDS. Many Others Are Only Partially So.\n  ", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 4, "capital_relation": LESS},
     "\n  THERE are Four FULLY CAPITAL WORDS. Many Others Are Only Partially So.\n  ", False),
    ("startend:quotation", {}, '\n  "This entire message is wrapped in double quotation marks."\n  ', True),
    ("startend:quotation", {}, '\n  "This message is wrapped in double quotation marks." But not everything.\n  ', False),
]
DELIBERATE: dict[int, str] = {}  # index into IFEVAL_CASES -> why we decide differently (none needed)


def _check(iid: str, kwargs: dict, text: str) -> bool:
    return CHECKS[iid](normalize(text), kwargs)


@pytest.mark.parametrize("i", range(len(IFEVAL_CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(IFEVAL_CASES)])
def test_ifeval_expectation(i):
    iid, kwargs, text, expected = IFEVAL_CASES[i]
    assert _check(iid, kwargs, text) == (expected if i not in DELIBERATE else not expected)


def test_agreement_with_ifeval_is_at_least_98_percent():
    agree = sum(_check(iid, kw, text) == want for iid, kw, text, want in IFEVAL_CASES)
    assert agree / len(IFEVAL_CASES) >= 0.98, f"{agree}/{len(IFEVAL_CASES)}"


@pytest.mark.parametrize("iid, kwargs, text, ours, ifeval_would", [
    # keywords match whole words: IFEval's substring search would count "art" inside "start"
    ("keywords:existence", {"keywords": ["art"]}, "We start now.", False, True),
    # an empty bracket is not a placeholder
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[] and [name]", False, True),
    # "•" starts a bullet too
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "• one\n• two", True, False),
])
def test_deliberate_differences(iid, kwargs, text, ours, ifeval_would):
    assert _check(iid, kwargs, text) == ours != ifeval_would

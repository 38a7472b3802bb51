"""retrieval: normalised exact match of the needle after the reasoning."""

from __future__ import annotations

import pytest

from rewards import get_verifier

ret = get_verifier("retrieval")


@pytest.mark.parametrize(
    "completion, status",
    [
        ("Blue-Falcon-7", "ok"),
        ("  blue-falcon-7. ", "ok"),
        ("Answer: BLUE-FALCON-7", "ok"),
        ("<think>maybe red-fox-3</think>Blue-Falcon-7", "ok"),
        ("<think>Blue-Falcon-7</think>red-fox-3", "wrong"),  # the needle only in the reasoning
        ("Blue-Falcon-7 or Red-Fox-3", "wrong"),  # candidates
        ("Blue-Falcon-7\nRed-Fox-3", "wrong"),
        ("\\boxed{Blue-Falcon-7} \\boxed{Red-Fox-3}", "wrong"),
        ("The passage says many things. " * 200 + "Blue-Falcon-7", "wrong"),  # copying the context
        ("Blue\u200b-Falcon-7", "ok"),
        ("", "unparseable"),
    ],
)
def test_retrieval_table(completion, status):
    assert ret(completion, "Blue-Falcon-7").status == status

"""The one rule that keeps train and held-out splits disjoint: a stable hash of a row's key picks its split."""

from __future__ import annotations

import hashlib

HELDOUT_FRACTION = 0.1


def in_heldout(key: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """True if ``key`` (a problem text, a needle, a canonical prompt) belongs to the held-out split.

    Stable across processes and Python versions (sha256, not ``hash()``); a recipe that emits only keys of the
    requested split can never leak a held-out problem into training.

    >>> in_heldout("12+34=") == in_heldout("12+34=")
    True
    """
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100 < round(fraction * 100)  # 1 % resolution

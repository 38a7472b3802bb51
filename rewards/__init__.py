"""Rule-based verifiers as tested artefacts.

``from rewards import get_verifier, register_verifier, Verdict`` is the public API. This package imports nothing from
``align``, ``stages`` or ``data_recipes`` and never imports torch.
"""

from rewards.registry import get_verifier, list_verifiers, load_object, register_verifier
from rewards.types import Verdict, Verifier

__all__ = ["Verdict", "Verifier", "get_verifier", "list_verifiers", "load_object", "register_verifier"]

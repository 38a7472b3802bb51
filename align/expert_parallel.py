"""Expert parallelism on DeepSpeed AutoEP: what align needs around it.

DeepSpeed 0.19.8's AutoEP (``"expert_parallel": {"enabled": true, "autoep_size": N}`` in the DeepSpeed config) finds
the MoE blocks of Hugging Face models at ``deepspeed.initialize``, builds expert-parallel groups and swaps in a layer
whose experts are split over ``N`` ranks (tokens reach them by all-to-all). This module holds align's side of it:

- ``patch_output_capture_registry``: a compatibility fix. AutoEP re-targets transformers' router-logit recorders and
  calls ``transformers.utils.output_capturing._CAN_RECORD_REGISTRY.get(key, default)`` with class-name keys;
  transformers 5.24 made that registry's ``get`` a one-argument method keyed by model, so ``deepspeed.initialize``
  raises ``TypeError``. The patched ``get`` answers string keys as a plain dict does (with the default) and defers to
  transformers for models. It is applied only when the installed ``get`` takes no default, and never twice.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

logger = logging.getLogger(__name__)


def patch_output_capture_registry() -> bool:
    """Make transformers' ``_CAN_RECORD_REGISTRY.get`` accept ``(key, default)`` as AutoEP calls it; True if patched
    now (False: no such registry, already patched, or an upstream ``get`` that takes a default already)."""
    try:
        from transformers.utils import output_capturing
    except ImportError:
        return False
    registry = getattr(output_capturing, "_CAN_RECORD_REGISTRY", None)
    if registry is None or type(registry) is dict:
        return False
    cls = type(registry)
    original = cls.get
    if getattr(original, "_align_patched", False) or len(inspect.signature(original).parameters) > 2:
        return False

    def get(self: Any, key: Any, default: Any = None) -> Any:
        if isinstance(key, str):  # AutoEP's class-name keys: a plain dict lookup
            return dict.get(self, key, default)
        return original(self, key)

    get._align_patched = True  # type: ignore[attr-defined]
    cls.get = get
    logger.debug("patched %s.get to accept a default (DeepSpeed AutoEP with transformers %s)", cls.__name__,
                 getattr(__import__("transformers"), "__version__", "?"))
    return True

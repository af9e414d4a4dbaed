"""Tensors derived from a layer's weights alone (a bf16 copy, a packed
layout for a kernel), kept beside the layer until its weights change:
greedy decoding's bf16 screen (output.py) and the native kernels
(native_kernels.py) make theirs once, not once a call."""

from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

from torch import Tensor, nn

# Module -> {what: (its weights' key, what was built from them)}
_KEPT: "weakref.WeakKeyDictionary[nn.Module, dict[str, tuple]]" = weakref.WeakKeyDictionary()


def weights_key(*params: Optional[Tensor]) -> Optional[tuple]:
    """Changes whenever the given weights do (None ones are skipped):
    in-place updates (optimiser steps, load_state_dict) bump a tensor's
    version, a new tensor has a new address (or, at a reused one, maybe
    another shape or dtype). None (nothing to keep) for inference tensors,
    which have no version; writes through ``.data`` bypass the version and
    are not seen."""
    params = [p for p in params if p is not None]
    if any(p.is_inference() for p in params):
        return None
    return tuple((p.data_ptr(), p._version, p.shape, p.dtype) for p in params)


def prepared(module: nn.Module, what: str, params: tuple, build: Callable[[], Any]) -> Any:
    """``build()``, kept for ``module`` under ``what`` until ``params`` change
    (training, loading); built anew each call where they have no version."""
    key = weights_key(*params)
    kept = _KEPT.get(module, {}).get(what)
    if key is None or kept is None or kept[0] != key:
        kept = (key, build())
        if key is not None:
            _KEPT.setdefault(module, {})[what] = kept
    return kept[1]

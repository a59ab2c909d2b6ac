"""Backends of the fused neighborhood-attention op, one module per backend.

A backend module defines ``NAME``, ``is_available()``, ``unsupported_reason(...)``,
``forward(...) -> (out, lse)`` and ``backward(...) -> (dq, dk, dv, drpb)`` on heads-last tensors.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Preference order for automatic selection: the first available backend that supports a call wins.
_MODULES = {
    "triton": "natten_ext.backends.triton_fused",
    "natten": "natten_ext.backends.natten_upstream",
    "reference": "natten_ext.backends.reference",
}
AUTO_ORDER = ("triton", "reference")

_loaded: dict[str, ModuleType | None] = {}


def names() -> tuple[str, ...]:
    """Every backend name this build knows (available or not)."""
    return tuple(_MODULES)


def get(name: str) -> ModuleType | None:
    """The backend module, or None when its file or its dependencies cannot be imported."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(_MODULES)}")
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except ImportError:
            _loaded[name] = None
    return _loaded[name]

"""Backends of the fused neighborhood-attention op, one module per backend.

A backend module defines ``NAME``, ``is_available()``, ``unsupported_reason(...)``,
``forward(...) -> (out, lse)`` and ``backward(...) -> (dq, dk, dv, drpb)`` on heads-last tensors,
and optionally ``inference(...) -> out`` for calls that need no gradient.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Preference order for automatic selection: the first available backend that supports a call wins.
_MODULES = {
    "triton": "natten_ext.backends.triton_fused",
    "natten": "natten_ext.backends.natten_upstream",
    "cpu": "natten_ext.backends.cpu",
    "tiled": "natten_ext.backends.tiled",
    "reference": "natten_ext.backends.reference",
}
AUTO_ORDER = ("triton", "cpu", "tiled", "reference")

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


def preload() -> None:
    """Import the automatically chosen backends now, so that choosing one inside a
    ``torch.compile``-d function never imports a module (dynamo cannot trace imports).

    The triton backend is imported only where it can run (CUDA, or ``TRITON_INTERPRET=1``);
    elsewhere it is marked unavailable without importing triton.
    """
    import os

    import torch

    for name in AUTO_ORDER:
        if name in _loaded:
            continue
        if name == "triton" and not (
            torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"
        ):
            _loaded[name] = None
            continue
        get(name)
    unfused_triton()


def unfused_triton() -> ModuleType | None:
    """The Triton implementation of the unfused ops, where the triton backend can be loaded."""
    if "triton_unfused" not in _loaded:
        module = None
        if get("triton") is not None:
            try:
                module = importlib.import_module("natten_ext.backends.triton_unfused")
            except ImportError:
                module = None
        _loaded["triton_unfused"] = module
    return _loaded["triton_unfused"]

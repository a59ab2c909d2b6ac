"""Whether a graph capture watches the current call (one definition for every eager fast path)."""

from __future__ import annotations

import torch


def graph_capture_active() -> bool:
    """Compiling, ``torch.jit`` tracing, or a dispatch mode (FLOP counter, fake tensors) is
    watching: fast paths that bypass the registered / standard ops must step aside."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._len_torch_dispatch_stack() > 0
    )

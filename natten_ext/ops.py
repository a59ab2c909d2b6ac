"""The fused op, registered with torch.library so torch.compile traces it without graph breaks.

``natten_ext::na_forward`` returns ``(out, lse)``; its autograd formula calls
``natten_ext::na_backward``. The backend is resolved before the op is called (see ``dispatch``) and
passed by name, so a compiled graph keeps the choice made at trace time. ``is_causal`` travels
as a list of 0/1 ints because TorchScript tracing (used by fvcore) cannot record a list of bools.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from . import backends
from .dispatch import backend_module, select_backend
from .utils.capture import graph_capture_active

# --- backend "auto" (for TorchScript, whose scripted callers cannot run the Python dispatcher) ---
AUTO = "auto"


def _resolve(backend: str, query, key, value, rpb, kernel_size, dilation, is_causal) -> str:
    """``backend``, or for ``"auto"`` the one ``select_backend`` picks for these arguments."""
    if backend != AUTO:
        return backend
    causal = tuple(bool(c) for c in is_causal)
    return select_backend(query, key, value, rpb, tuple(kernel_size), tuple(dilation), causal)


# --------------------------------------------------------------------------------------------


@torch.library.custom_op("natten_ext::na_forward", mutates_args=())
def na_forward(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    rpb: Tensor | None,
    kernel_size: list[int],
    dilation: list[int],
    is_causal: list[int],
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor]:
    backend = _resolve(backend, query, key, value, rpb, kernel_size, dilation, is_causal)
    module = backend_module(backend)
    return module.forward(
        query,
        key,
        value,
        rpb,
        tuple(kernel_size),
        tuple(dilation),
        tuple(bool(c) for c in is_causal),
        scale,
    )


@na_forward.register_fake
def _na_forward_fake(query, key, value, rpb, kernel_size, dilation, is_causal, scale, backend):
    return query.new_empty(query.shape), query.new_empty(query.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("natten_ext::na_backward", mutates_args=())
def na_backward(
    grad_out: Tensor,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    rpb: Tensor | None,
    out: Tensor,
    lse: Tensor,
    kernel_size: list[int],
    dilation: list[int],
    is_causal: list[int],
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    backend = _resolve(backend, query, key, value, rpb, kernel_size, dilation, is_causal)
    module = backend_module(backend)
    dq, dk, dv, drpb = module.backward(
        grad_out,
        query,
        key,
        value,
        rpb,
        out,
        lse,
        tuple(kernel_size),
        tuple(dilation),
        tuple(bool(c) for c in is_causal),
        scale,
    )
    if drpb is None:  # custom ops cannot return None: an empty tensor stands for "no rpb"
        drpb = query.new_empty(0)
    return dq, dk, dv, drpb


@na_backward.register_fake
def _na_backward_fake(
    grad_out, query, key, value, rpb, out, lse, kernel_size, dilation, is_causal, scale, backend
):
    drpb = rpb.new_empty(rpb.shape) if rpb is not None else query.new_empty(0)
    return (
        query.new_empty(query.shape),
        key.new_empty(key.shape),
        value.new_empty(value.shape),
        drpb,
    )


def _setup_context(ctx, inputs, output) -> None:
    query, key, value, rpb, kernel_size, dilation, is_causal, scale, backend = inputs
    out, lse = output
    backend = _resolve(backend, query, key, value, rpb, kernel_size, dilation, is_causal)
    ctx.save_for_backward(query, key, value, rpb, out, lse)
    ctx.window = (kernel_size, dilation, is_causal, scale, backend)
    ctx.has_rpb = rpb is not None


def _backward(ctx, grad_out, grad_lse):
    query, key, value, rpb, out, lse = ctx.saved_tensors
    dq, dk, dv, drpb = torch.ops.natten_ext.na_backward(
        grad_out, query, key, value, rpb, out, lse, *ctx.window
    )
    return dq, dk, dv, (drpb if ctx.has_rpb else None), None, None, None, None, None


na_forward.register_autograd(_backward, setup_context=_setup_context)


class _EagerNA(torch.autograd.Function):
    """The same computation as ``na_forward`` without the custom-op dispatch layers.

    Eager calls take this path: it saves about 0.2 ms of host time per forward+backward, which is
    most of a small map's step on a GPU. Compilation, tracing and dispatch modes (FLOP counters,
    fake tensors) see the registered custom op instead.
    """

    @staticmethod
    def forward(ctx, query, key, value, rpb, kernel_size, dilation, is_causal, scale, backend):
        module = backend_module(backend)
        out, lse = module.forward(query, key, value, rpb, kernel_size, dilation, is_causal, scale)
        ctx.save_for_backward(query, key, value, rpb, out, lse)
        ctx.window = (kernel_size, dilation, is_causal, scale, backend)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, rpb, out, lse = ctx.saved_tensors
        kernel_size, dilation, is_causal, scale, backend = ctx.window
        dq, dk, dv, drpb = backend_module(backend).backward(
            grad_out, query, key, value, rpb, out, lse, kernel_size, dilation, is_causal, scale
        )
        return dq, dk, dv, drpb, None, None, None, None, None


# ------------------------------------------------------------------ triton ops (torch.compile)
# Under torch.compile the triton backend is reached through ``torch.library.triton_op``: inductor
# then sees the Triton kernels themselves and launches them from its generated code (no Python
# per call, CUDA-graph friendly). NATTEN_EXT_TRITON_OP=0 falls back to the opaque custom op.
backends.preload()
_triton = None
if os.environ.get("NATTEN_EXT_TRITON_OP", "1") == "1" and hasattr(torch.library, "triton_op"):
    _triton = backends.get("triton") if torch.cuda.is_available() else None

if _triton is not None:

    @torch.library.triton_op("natten_ext::na_triton_forward", mutates_args=())
    def na_triton_forward(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        rpb: Tensor | None,
        kernel_size: list[int],
        dilation: list[int],
        is_causal: list[int],
        scale: float,
    ) -> tuple[Tensor, Tensor]:
        return _triton.forward(
            query, key, value, rpb, tuple(kernel_size), tuple(dilation),
            tuple(bool(c) for c in is_causal), scale,
        )  # fmt: skip

    @torch.library.triton_op("natten_ext::na_triton_backward", mutates_args=())
    def na_triton_backward(
        grad_out: Tensor,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        rpb: Tensor | None,
        out: Tensor,
        lse: Tensor,
        kernel_size: list[int],
        dilation: list[int],
        is_causal: list[int],
        scale: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dq, dk, dv, drpb = _triton.backward(
            grad_out, query, key, value, rpb, out, lse, tuple(kernel_size), tuple(dilation),
            tuple(bool(c) for c in is_causal), scale,
        )  # fmt: skip
        return dq, dk, dv, (query.new_empty(0) if drpb is None else drpb)

    def _triton_setup_context(ctx, inputs, output) -> None:
        query, key, value, rpb, kernel_size, dilation, is_causal, scale = inputs
        ctx.save_for_backward(query, key, value, rpb, output[0], output[1])
        ctx.window = (kernel_size, dilation, is_causal, scale)
        ctx.has_rpb = rpb is not None

    def _triton_backward(ctx, grad_out, grad_lse):
        query, key, value, rpb, out, lse = ctx.saved_tensors
        dq, dk, dv, drpb = torch.ops.natten_ext.na_triton_backward(
            grad_out, query, key, value, rpb, out, lse, *ctx.window
        )
        return dq, dk, dv, (drpb if ctx.has_rpb else None), None, None, None, None

    na_triton_forward.register_autograd(_triton_backward, setup_context=_triton_setup_context)


def neighborhood_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    rpb: Tensor | None,
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
    is_causal: tuple[bool, ...],
    scale: float,
    backend: str,
) -> Tensor:
    """Fused neighborhood attention on validated arguments, differentiable, through ``backend``."""
    if graph_capture_active():
        if backend == "triton" and _triton is not None and torch.compiler.is_compiling():
            out, _ = torch.ops.natten_ext.na_triton_forward(
                query, key, value, rpb, list(kernel_size), list(dilation),
                [int(c) for c in is_causal], scale,
            )  # fmt: skip
            return out
        out, _ = torch.ops.natten_ext.na_forward(
            query, key, value, rpb, list(kernel_size), list(dilation),
            [int(c) for c in is_causal], scale, backend,
        )  # fmt: skip
        return out
    if not (
        torch.is_grad_enabled()
        and any(t is not None and t.requires_grad for t in (query, key, value, rpb))
    ):  # no gradient can be asked for: no autograd node, and no logsumexp where it costs
        module = backend_module(backend)
        infer = getattr(module, "inference", None)
        if infer is not None:
            return infer(query, key, value, rpb, kernel_size, dilation, is_causal, scale)
        return module.forward(query, key, value, rpb, kernel_size, dilation, is_causal, scale)[0]
    return _EagerNA.apply(query, key, value, rpb, kernel_size, dilation, is_causal, scale, backend)

"""Backend on top of an installed ``natten`` package (>= 0.20): no RPB, any dtype it supports.

Never chosen automatically: force it with ``use_backend("natten")`` or the environment variable
``NATTEN_EXT_BACKEND=natten``.
The forward returns natten's output and logsumexp; the backward re-runs natten under autograd.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import natten  # an ImportError here marks the backend unavailable
import torch

NAME = "natten"

_FUNCS = {1: "na1d", 2: "na2d", 3: "na3d"}


def is_available() -> bool:
    return hasattr(natten, "na2d")


def unsupported_reason(query, key, value, rpb, kernel_size, dilation, is_causal) -> str | None:
    if rpb is not None:
        return "natten >= 0.20 has no relative positional bias"
    if query.dtype == torch.float64:
        return "natten does not run float64"
    needs_grad = any(t.requires_grad for t in (query, key, value)) and torch.is_grad_enabled()
    if needs_grad and query.device.type == "cpu":
        return "natten's CPU (Flex) backend has no backward"
    return None


def _call(query, key, value, kernel_size, dilation, is_causal, scale):
    fn = getattr(natten, _FUNCS[len(kernel_size)])
    return fn(
        query,
        key,
        value,
        kernel_size=tuple(kernel_size),
        dilation=tuple(dilation),
        is_causal=tuple(is_causal),
        scale=scale,
        return_lse=True,
    )


@contextlib.contextmanager
def _autograd_inside_custom_op() -> Iterator[None]:
    """Custom-op bodies run below the autograd keys; re-enable them to differentiate natten."""
    include = torch._C._dispatch_tls_local_include_set()
    empty = torch._C.DispatchKeySet(torch._C.DispatchKey.Undefined)
    with torch._C._ForceDispatchKeyGuard(include, empty), torch.enable_grad():
        yield


def forward(query, key, value, rpb, kernel_size, dilation, is_causal, scale):
    out, lse = _call(query, key, value, kernel_size, dilation, is_causal, scale)
    return out.contiguous(), lse.float().contiguous()


def backward(grad_out, query, key, value, rpb, out, lse, kernel_size, dilation, is_causal, scale):
    inputs = [t.detach().requires_grad_(True) for t in (query, key, value)]
    with _autograd_inside_custom_op():
        res, _ = _call(*inputs, kernel_size, dilation, is_causal, scale)
        dq, dk, dv = torch.autograd.grad(res, inputs, grad_out)
    return dq, dk, dv, None

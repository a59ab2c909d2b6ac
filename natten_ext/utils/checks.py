"""The one place that validates every argument of the neighborhood-attention API.

Each check raises ``ValueError`` (or ``NotImplementedError`` for valid but unsupported
combinations) with a message that names the argument, the value received and what is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IntOrTuple = int | Sequence[int]
BoolOrTuple = bool | Sequence[bool]

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def as_tuple(value: IntOrTuple | BoolOrTuple, ndim: int, name: str, kind: type) -> tuple:
    """Expand an int/bool or a per-axis sequence to a tuple of length ``ndim``."""
    if isinstance(value, torch.Tensor):
        raise ValueError(
            f"{name} must be a Python {kind.__name__} or a tuple of them, got a tensor"
        )
    if isinstance(value, (bool, int)) and not isinstance(value, Sequence):
        if kind is int and isinstance(value, bool):
            raise ValueError(f"{name} must be an int or a tuple of {ndim} ints, got {value!r}")
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool or a tuple of {ndim} bools, got {value!r}")
        return (value,) * ndim
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = tuple(value)
        if len(items) != ndim:
            raise ValueError(
                f"{name} must have one entry per spatial axis ({ndim}), got {len(items)}: {value!r}"
            )
        for item in items:
            ok = (
                isinstance(item, bool)
                if kind is bool
                else (isinstance(item, int) and not isinstance(item, bool))
            )
            if not ok:
                got = type(item).__name__
                raise ValueError(f"{name} entries must be {kind.__name__}s, got {got} in {value!r}")
        return items
    article = "an" if kind is int else "a"
    raise ValueError(
        f"{name} must be {article} {kind.__name__} or a tuple of {ndim} {kind.__name__}s, "
        f"got {value!r}"
    )


def check_window_args(
    kernel_size: IntOrTuple, dilation: IntOrTuple, is_causal: BoolOrTuple, ndim: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[bool, ...]]:
    """Normalise kernel_size, dilation and is_causal to per-axis tuples and check their ranges."""
    ks = as_tuple(kernel_size, ndim, "kernel_size", int)
    dil = as_tuple(dilation, ndim, "dilation", int)
    causal = as_tuple(is_causal, ndim, "is_causal", bool)
    for axis, k in enumerate(ks):
        if k < 2:
            raise ValueError(f"kernel_size must be >= 2 on every axis, got {k} on axis {axis}")
    for axis, d in enumerate(dil):
        if d < 1:
            raise ValueError(f"dilation must be >= 1 on every axis, got {d} on axis {axis}")
    return ks, dil, causal


def check_spatial_extent(
    spatial: Sequence[int], kernel_size: Sequence[int], dilation: Sequence[int]
) -> None:
    """Each axis must hold at least ``kernel_size * dilation`` tokens (spec §1)."""
    for axis, (length, k, d) in enumerate(zip(spatial, kernel_size, dilation)):
        if length < k * d:
            raise ValueError(
                f"spatial axis {axis} has length {length}, shorter than kernel_size * dilation = "
                f"{k} * {d} = {k * d}; pad the input (the NeighborhoodAttention modules do this "
                f"for you) or use a smaller kernel_size/dilation"
            )


def check_rpb(
    rpb: torch.Tensor | None,
    heads: int,
    kernel_size: Sequence[int],
    is_causal: Sequence[bool],
    ref: torch.Tensor,
) -> None:
    """RPB needs odd kernels, no causal axis, shape (heads, 2k-1, ...) and the inputs' device."""
    if rpb is None:
        return
    if not isinstance(rpb, torch.Tensor):
        raise ValueError(f"rpb must be a tensor or None, got {type(rpb).__name__}")
    even = [k for k in kernel_size if k % 2 == 0]
    if even:
        raise NotImplementedError(
            f"rpb (relative positional bias) needs an odd kernel_size on every axis, got "
            f"kernel_size={tuple(kernel_size)}"
        )
    if any(is_causal):
        raise NotImplementedError(
            f"rpb (relative positional bias) cannot be combined with causal masking, got "
            f"is_causal={tuple(is_causal)}"
        )
    expected = (heads, *(2 * k - 1 for k in kernel_size))
    if tuple(rpb.shape) != expected:
        raise ValueError(
            f"rpb must have shape (heads, 2*kernel_size-1 per axis) = {expected}, "
            f"got {tuple(rpb.shape)}"
        )
    if rpb.dtype not in FLOAT_DTYPES:
        raise ValueError(f"rpb must be a floating tensor, got dtype {rpb.dtype}")
    if rpb.device != ref.device:
        raise ValueError(f"rpb is on {rpb.device} but the inputs are on {ref.device}")


def check_same_tensors(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """Tensors must be floating, on one device and of one dtype."""
    for name, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            allowed = ", ".join(str(d) for d in FLOAT_DTYPES)
            raise ValueError(f"{name} must have a floating dtype ({allowed}), got {t.dtype}")
    first_name, first = names[0], tensors[0]
    for name, t in zip(names[1:], tensors[1:]):
        if t.dtype != first.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def check_fused_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, ndim: int
) -> tuple[int, ...]:
    """Heads-last q/k/v ``[B, *spatial, heads, D]``; returns the spatial shape."""
    check_same_tensors(("query", "key", "value"), (query, key, value))
    rank = ndim + 3
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != rank:
            raise ValueError(
                f"{name} must be {rank}-D [batch, {_axes(ndim)}, heads, head_dim] for "
                f"{ndim}-D neighborhood attention, got shape {tuple(t.shape)}"
            )
    if query.shape[:-1] != key.shape[:-1] or key.shape[:-1] != value.shape[:-1]:
        raise ValueError(
            "query, key and value must agree in batch, spatial and heads dims, got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key must have the same head_dim, got {query.shape[-1]} and {key.shape[-1]}"
        )
    if query.shape[-1] != value.shape[-1]:
        raise ValueError(
            f"value must have the same head_dim as query ({query.shape[-1]}), got {value.shape[-1]}"
        )
    if query.shape[-1] < 1 or query.shape[0] < 1 or query.shape[-2] < 1:
        raise ValueError(f"query has an empty batch, heads or head_dim: {tuple(query.shape)}")
    return tuple(query.shape[1 : 1 + ndim])


def check_heads_first(name: str, t: torch.Tensor, ndim: int, last: str) -> None:
    """Heads-first tensors ``[B, heads, *spatial, X]`` of the unfused API."""
    rank = ndim + 3
    if t.dim() != rank:
        raise ValueError(
            f"{name} must be {rank}-D [batch, heads, {_axes(ndim)}, {last}] for {ndim}-D "
            f"neighborhood attention, got shape {tuple(t.shape)}"
        )


def check_scale(scale: float | None, head_dim: int) -> float:
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, torch.Tensor) or not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a Python float or None, got {type(scale).__name__}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return float(scale)


_AXES = {1: "length", 2: "height, width", 3: "depth, height, width"}


def _axes(ndim: int) -> str:
    return _AXES[ndim]

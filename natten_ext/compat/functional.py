"""``natten.functional`` of NATTEN 0.14-0.17: every name, with the argument orders of its releases.

All of them compute with natten_ext's ops (any device, float64/32/16 and bfloat16, RPB gradients).
Where releases disagree, the calls are told apart by their arguments, never guessed:

- ``natten1dqkrpb/natten2dqkrpb(query, key, rpb, kernel_size, dilation)`` (0.14.5+) and
  ``(query, key, rpb, dilation)`` (0.14.0-0.14.4, kernel size read off ``rpb``);
  ``natten1dav/natten2dav(attn, value, kernel_size, dilation)`` (0.14.6+) and
  ``(attn, value, dilation)`` (up to 0.14.5, kernel size read off ``attn``).
- ``na3d_qk/na3d_av``: 0.15's ``(q, k, kernel_size_d, kernel_size, dilation_d, dilation, ...)``
  when ``kernel_size_d``/``dilation_d`` is given or the fifth argument is an int, otherwise
  0.17's ``(q, k, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None)``.

Unfused ops are heads-first ``[B, heads, *spatial, D]``; their weights are ``[B, heads, *spatial,
K (+ T)]``, the neighborhood first, then one column per ``additional_keys`` token (0.15-0.17).
The fused ``na1d/na2d/na3d`` (0.17) are heads-last ``[B, *spatial, heads, D]``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .. import functional as _ne

IntOrTuple = int | Sequence[int]
BoolOrTuple = bool | Sequence[bool]

_QK = {1: _ne.na1d_qk, 2: _ne.na2d_qk, 3: _ne.na3d_qk}
_AV = {1: _ne.na1d_av, 2: _ne.na2d_av, 3: _ne.na3d_av}
_FUSED = {1: _ne.na1d, 2: _ne.na2d, 3: _ne.na3d}

__all__ = [
    "na1d",
    "na1d_av",
    "na1d_qk",
    "na1d_qk_with_bias",
    "na2d",
    "na2d_av",
    "na2d_qk",
    "na2d_qk_with_bias",
    "na3d",
    "na3d_av",
    "na3d_qk",
    "na3d_qk_with_bias",
    "natten1dav",
    "natten1dqk",
    "natten1dqkrpb",
    "natten2dav",
    "natten2dqk",
    "natten2dqkrpb",
    "natten3dav",
    "natten3dqk",
    "natten3dqkrpb",
]


# ----------------------------------------------------------------------------------- helpers


def _no_nested(*tensors: Tensor | None) -> None:
    if any(t is not None and t.is_nested for t in tensors):
        raise NotImplementedError("natten_ext.compat does not take nested tensors")


def _check_extra(name: str, extra: Tensor, ref: Tensor, ref_name: str, match_dim: bool) -> None:
    """``additional_keys/values`` are ``[B, heads, tokens, D]`` matching ``ref`` in B and heads."""
    if not isinstance(extra, Tensor):
        raise ValueError(f"{name} must be a tensor or None, got {type(extra).__name__}")
    if extra.dim() != 4:
        raise ValueError(
            f"{name} must be 4-D [batch, heads, tokens, head_dim], got shape {tuple(extra.shape)}"
        )
    want = (ref.shape[0], ref.shape[1])
    if tuple(extra.shape[:2]) != want or (match_dim and extra.shape[-1] != ref.shape[-1]):
        what = "batch, heads and head_dim" if match_dim else "batch and heads"
        raise ValueError(
            f"{name} {tuple(extra.shape)} must match {ref_name} {tuple(ref.shape)} in {what}"
        )
    if extra.dtype != ref.dtype or extra.device != ref.device:
        raise ValueError(
            f"{name} ({extra.dtype}, {extra.device}) must have the dtype and device of "
            f"{ref_name} ({ref.dtype}, {ref.device})"
        )


def _qk(ndim, query, key, kernel_size, dilation, is_causal, rpb, additional_keys) -> Tensor:
    _no_nested(query, key, additional_keys)
    attn = _QK[ndim](
        query, key, kernel_size=kernel_size, dilation=dilation, is_causal=is_causal, rpb=rpb
    )
    if additional_keys is None:
        return attn
    _check_extra("additional_keys", additional_keys, query, "query", match_dim=True)
    flat = query.flatten(2, -2)  # [B, h, N, D]
    extra = (flat @ additional_keys.transpose(-1, -2)).reshape(*query.shape[:-1], -1)
    return torch.cat([attn, extra], dim=-1)


def _av(ndim, attn, value, kernel_size, dilation, is_causal, additional_values) -> Tensor:
    _no_nested(attn, value, additional_values)
    if additional_values is None:
        return _AV[ndim](
            attn, value, kernel_size=kernel_size, dilation=dilation, is_causal=is_causal
        )
    _check_extra("additional_values", additional_values, value, "value", match_dim=True)
    window = math.prod(_window_tuple(kernel_size, ndim))
    tokens = additional_values.shape[2]
    if attn.shape[-1] != window + tokens:
        raise ValueError(
            f"attn has {attn.shape[-1]} weights per query; expected the window's {window} plus "
            f"{tokens} for additional_values"
        )
    local, extra = attn.split([window, tokens], dim=-1)
    out = _AV[ndim](local, value, kernel_size=kernel_size, dilation=dilation, is_causal=is_causal)
    glob = (extra.flatten(2, -2) @ additional_values).reshape(out.shape)
    return out + glob


def _window_tuple(kernel_size: IntOrTuple, ndim: int) -> tuple[int, ...]:
    if isinstance(kernel_size, int):
        return (kernel_size,) * ndim
    return tuple(kernel_size)


def _kernel_from_rpb(rpb: Tensor | None, name: str) -> int:
    if not isinstance(rpb, Tensor):
        raise ValueError(
            f"{name}: without kernel_size the kernel is read off rpb (NATTEN <= 0.14.4), but rpb "
            f"is {type(rpb).__name__}; pass kernel_size and dilation"
        )
    size = rpb.shape[-1]
    if size % 2 == 0:
        raise ValueError(f"{name}: rpb's last dim must be 2*kernel_size-1, got {size}")
    return (size + 1) // 2


def _kernel_from_attn(attn: Tensor, ndim: int, name: str) -> int:
    window = attn.shape[-1]
    k = round(window ** (1.0 / ndim))
    if k**ndim != window:
        raise ValueError(
            f"{name}: without kernel_size the kernel is read off attn (NATTEN <= 0.14.5), but its "
            f"last dim {window} is not kernel_size**{ndim}; pass kernel_size and dilation"
        )
    return k


def _legacy_pair(kernel_size, dilation, name: str) -> tuple[Any, Any, bool]:
    """(kernel_size, dilation, kernel_missing) for the 0.14 names' two call forms."""
    if kernel_size is None and dilation is None:
        raise TypeError(f"{name}() missing its dilation (and kernel_size) argument")
    if dilation is None:  # 0.14.0-0.14.4 positional form: the one extra argument is the dilation
        return None, kernel_size, True
    return kernel_size, dilation, kernel_size is None


# ------------------------------------------------------------------ 0.14 names (1-D and 2-D)


def natten1dqkrpb(
    query: Tensor,
    key: Tensor,
    rpb: Tensor | None,
    kernel_size: IntOrTuple | None = None,
    dilation: IntOrTuple | None = None,
) -> Tensor:
    """``(query, key, rpb, kernel_size, dilation)``, or 0.14.0-0.14.4's ``(query, key, rpb,
    dilation)``; heads-first ``[B, heads, L, D]`` -> weights ``[B, heads, L, k]``."""
    kernel_size, dilation, missing = _legacy_pair(kernel_size, dilation, "natten1dqkrpb")
    if missing:
        kernel_size = _kernel_from_rpb(rpb, "natten1dqkrpb")
    return _qk(1, query, key, kernel_size, dilation, False, rpb, None)


def natten2dqkrpb(
    query: Tensor,
    key: Tensor,
    rpb: Tensor | None,
    kernel_size: IntOrTuple | None = None,
    dilation: IntOrTuple | None = None,
) -> Tensor:
    """``(query, key, rpb, kernel_size, dilation)``, or 0.14.0-0.14.4's ``(query, key, rpb,
    dilation)``; heads-first ``[B, heads, H, W, D]`` -> weights ``[B, heads, H, W, k*k]``."""
    kernel_size, dilation, missing = _legacy_pair(kernel_size, dilation, "natten2dqkrpb")
    if missing:
        kernel_size = _kernel_from_rpb(rpb, "natten2dqkrpb")
    return _qk(2, query, key, kernel_size, dilation, False, rpb, None)


def natten1dqk(query: Tensor, key: Tensor, kernel_size: int, dilation: int) -> Tensor:
    """Weights ``[B, heads, L, k]`` without bias (0.14.6+)."""
    return _qk(1, query, key, kernel_size, dilation, False, None, None)


def natten2dqk(query: Tensor, key: Tensor, kernel_size: int, dilation: int) -> Tensor:
    """Weights ``[B, heads, H, W, k*k]`` without bias (0.14.6+)."""
    return _qk(2, query, key, kernel_size, dilation, False, None, None)


def natten1dav(
    attn: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple | None = None,
    dilation: IntOrTuple | None = None,
) -> Tensor:
    """``(attn, value, kernel_size, dilation)``, or up to 0.14.5's ``(attn, value, dilation)``."""
    kernel_size, dilation, missing = _legacy_pair(kernel_size, dilation, "natten1dav")
    if missing:
        kernel_size = _kernel_from_attn(attn, 1, "natten1dav")
    return _av(1, attn, value, kernel_size, dilation, False, None)


def natten2dav(
    attn: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple | None = None,
    dilation: IntOrTuple | None = None,
) -> Tensor:
    """``(attn, value, kernel_size, dilation)``, or up to 0.14.5's ``(attn, value, dilation)``."""
    kernel_size, dilation, missing = _legacy_pair(kernel_size, dilation, "natten2dav")
    if missing:
        kernel_size = _kernel_from_attn(attn, 2, "natten2dav")
    return _av(2, attn, value, kernel_size, dilation, False, None)


# ------------------------------------------------------------- 0.15-0.17 unfused (1-D, 2-D)


def na1d_qk(
    query: Tensor,
    key: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    additional_keys: Tensor | None = None,
    is_causal: BoolOrTuple = False,
    rpb: Tensor | None = None,
) -> Tensor:
    """Weights ``[B, heads, L, k (+ T)]`` from ``[B, heads, L, D]`` (scale q beforehand)."""
    return _qk(1, query, key, kernel_size, dilation, is_causal, rpb, additional_keys)


def na2d_qk(
    query: Tensor,
    key: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    additional_keys: Tensor | None = None,
    is_causal: BoolOrTuple = False,
    rpb: Tensor | None = None,
) -> Tensor:
    """Weights ``[B, heads, H, W, kh*kw (+ T)]`` from ``[B, heads, H, W, D]``."""
    return _qk(2, query, key, kernel_size, dilation, is_causal, rpb, additional_keys)


def na1d_qk_with_bias(
    query: Tensor,
    key: Tensor,
    bias: Tensor | None,
    kernel_size: int,
    dilation: int,
    additional_keys: Tensor | None = None,
) -> Tensor:
    """0.15's QK with relative positional bias ``bias`` (heads, 2k-1)."""
    return _qk(1, query, key, kernel_size, dilation, False, bias, additional_keys)


def na2d_qk_with_bias(
    query: Tensor,
    key: Tensor,
    bias: Tensor | None,
    kernel_size: int,
    dilation: int,
    additional_keys: Tensor | None = None,
) -> Tensor:
    """0.15's QK with relative positional bias ``bias`` (heads, 2k-1, 2k-1)."""
    return _qk(2, query, key, kernel_size, dilation, False, bias, additional_keys)


def na1d_av(
    attn: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    additional_values: Tensor | None = None,
    is_causal: BoolOrTuple = False,
) -> Tensor:
    """Apply weights ``[B, heads, L, k (+ T)]`` to values ``[B, heads, L, D]``."""
    return _av(1, attn, value, kernel_size, dilation, is_causal, additional_values)


def na2d_av(
    attn: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    additional_values: Tensor | None = None,
    is_causal: BoolOrTuple = False,
) -> Tensor:
    """Apply weights ``[B, heads, H, W, kh*kw (+ T)]`` to values ``[B, heads, H, W, D]``."""
    return _av(2, attn, value, kernel_size, dilation, is_causal, additional_values)


# ------------------------------------------------------------------------- 3-D, both forms


def _qk3d_015(
    query, key, kernel_size_d, kernel_size, dilation_d, dilation, additional_keys=None, rpb=None
):
    ks, dil = (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation)
    return _qk(3, query, key, ks, dil, False, rpb, additional_keys)


def _qk3d_017(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None):
    return _qk(3, query, key, kernel_size, dilation, is_causal, rpb, additional_keys)


def _av3d_015(
    attn, value, kernel_size_d, kernel_size, dilation_d, dilation, additional_values=None
):
    ks, dil = (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation)
    return _av(3, attn, value, ks, dil, False, additional_values)


def _av3d_017(attn, value, kernel_size, dilation=1, additional_values=None, is_causal=False):
    return _av(3, attn, value, kernel_size, dilation, is_causal, additional_values)


def _is_015_form(args: tuple, kwargs: dict) -> bool:
    """0.15's 3-D form names kernel_size_d/dilation_d, or has an int where 0.17 has a tensor."""
    if "kernel_size_d" in kwargs or "dilation_d" in kwargs:
        return True
    third = args[4] if len(args) > 4 else None
    return isinstance(third, int) and not isinstance(third, bool)


def _bind(fn: Callable, public: str, args: tuple, kwargs: dict) -> Any:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{public}(): {exc}") from None
    return fn(*args, **kwargs)


def na3d_qk(query: Tensor, key: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """Weights ``[B, heads, D, H, W, kd*kh*kw (+ T)]`` from ``[B, heads, D, H, W, head_dim]``.

    0.17: ``na3d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False,
    rpb=None)``; 0.15: ``na3d_qk(query, key, kernel_size_d, kernel_size, dilation_d, dilation,
    additional_keys=None)``.
    """
    fn = _qk3d_015 if _is_015_form((query, key, *args), kwargs) else _qk3d_017
    if fn is _qk3d_015 and "rpb" in kwargs:
        raise TypeError("na3d_qk(): 0.15's form takes no rpb; use na3d_qk_with_bias")
    return _bind(fn, "na3d_qk", (query, key, *args), kwargs)


def na3d_av(attn: Tensor, value: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """Apply weights ``[B, heads, D, H, W, K (+ T)]`` to values ``[B, heads, D, H, W, head_dim]``.

    0.17: ``na3d_av(attn, value, kernel_size, dilation, additional_values=None, is_causal=False)``;
    0.15: ``na3d_av(attn, value, kernel_size_d, kernel_size, dilation_d, dilation,
    additional_values=None)``.
    """
    fn = _av3d_015 if _is_015_form((attn, value, *args), kwargs) else _av3d_017
    return _bind(fn, "na3d_av", (attn, value, *args), kwargs)


def na3d_qk_with_bias(
    query: Tensor,
    key: Tensor,
    bias: Tensor | None,
    kernel_size_d: int,
    kernel_size: int,
    dilation_d: int,
    dilation: int,
    additional_keys: Tensor | None = None,
) -> Tensor:
    """0.15's 3-D QK with bias ``(heads, 2kd-1, 2k-1, 2k-1)``."""
    return _qk3d_015(
        query, key, kernel_size_d, kernel_size, dilation_d, dilation, additional_keys, bias
    )


def natten3dqkrpb(
    query: Tensor,
    key: Tensor,
    rpb: Tensor | None,
    kernel_size_d: int,
    kernel_size: int,
    dilation_d: int,
    dilation: int,
) -> Tensor:
    """0.15-0.17.0's 3-D QK with RPB."""
    return _qk3d_015(query, key, kernel_size_d, kernel_size, dilation_d, dilation, None, rpb)


def natten3dqk(
    query: Tensor, key: Tensor, kernel_size_d: int, kernel_size: int, dilation_d: int, dilation: int
) -> Tensor:
    """0.15-0.17.0's 3-D QK without bias."""
    return _qk3d_015(query, key, kernel_size_d, kernel_size, dilation_d, dilation)


def natten3dav(
    attn: Tensor,
    value: Tensor,
    kernel_size_d: int,
    kernel_size: int,
    dilation_d: int,
    dilation: int,
) -> Tensor:
    """0.15-0.17.0's 3-D AV."""
    return _av3d_015(attn, value, kernel_size_d, kernel_size, dilation_d, dilation)


# ------------------------------------------------------------------------ 0.17 fused (heads-last)


def _fused(ndim, query, key, value, kernel_size, dilation, is_causal, rpb, scale, add_k, add_v):
    _no_nested(query, key, value, add_k, add_v)
    # 0.17 computes `scale or head_dim ** -0.5`: 0 and None both mean the default.
    scale = scale or query.shape[-1] ** -0.5
    if (add_k is None) != (add_v is None):
        raise ValueError("additional_keys and additional_values must both be tensors or both None")
    if add_k is None:
        return _FUSED[ndim](
            query, key, value, kernel_size, dilation, is_causal=is_causal, rpb=rpb, scale=scale
        )
    # With extra global tokens: the same function through the unfused ops (weights materialised).
    perm = (0, ndim + 1, *range(1, ndim + 1), ndim + 2)
    q, k, v = (t.permute(perm) for t in (query, key, value))
    attn = _qk(ndim, q * scale, k, kernel_size, dilation, is_causal, rpb, add_k)
    attn = attn.softmax(dim=-1, dtype=torch.promote_types(attn.dtype, torch.float32)).to(v.dtype)
    out = _av(ndim, attn, v, kernel_size, dilation, is_causal, add_v)
    return out.permute(0, *range(2, ndim + 2), 1, ndim + 2)


def _fused_doc(fn: Callable) -> Callable:
    fn.__doc__ = (
        "0.17's fused neighborhood attention on heads-last ``[B, *spatial, heads, D]``; returns "
        "the same shape.\n\n``additional_keys/values`` ``[B, heads, T, D]`` add T global tokens "
        "(computed through the unfused ops); ``xformers_kwargs`` must be None."
    )
    return fn


def _check_xformers(xformers_kwargs: dict | None) -> None:
    if xformers_kwargs:
        raise NotImplementedError("natten_ext.compat has no xformers path: xformers_kwargs=None")


@_fused_doc
def na1d(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    rpb: Tensor | None = None,
    scale: float | None = None,
    additional_keys: Tensor | None = None,
    additional_values: Tensor | None = None,
    xformers_kwargs: dict | None = None,
) -> Tensor:
    _check_xformers(xformers_kwargs)
    return _fused(
        1,
        query,
        key,
        value,
        kernel_size,
        dilation,
        is_causal,
        rpb,
        scale,
        additional_keys,
        additional_values,
    )


@_fused_doc
def na2d(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    rpb: Tensor | None = None,
    scale: float | None = None,
    additional_keys: Tensor | None = None,
    additional_values: Tensor | None = None,
    xformers_kwargs: dict | None = None,
) -> Tensor:
    _check_xformers(xformers_kwargs)
    return _fused(
        2,
        query,
        key,
        value,
        kernel_size,
        dilation,
        is_causal,
        rpb,
        scale,
        additional_keys,
        additional_values,
    )


@_fused_doc
def na3d(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    rpb: Tensor | None = None,
    scale: float | None = None,
    additional_keys: Tensor | None = None,
    additional_values: Tensor | None = None,
    xformers_kwargs: dict | None = None,
) -> Tensor:
    _check_xformers(xformers_kwargs)
    return _fused(
        3,
        query,
        key,
        value,
        kernel_size,
        dilation,
        is_causal,
        rpb,
        scale,
        additional_keys,
        additional_values,
    )

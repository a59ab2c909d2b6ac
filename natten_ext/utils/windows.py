"""Neighborhood index tables (spec §1-3), shared by the reference backend and the tests' users.

For one axis of length ``L`` with kernel ``k``, dilation ``d`` and causal flag, every query ``i``
gets ``k`` key slots. ``key[i, j]`` is the key position of slot ``j``, ``valid[i, j]`` says whether
the slot is a real neighbour (only causal windows near the start have invalid slots; their key is
clamped to the query itself) and ``bias[i, j]`` is the relative-position index ``(k-1) + (y-i)/d``.
Multi-dimensional tables are the row-major Cartesian product of the per-axis ones.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch


def axis_table(
    length: int, kernel_size: int, dilation: int, is_causal: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-axis ``(key, valid, bias)`` tables of shape ``[length, kernel_size]``."""
    k, d = kernel_size, dilation
    i = torch.arange(length)
    group = i % d
    pos = i // d  # position inside the dilation group
    group_len = (length - group + d - 1) // d
    j = torch.arange(k)
    if is_causal:
        start = (pos - k + 1).clamp(min=0)
        slot = start[:, None] + j[None, :]
        valid = slot <= pos[:, None]
        slot = torch.where(valid, slot, pos[:, None])
    else:
        start = torch.minimum((pos - k // 2).clamp(min=0), group_len - k)
        slot = start[:, None] + j[None, :]
        valid = torch.ones(length, k, dtype=torch.bool)
    key = group[:, None] + d * slot
    bias = (k - 1) + slot - pos[:, None]
    return key, valid, bias


@functools.lru_cache(maxsize=256)
def _window_table_cpu(
    spatial: tuple[int, ...],
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
    is_causal: tuple[bool, ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ndim = len(spatial)
    key = torch.zeros((), dtype=torch.long)
    bias = torch.zeros((), dtype=torch.long)
    valid = torch.ones((), dtype=torch.bool)
    for axis in range(ndim):
        k_ax, v_ax, b_ax = axis_table(
            spatial[axis], kernel_size[axis], dilation[axis], is_causal[axis]
        )
        # Place this axis' query dim at position `axis` and its window dim at `ndim + axis`.
        shape = [1] * (2 * ndim)
        shape[axis] = spatial[axis]
        shape[ndim + axis] = kernel_size[axis]
        key = key * spatial[axis] + k_ax.view(shape)
        bias = bias * (2 * kernel_size[axis] - 1) + b_ax.view(shape)
        valid = valid & v_ax.view(shape)
    full = (*spatial, *kernel_size)
    n, kk = _prod(spatial), _prod(kernel_size)
    key = key.expand(full).reshape(n, kk).contiguous()
    bias = bias.expand(full).reshape(n, kk).contiguous()
    valid = valid.expand(full).reshape(n, kk).contiguous()
    return key, valid, bias


_device_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def window_table(
    spatial: Sequence[int],
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    is_causal: Sequence[bool],
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened ``(key, valid, bias)`` tables of shape ``[N, K]`` (N tokens, K window size).

    ``key`` indexes the flattened keys, ``bias`` the flattened RPB table of shape
    ``(2k-1, ...)`` per head, ``valid`` marks real neighbours.
    """
    args = (tuple(spatial), tuple(kernel_size), tuple(dilation), tuple(bool(c) for c in is_causal))
    device = torch.device(device)
    if device.type == "cpu":
        return _window_table_cpu(*args)
    cache_key = (*args, str(device))
    if cache_key not in _device_cache:
        if len(_device_cache) > 256:
            _device_cache.clear()
        _device_cache[cache_key] = tuple(t.to(device) for t in _window_table_cpu(*args))
    return _device_cache[cache_key]


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out

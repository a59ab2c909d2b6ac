"""Attention of a query: the weights one block's neighborhood attention gives the keys of a
query's neighborhood, drawn over the image.

The weights come from the model's own forward: hooks on the block's
:class:`~natten_ext.NeighborhoodAttention2D` record the size of the map it attends over and
the output of its ``qkv`` projection, and the weights are that projection's queries and keys
through ``natten_ext.na2d_qk`` with the module's scale, kernel, dilation and relative positional
bias, then a softmax (the fused kernel's math; ``na2d_av`` of them with the values gives the
module's attention output).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import natten_ext
from natten_ext.utils.windows import axis_table

from .figure import ColorBar, Picture, display_scale, save_panels, upscale
from .inputs import attention_module, check_index, index_range, point_to_cell

__all__ = [
    "ATTENTION_CMAP",
    "BASE_DIM",
    "OVERLAY_ALPHA",
    "AttentionCapture",
    "attention_panel",
    "capture_attention",
    "draw_attention",
]

ATTENTION_CMAP = "viridis"
OVERLAY_ALPHA = 0.75  # weight of the colour over the image inside the neighborhood
BASE_DIM = 0.55  # the image is shown dimmed to this brightness


@dataclass(frozen=True)
class AttentionCapture:
    """One block's attention weights in a forward pass of the model.

    ``weights``: ``[B, heads, H, W, kh*kw]`` float32 softmax weights of the ``H x W`` queries of
    the level's map, the window flattened row-major (natten_ext's layout). The module attends
    over ``padded_size`` (the map zero-padded up to ``kernel_size * dilation`` where it is
    smaller, NATTEN's behaviour), so a window may hold keys outside the map. ``qkv``: the
    projection's output ``[B, *padded_size, 3 * dim]``; ``logits``: the model's output.
    """

    weights: Tensor
    qkv: Tensor
    logits: Tensor
    map_size: tuple[int, int]
    padded_size: tuple[int, int]
    kernel_size: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def num_heads(self) -> int:
        return self.weights.shape[1]

    def keys(self, row: int, col: int) -> Tensor:
        """``[kh*kw, 2]`` (row, col) of each key of query ``(row, col)`` on the padded map."""
        tables = [
            axis_table(length, k, d, False)[0]
            for length, k, d in zip(self.padded_size, self.kernel_size, self.dilation)
        ]
        rows, cols = tables[0][row], tables[1][col]
        return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)

    def neighborhood(self, row: int, col: int, head: int, item: int = 0) -> np.ndarray:
        """``[H, W]`` map of the weights query ``(row, col)`` gives each key, zero outside its
        neighborhood; keys on the padding (outside the map) are left out."""
        out = np.zeros(self.map_size, dtype=np.float64)
        weights = self.weights[item, head, row, col].double().cpu().numpy()
        for (r, c), w in zip(self.keys(row, col).tolist(), weights):
            if r < self.map_size[0] and c < self.map_size[1]:
                out[r, c] = w
        return out

    def mask(self, row: int, col: int) -> np.ndarray:
        """``[H, W]`` bool: the keys of query ``(row, col)`` that lie on the map."""
        out = np.zeros(self.map_size, dtype=bool)
        for r, c in self.keys(row, col).tolist():
            if r < self.map_size[0] and c < self.map_size[1]:
                out[r, c] = True
        return out


def capture_attention(
    model: nn.Module, images: Tensor, level: int, block: int, name: str = "the model"
) -> AttentionCapture:
    """Run ``model(images)`` and return the attention weights of ``block`` in ``level``."""
    attn = attention_module(model, name, level, block)
    seen: dict[str, object] = {}

    def before(module: nn.Module, args: tuple) -> None:
        seen["map_size"] = tuple(args[0].shape[1:3])

    def after_qkv(module: nn.Module, args: tuple, output: Tensor) -> None:
        seen["qkv"] = output.detach()

    hooks = [attn.register_forward_pre_hook(before), attn.qkv.register_forward_hook(after_qkv)]
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        for hook in hooks:
            hook.remove()
    qkv: Tensor = seen["qkv"]  # type: ignore[assignment]
    map_size: tuple[int, int] = seen["map_size"]  # type: ignore[assignment]
    parts = qkv.unflatten(-1, (3, attn.num_heads, attn.head_dim))  # as the module splits it
    q, k = (parts.select(-3, i).permute(0, 3, 1, 2, 4) for i in (0, 1))  # heads first
    with torch.no_grad():
        logits_qk = natten_ext.na2d_qk(
            q * attn.scale, k, attn.kernel_size, attn.dilation, attn.is_causal, attn.rpb
        )
    weights = logits_qk.float().softmax(dim=-1)[:, :, : map_size[0], : map_size[1]]
    return AttentionCapture(
        weights=weights.contiguous(),
        qkv=qkv,
        logits=logits.detach(),
        map_size=map_size,
        padded_size=tuple(qkv.shape[1:3]),
        kernel_size=tuple(attn.kernel_size),
        dilation=tuple(attn.dilation),
    )


def _cells(size: int, cells: int) -> np.ndarray:
    """For each of ``size`` pixels, the index of the grid cell (of ``cells``) that holds it."""
    return (np.arange(size) * cells) // size


def attention_panel(
    pixels: np.ndarray,
    weights: np.ndarray,
    mask: np.ndarray,
    query: tuple[int, int],
    vmax: float,
    scale: int = 1,
) -> np.ndarray:
    """The image dimmed to BASE_DIM brightness; the cells of ``mask`` blended (OVERLAY_ALPHA)
    with the colour of their weight (ATTENTION_CMAP over ``[0, vmax]``); the query's cell
    outlined in white. Enlarged ``scale`` times."""
    from .figure import colormap

    h, w = pixels.shape[:2]
    rows, cols = _cells(h, mask.shape[0]), _cells(w, mask.shape[1])
    inside = mask[rows][:, cols]
    colour = colormap(ATTENTION_CMAP, weights[rows][:, cols] / max(vmax, 1e-12))
    out = pixels.astype(np.float64) * BASE_DIM
    out[inside] = (1 - OVERLAY_ALPHA) * out[inside] + OVERLAY_ALPHA * colour[inside]
    out = upscale(np.round(out).astype(np.uint8), scale)
    ys = np.nonzero(np.repeat(rows, scale) == query[0])[0]
    xs = np.nonzero(np.repeat(cols, scale) == query[1])[0]
    t = max(1, scale // 2)
    for sl in (
        np.s_[ys[0] : ys[0] + t, xs[0] : xs[-1] + 1],
        np.s_[ys[-1] - t + 1 : ys[-1] + 1, xs[0] : xs[-1] + 1],
        np.s_[ys[0] : ys[-1] + 1, xs[0] : xs[0] + t],
        np.s_[ys[0] : ys[-1] + 1, xs[-1] - t + 1 : xs[-1] + 1],
    ):
        out[sl] = 255
    return out


@dataclass(frozen=True)
class AttentionPicture:
    """A written attention picture: the PNG, and per head shown its ``[H, W]`` weight map (zero
    outside the query's neighborhood), the neighborhood's mask, the query cell, and the
    enlargement of the image in the panels."""

    picture: Picture
    heads: tuple[int, ...]
    weights: np.ndarray
    mask: np.ndarray
    query: tuple[int, int]
    scale: int
    pixels: np.ndarray


def draw_attention(
    capture: AttentionCapture,
    pixels: np.ndarray,
    point: tuple[float, float],
    heads: Sequence[int] | None,
    out: str | Path,
    title: str,
) -> AttentionPicture:
    """Draw the attention of the query at ``point`` (x, y fractions) for ``heads`` (None: all,
    in a grid) over ``pixels`` (the image as the model saw it) and write the PNG ``out``."""
    if heads is None:
        heads = list(range(capture.num_heads))
    for head in heads:
        check_index("--head", head, capture.num_heads, "this level has heads")
    row, col = point_to_cell(point, capture.map_size)
    mask = capture.mask(row, col)
    maps = np.stack([capture.neighborhood(row, col, h) for h in heads])
    vmax = float(maps.max())
    scale = display_scale(pixels.shape[0])
    panels = [attention_panel(pixels, m, mask, (row, col), vmax, scale) for m in maps]
    titles = []
    for head, m in zip(heads, maps):
        lost = 1.0 - float(m.sum())
        titles.append(f"head {head}" + (f" ({100 * lost:.0f}% on padding)" if lost > 5e-3 else ""))
    (kh, kw), (dh, dw) = capture.kernel_size, capture.dilation
    h, w = capture.map_size
    heading = (
        f"{title}\n{kh}x{kw} window, dilation {dh if dh == dw else (dh, dw)}, "
        f"map {h}x{w}, query at row {row}, col {col}"
    )
    columns = len(heads) if len(heads) <= 4 else math.ceil(math.sqrt(len(heads)))
    picture = save_panels(
        out,
        panels,
        titles,
        columns,
        heading,
        ColorBar(ATTENTION_CMAP, 0.0, vmax, "attention weight"),
    )
    return AttentionPicture(picture, tuple(heads), maps, mask, (row, col), scale, pixels)


def head_choices(num_heads: int) -> str:
    return f"{index_range(num_heads)} or 'all'"

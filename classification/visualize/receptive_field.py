"""Receptive field: the gradient of one output position of a level with respect to the input
pixels, as a heat map.

The objective is the sum over channels of the level's output (``forward_intermediates``, before
the level's downsampler) at one position; the map is ``|d objective / d pixel|`` summed over the
colour channels and averaged over the inputs. Pixels outside the receptive field get exactly zero
(neighborhood attention and the convolutions have hard windows): they are drawn white, the
others on a logarithmic colour scale. NAT's field grows locally, level by level; DiNAT's dilated
blocks make it wider and sparser at the same level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .figure import ColorBar, Picture, colormap, display_scale, save_panels, upscale
from .inputs import point_to_cell

__all__ = [
    "BANDS_PER_DECADE",
    "DECADES",
    "FIELD_CMAP",
    "ReceptiveField",
    "draw_receptive_fields",
    "field_panel",
    "receptive_field",
]

FIELD_CMAP = "viridis"
DECADES = 4  # the colour scale spans |gradient| / max from 10**-DECADES to 1 ...
BANDS_PER_DECADE = 4  # ... in bands of a quarter decade
EMPTY = (255, 255, 255)  # colour of pixels with zero gradient


@dataclass(frozen=True)
class ReceptiveField:
    """``gradient``: ``[S, S]`` float64 map (see the module docstring) of the output at
    ``position`` (row, col) of the level's ``map_size`` map."""

    gradient: np.ndarray
    level: int
    position: tuple[int, int]
    map_size: tuple[int, int]

    @property
    def support(self) -> np.ndarray:
        """Pixels with a non-zero gradient: the receptive field."""
        return self.gradient > 0

    def extent(self) -> tuple[int, int]:
        """(height, width) in pixels of the bounding box of the support."""
        ys, xs = np.nonzero(self.support)
        if ys.size == 0:
            return 0, 0
        return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)

    def fill(self) -> float:
        """Share of the bounding box's pixels that are in the support (1: a solid field)."""
        h, w = self.extent()
        return float(self.support.sum()) / (h * w) if h * w else 0.0


def receptive_field(
    model: nn.Module,
    level: int,
    images: Tensor,
    point: tuple[float, float] = (0.5, 0.5),
) -> ReceptiveField:
    """The receptive field of the level-``level`` output at ``point`` (x, y fractions), from
    ``images`` ``[N, 3, S, S]`` (its N gradients are averaged)."""
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (features,) = model.forward_intermediates(
            x, indices=[level], intermediates_only=True, stop_early=True, output_fmt="NCHW"
        )
        map_size = (int(features.shape[-2]), int(features.shape[-1]))
        row, col = point_to_cell(point, map_size)
        (grad,) = torch.autograd.grad(features[:, :, row, col].sum(), x)
    gradient = grad.double().abs().sum(dim=1).mean(dim=0).cpu().numpy()
    return ReceptiveField(gradient, level, (row, col), map_size)


def field_panel(gradient: np.ndarray, scale: int = 1) -> np.ndarray:
    """RGB heat map: zero white, else FIELD_CMAP of ``1 + log10(|g| / max) / DECADES`` in
    ``DECADES * BANDS_PER_DECADE`` bands."""
    out = np.empty((*gradient.shape, 3), dtype=np.uint8)
    out[...] = EMPTY
    top = float(gradient.max())
    nonzero = gradient > 0
    if top > 0:
        level = 1.0 + np.log10(gradient[nonzero] / top) / DECADES
        out[nonzero] = colormap(FIELD_CMAP, level, DECADES * BANDS_PER_DECADE)
    return upscale(out, scale)


def draw_receptive_fields(
    fields: Sequence[Sequence[ReceptiveField]],
    names: Sequence[str],
    point: tuple[float, float],
    out: str | Path,
    note: str = "",
) -> Picture:
    """One row per model (``names``), one panel per level; writes the PNG ``out``. ``point`` is
    the output position the fields were taken at, ``note`` a remark for the heading."""
    size = fields[0][0].gradient.shape[0]
    scale = display_scale(size)
    panels, titles = [], []
    for name, row in zip(names, fields):
        for field in row:
            h, w = field.extent()
            panels.append(field_panel(field.gradient, scale))
            titles.append(
                f"{name}, level {field.level}\n{w}x{h} px box, {100 * field.fill():.0f}% nonzero"
            )
    heading = (
        f"Receptive field of the output at x,y = {point[0]:.2f},{point[1]:.2f} of each level"
        f"\n|d output / d input| on a {size}x{size} px input{note}; white: zero gradient"
    )
    return save_panels(
        out,
        panels,
        titles,
        columns=len(fields[0]),
        heading=heading,
        colorbar=ColorBar(
            FIELD_CMAP, -DECADES, 0.0, "log10 |gradient| / max", DECADES * BANDS_PER_DECADE
        ),
    )

"""Figures of nat-visualize: panels placed pixel for pixel, colour maps, atomic PNG writes.

matplotlib (the ``plot`` extra) is imported only when a picture is drawn; without it
:func:`require_matplotlib` raises :class:`MatplotlibMissing`, whose message says how to install
it. Panels are RGB arrays drawn unresampled (``Figure.figimage``), so pixel ``(r, c)`` of a panel
is pixel ``(box.top + r, box.left + c)`` of the PNG: :class:`Picture` reports every box.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..atomic import atomic_write

__all__ = [
    "INSTALL_HINT",
    "Box",
    "ColorBar",
    "MatplotlibMissing",
    "Picture",
    "VisualizeError",
    "check_png_path",
    "colormap",
    "display_scale",
    "new_figure",
    "require_matplotlib",
    "save_figure",
    "save_panels",
    "text_width",
    "upscale",
]

INSTALL_HINT = "pip install -e '.[plot]' (or: pip install matplotlib)"
DPI = 100
MARGIN, GAP, TITLE_LINE, HEADING_LINE = 10, 10, 13, 16  # pixels
HEADING_SIZE, TITLE_SIZE = 9.5, 8.5  # points
COLORBAR_GAP, COLORBAR_W, COLORBAR_LABELS = 12, 14, 62
MIN_PANEL = 192  # small inputs are shown enlarged to at least this many pixels


class VisualizeError(ValueError):
    """A bad argument or input, described in one line."""


class MatplotlibMissing(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> ModuleType:
    """The ``matplotlib`` module; raises :class:`MatplotlibMissing` with the install command."""
    try:
        import matplotlib
    except ImportError as err:
        raise MatplotlibMissing(
            f"drawing pictures needs matplotlib, which is not installed: {INSTALL_HINT}"
        ) from err
    return matplotlib


def check_png_path(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` as a Path; it must end in ``.png``."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise VisualizeError(f"{option} must name a .png file, got {str(path)!r}")
    return path


def colormap(name: str, values: np.ndarray, levels: int | None = None) -> np.ndarray:
    """uint8 RGB colours ``[..., 3]`` of ``values`` in [0, 1] (clipped) under matplotlib's map
    ``name``, continuous or in ``levels`` bands."""
    cmap = require_matplotlib().colormaps[name]
    if levels is not None:
        cmap = cmap.resampled(levels)
    rgba = cmap(np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0))
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def display_scale(size: int) -> int:
    """The integer enlargement that shows a ``size``-pixel input at least MIN_PANEL wide."""
    return max(1, math.ceil(MIN_PANEL / max(size, 1)))


def upscale(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Each pixel repeated ``scale`` x ``scale`` times (nearest neighbour)."""
    if scale == 1:
        return rgb
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)


@dataclass(frozen=True)
class Box:
    """A rectangle of the PNG in pixels (top-left origin)."""

    top: int
    left: int
    height: int
    width: int

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The part of an ``[H, W, ...]`` array inside the box."""
        return image[self.top : self.top + self.height, self.left : self.left + self.width]


@dataclass(frozen=True)
class Picture:
    """A written PNG: its path, size in pixels and the box of each panel (row-major)."""

    path: Path
    width: int
    height: int
    panels: tuple[Box, ...]


@dataclass(frozen=True)
class ColorBar:
    """A colour bar beside the panels: ``cmap`` from ``vmin`` to ``vmax`` (in ``levels`` bands
    when given)."""

    cmap: str
    vmin: float
    vmax: float
    label: str
    levels: int | None = None


def new_figure(width: int, height: int) -> Any:
    """A matplotlib Figure of ``width`` x ``height`` pixels on the Agg canvas (pyplot is never
    imported, so the caller's backend is left alone)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path, exact: Sequence[Box] = ()) -> None:
    """Write ``fig`` as PNG atomically (the old file or the new one, never a partial one).

    When a 256-colour palette keeps every pixel of the ``exact`` boxes (the panels of
    heat maps in a few colours), the PNG is written with it: a fraction of the size, with only
    the anti-aliased edges of the text off by a few levels.
    """
    from PIL import Image

    fig.canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    image = Image.fromarray(rgb)
    if exact:
        palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        back = np.asarray(palette.convert("RGB"))
        if all(np.array_equal(box.crop(back), box.crop(rgb)) for box in exact):
            image = palette
    atomic_write(path, lambda f: image.save(f, format="png", optimize=True))


def save_panels(
    path: str | os.PathLike[str],
    panels: Sequence[np.ndarray],
    titles: Sequence[str],
    columns: int,
    heading: str | None = None,
    colorbar: ColorBar | None = None,
) -> Picture:
    """Lay equally sized uint8 RGB ``panels`` out in rows of ``columns``, each under its title
    (one or more lines), the ``heading`` (one or more lines) above all and an optional colour
    bar on the right; write the PNG."""
    path = check_png_path(path)
    if not panels or len(panels) != len(titles):
        raise ValueError("save_panels needs one title per panel and at least one panel")
    ph, pw = panels[0].shape[:2]
    if any(p.shape != (ph, pw, 3) or p.dtype != np.uint8 for p in panels):
        raise ValueError("panels must be uint8 RGB arrays of one size")
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    lines = heading.split("\n") if heading else []
    title_h = TITLE_LINE * max(t.count("\n") + 1 for t in titles) + 7
    head = HEADING_LINE * len(lines) + 8 if lines else 0
    bar = COLORBAR_GAP + COLORBAR_W + COLORBAR_LABELS if colorbar else 0
    width = 2 * MARGIN + columns * pw + (columns - 1) * GAP + bar
    width = max([width] + [2 * MARGIN + text_width(t, HEADING_SIZE, "bold") for t in lines])
    height = 2 * MARGIN + head + rows * (title_h + ph) + (rows - 1) * GAP
    fig = new_figure(width, height)
    boxes = []
    for n, (panel, title) in enumerate(zip(panels, titles)):
        r, c = divmod(n, columns)
        top = MARGIN + head + r * (title_h + ph + GAP) + title_h
        left = MARGIN + c * (pw + GAP)
        fig.figimage(panel, xo=left, yo=height - top - ph, origin="upper")
        fig.text(
            (left + pw / 2) / width, 1 - (top - 4) / height, title, ha="center", va="bottom",
            fontsize=TITLE_SIZE, linespacing=1.1,
        )  # fmt: skip
        boxes.append(Box(top, left, ph, pw))
    for n, line in enumerate(lines):
        y = MARGIN + HEADING_LINE * (n + 0.5)
        fig.text(MARGIN / width, 1 - y / height, line, va="center", fontsize=HEADING_SIZE,
                 fontweight="normal" if n else "bold")  # fmt: skip
    if colorbar:
        _draw_colorbar(fig, colorbar, boxes, width, height)
    save_figure(fig, path, boxes)
    return Picture(path, width, height, tuple(boxes))


def text_width(text: str, fontsize: float, weight: str = "normal") -> int:
    """The width in pixels of ``text`` set in matplotlib's default font at ``fontsize`` points."""
    require_matplotlib()
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    path = TextPath((0, 0), text, size=fontsize, prop=FontProperties(weight=weight))
    return math.ceil(path.get_extents().width * DPI / 72) + 4


def _draw_colorbar(fig: Any, spec: ColorBar, boxes: list[Box], width: int, height: int) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    right = max(b.left + b.width for b in boxes)
    top, bottom = boxes[0].top, max(b.top + b.height for b in boxes)
    ax = fig.add_axes(
        [
            (right + COLORBAR_GAP) / width,
            1 - bottom / height,
            COLORBAR_W / width,
            (bottom - top) / height,
        ]
    )
    cmap = colormaps[spec.cmap]
    if spec.levels is not None:
        cmap = cmap.resampled(spec.levels)
    mappable = ScalarMappable(Normalize(spec.vmin, spec.vmax), cmap)
    cb = fig.colorbar(mappable, cax=ax)
    cb.ax.tick_params(labelsize=7)
    cb.set_label(spec.label, fontsize=7.5)

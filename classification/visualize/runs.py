"""Curves of nat-train runs from their CSV logs: training loss and learning rate per step
(``steps.csv``), training / validation loss and top-1 / top-5 per epoch (``epochs.csv``).

Several runs share the four panels, one colour per run, so they compare at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..training.runlog import read_csv
from .figure import Box, VisualizeError, check_png_path, new_figure, save_figure

__all__ = ["PANELS", "RunsPicture", "draw_runs", "run_labels"]

PANELS = ("training loss", "learning rate", "loss per epoch", "validation accuracy (%)")
WIDTH, HEIGHT = 1100, 700  # pixels


@dataclass(frozen=True)
class RunsPicture:
    """A written runs picture: the PNG, its size, the boxes of each panel's plot area and of its
    legend (by panel title) and the colour (``#rrggbb``) of each run."""

    path: Path
    width: int
    height: int
    panels: dict[str, Box]
    legends: dict[str, Box]
    colours: dict[str, str]


def _series(rows: list[dict[str, str]], x: str, y: str) -> tuple[list[float], list[float]]:
    points = []
    for row in rows:
        try:
            points.append((float(row[x]), float(row[y])))
        except (KeyError, TypeError, ValueError):  # an empty cell: no value that epoch
            continue
    return [p[0] for p in points], [p[1] for p in points]


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Short distinct names: the directory names, with their parents where those repeat."""
    names = [p.name or str(p) for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [str(Path(p.parent.name) / p.name) if p.parent.name else p.name for p in run_dirs]


def _read(run: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    if not run.is_dir():
        raise VisualizeError(f"run directory not found: {run}")
    steps_csv, epochs_csv = run / "steps.csv", run / "epochs.csv"
    if not steps_csv.is_file():
        raise VisualizeError(f"{run}: no steps.csv (is it a nat-train run directory?)")
    steps = read_csv(steps_csv)
    epochs = read_csv(epochs_csv) if epochs_csv.is_file() else []
    if not steps and not epochs:
        raise VisualizeError(f"{run}: steps.csv and epochs.csv hold no rows yet")
    return steps, epochs


def draw_runs(run_dirs: Sequence[str | Path], out: str | Path) -> RunsPicture:
    """Draw the runs' curves into one figure and write the PNG ``out``."""
    out = check_png_path(out)
    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise VisualizeError("name at least one run directory")
    logs = [_read(run) for run in runs]
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    fig = new_figure(WIDTH, HEIGHT)
    axes = fig.subplots(2, 2)
    ax_loss, ax_lr, ax_epoch, ax_top1 = axes.ravel()
    colours: dict[str, str] = {}
    for n, (label, (steps, epochs)) in enumerate(zip(run_labels(runs), logs)):
        colour = palette[n % len(palette)]
        colours[label] = "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in colour[:3]))
        ax_loss.plot(*_series(steps, "step", "loss"), color=colour, lw=0.9, label=label)
        ax_lr.plot(*_series(steps, "step", "lr"), color=colour, label=label)
        ax_epoch.plot(*_series(epochs, "epoch", "train_loss"), "--", color=colour,
                      label=f"{label} train")  # fmt: skip
        ax_epoch.plot(*_series(epochs, "epoch", "val_loss"), "o-", color=colour, ms=3,
                      label=f"{label} val")  # fmt: skip
        ax_top1.plot(*_series(epochs, "epoch", "top1"), "o-", color=colour, ms=3,
                     label=f"{label} top-1")  # fmt: skip
        ax_top1.plot(*_series(epochs, "epoch", "top5"), ":", color=colour,
                     label=f"{label} top-5")  # fmt: skip
        if any(r.get("ema_top1") for r in epochs):
            ax_top1.plot(*_series(epochs, "epoch", "ema_top1"), "^-", color=colour, ms=3,
                         alpha=0.6, label=f"{label} EMA top-1")  # fmt: skip
    for ax, title, xlabel in zip(axes.ravel(), PANELS, ("step", "step", "epoch", "epoch")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.canvas.draw()
    panels, legends = {}, {}
    for ax, title in zip(axes.ravel(), PANELS):
        panels[title] = _box(ax.get_window_extent())
        legends[title] = _box(ax.get_legend().get_window_extent())
    save_figure(fig, out)
    return RunsPicture(out, WIDTH, HEIGHT, panels, legends, colours)


def _box(bbox) -> Box:
    """A matplotlib display box (pixels, origin bottom-left) as a Box of the PNG."""
    top, left = math.floor(HEIGHT - bbox.y1), math.floor(bbox.x0)
    return Box(top, left, math.ceil(HEIGHT - bbox.y0) - top, math.ceil(bbox.x1) - left)

"""nat-demo-data: generate a small ImageNet-style dataset of drawn shapes and textures.

    nat-demo-data --out demo_data            # train/ and val/, one folder per class

Ten learnable classes (filled shapes, outlines, stripes, checkerboards, dots) with random
colours, sizes, positions and noise; a few hundred PNGs in a few seconds. The dataset is
written to a temporary folder and renamed into place, so a partial dataset never appears."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "generate", "main"]

Painter = Callable[[ImageDraw.ImageDraw, int, np.random.Generator, tuple[int, ...]], None]


def _box(size: int, rng: np.random.Generator) -> tuple[float, float, float]:
    radius = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(radius + 2, size - radius - 2, 2)
    return cx, cy, radius


def _polygon(size, rng, sides, fg):
    cx, cy, r = _box(size, rng)
    phase = rng.uniform(0, 2 * math.pi / sides) if sides != 4 else rng.uniform(-0.3, 0.3)
    if sides == 4:
        phase += math.pi / 4
    return [
        (
            cx + r * math.cos(phase + 2 * math.pi * k / sides),
            cy + r * math.sin(phase + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def _circle(draw, size, rng, fg):
    cx, cy, r = _box(size, rng)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)


def _ring(draw, size, rng, fg):
    cx, cy, r = _box(size, rng)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fg, width=max(2, int(r / 4)))


def _square(draw, size, rng, fg):
    draw.polygon(_polygon(size, rng, 4, fg), fill=fg)


def _triangle(draw, size, rng, fg):
    draw.polygon(_polygon(size, rng, 3, fg), fill=fg)


def _cross(draw, size, rng, fg):
    cx, cy, r = _box(size, rng)
    w = max(2, int(r / 3))
    draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fg)
    draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fg)


def _stripes(angle_deg: float) -> Painter:
    def paint(draw, size, rng, fg):
        period = rng.uniform(size / 9, size / 5)
        angle = math.radians(angle_deg + rng.uniform(-8, 8))
        dx, dy = math.cos(angle), math.sin(angle)
        offset = rng.uniform(0, period)
        reach = size * 1.5
        for k in range(-int(reach / period) - 2, int(reach / period) + 2):
            t = k * period + offset
            cx, cy = size / 2 + t * -dy, size / 2 + t * dx
            draw.line(
                (cx - reach * dx, cy - reach * dy, cx + reach * dx, cy + reach * dy),
                fill=fg,
                width=max(1, int(period / 2.5)),
            )

    return paint


def _checker(draw, size, rng, fg):
    cell = int(rng.uniform(size / 8, size / 4))
    ox, oy = rng.integers(0, cell, 2)
    for i in range(-1, size // cell + 2):
        for j in range(-1, size // cell + 2):
            if (i + j) % 2 == 0:
                x, y = i * cell - ox, j * cell - oy
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=fg)


def _dots(draw, size, rng, fg):
    step = rng.uniform(size / 7, size / 4.5)
    r = step * rng.uniform(0.18, 0.3)
    ox, oy = rng.uniform(0, step, 2)
    y = -step + oy
    while y < size + step:
        x = -step + ox
        while x < size + step:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fg)
            x += step
        y += step


CLASSES: dict[str, Painter] = {
    "circle": _circle,
    "ring": _ring,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "horizontal_stripes": _stripes(0),
    "vertical_stripes": _stripes(90),
    "diagonal_stripes": _stripes(45),
    "checkerboard": _checker,
    "dots": _dots,
}


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    while True:
        bg, fg = rng.integers(0, 256, (2, 3))
        if np.abs(bg.astype(int) - fg.astype(int)).sum() > 200:
            return tuple(int(v) for v in bg), tuple(int(v) for v in fg)


def draw_sample(cls: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of class `cls` at size x size pixels."""
    bg, fg = _colours(rng)
    image = Image.new("RGB", (size, size), bg)
    CLASSES[cls](ImageDraw.Draw(image), size, rng, fg)
    pixels = np.asarray(image, dtype=np.int16)
    pixels = pixels + rng.normal(0, rng.uniform(4, 20), pixels.shape).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def generate(
    out: str | Path,
    train_per_class: int = 64,
    val_per_class: int = 20,
    size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write out/train/<class>/*.png and out/val/<class>/*.png; return `out`.

    An existing dataset made with the same parameters is reused; another one is replaced only
    with overwrite=True."""
    for name, value, low in (
        ("train_per_class", train_per_class, 1),
        ("val_per_class", val_per_class, 1),
        ("size", size, 16),
    ):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    out = Path(out)
    params = {
        "classes": list(CLASSES),
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "size": size,
        "seed": seed,
    }
    marker = out / "demo_data.json"
    if out.exists():
        if marker.is_file() and json.loads(marker.read_text()) == params:
            return out
        if not overwrite:
            raise FileExistsError(
                f"--out {out} exists and is not this demo dataset; pass --overwrite to replace it"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rng = np.random.default_rng(seed)
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            for cls in CLASSES:
                folder = tmp / split / cls
                folder.mkdir(parents=True)
                for k in range(count):
                    draw_sample(cls, size, rng).save(folder / f"{cls}_{k:04d}.png")
        (tmp / "demo_data.json").write_text(json.dumps(params, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nat-demo-data", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", default="demo_data", help="dataset folder (default demo_data)")
    parser.add_argument("--train-per-class", type=int, default=64)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (>= 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    try:
        out = generate(
            args.out, args.train_per_class, args.val_per_class, args.size, args.seed, args.overwrite
        )
    except (ValueError, FileExistsError) as err:
        print(f"nat-demo-data: error: {err}", file=sys.stderr)
        return 2
    n_train = args.train_per_class * len(CLASSES)
    n_val = args.val_per_class * len(CLASSES)
    print(
        f"demo dataset: {out} ({len(CLASSES)} classes, {n_train} train / {n_val} val images, "
        f"{args.size}px)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

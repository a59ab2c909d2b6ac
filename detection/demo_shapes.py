"""Synthetic scenes of coloured shapes shared by the detection and segmentation demo datasets.

Each scene is a noisy background with a few non-overlapping rectangles, ellipses and triangles;
every shape comes with its class, polygon and exact pixel mask. Numpy and Pillow draw them; files
are written through :mod:`classification.atomic`. Nothing here needs mmdet, so the segmentation
demo data can be generated with only the segmentation extra installed.
"""

from __future__ import annotations

import argparse
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from classification.atomic import atomic_write

SHAPE_CLASSES: tuple[str, ...] = ("rectangle", "ellipse", "triangle")
SHAPE_PALETTE: tuple[tuple[int, int, int], ...] = ((220, 60, 60), (60, 180, 75), (70, 110, 230))


@dataclass(frozen=True)
class Shape:
    """One shape of a scene: class index into SHAPE_CLASSES, polygon (x, y) and boolean mask."""

    label: int
    polygon: list[tuple[float, float]]
    mask: np.ndarray

    @property
    def bbox_xywh(self) -> list[float]:
        ys, xs = np.nonzero(self.mask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _polygon(label: int, box: tuple[int, int, int, int], rng: np.random.Generator) -> list:
    x0, y0, x1, y1 = box
    if label == 0:
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if label == 1:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        angles = [2 * math.pi * i / 32 for i in range(32)]
        return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]
    apex = float(rng.uniform(x0, x1))
    return [(apex, y0), (x1, y1), (x0, y1)]


def _overlaps(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]]) -> bool:
    margin = 2
    return any(
        box[0] < b[2] + margin
        and b[0] < box[2] + margin
        and box[1] < b[3] + margin
        and b[1] < box[3] + margin
        for b in taken
    )


def make_scene(
    rng: np.random.Generator, height: int, width: int, max_shapes: int = 4
) -> tuple[np.ndarray, list[Shape]]:
    """Draw one scene; returns an RGB uint8 image (H, W, 3) and its shapes (at least one)."""
    if height < 32 or width < 32:
        raise ValueError(f"height and width must be >= 32, got {height}x{width}")
    if max_shapes < 1:
        raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
    base = rng.integers(0, 255, size=3)
    noise = rng.normal(0, 12, size=(height, width, 3))
    image = Image.fromarray(np.clip(base * 0.5 + 40 + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    shapes: list[Shape] = []
    taken: list[tuple[int, int, int, int]] = []
    wanted = int(rng.integers(1, max_shapes + 1))
    side = min(height, width)
    for _ in range(50 * wanted):
        if len(shapes) == wanted:
            break
        w = int(rng.integers(side // 8, side // 2))
        h = int(rng.integers(side // 8, side // 2))
        x0 = int(rng.integers(0, width - w))
        y0 = int(rng.integers(0, height - h))
        box = (x0, y0, x0 + w, y0 + h)
        if _overlaps(box, taken):
            continue
        label = int(rng.integers(0, len(SHAPE_CLASSES)))
        polygon = _polygon(label, box, rng)
        mask_img = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask_img).polygon(polygon, fill=1)
        mask = np.asarray(mask_img, dtype=bool)
        if mask.sum() < 16:
            continue
        jitter = rng.integers(-30, 30, 3)
        colour = tuple(int(c) for c in np.clip(np.array(SHAPE_PALETTE[label]) + jitter, 0, 255))
        draw.polygon(polygon, fill=colour)
        taken.append(box)
        shapes.append(Shape(label, [(float(x), float(y)) for x, y in polygon], mask))
    return np.asarray(image), shapes


def random_scene(rng: np.random.Generator, size: int) -> tuple[int, int, np.ndarray, list[Shape]]:
    """``(height, width, image, shapes)`` of a scene whose sides are drawn in [3/4 size, size]."""
    height = int(rng.integers(size * 3 // 4, size + 1))
    width = int(rng.integers(size * 3 // 4, size + 1))
    return (height, width, *make_scene(rng, height, width))


SplitWriter = Callable[[Path, str, int, int, np.random.Generator], None]


def generate_splits(
    out: str | Path,
    splits: tuple[tuple[str, int], tuple[str, int]],
    size: int,
    seed: int,
    write_split: SplitWriter,
) -> Path:
    """Check the sizes, then ``write_split(root, name, count, size, rng)`` for the training and
    the validation split ``(name, count)`` in turn, on one generator seeded with ``seed``."""
    (_, num_train), (_, num_val) = splits
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    if size < 64:
        raise ValueError(f"size must be >= 64, got {size}")
    root = Path(out)
    rng = np.random.default_rng(seed)
    for name, count in splits:
        write_split(root, name, count, size, rng)
    return root


def demo_data_main(
    argv: list[str] | None,
    description: str,
    default_out: str,
    generate: Callable[[str, int, int, int, int], Path],
    kind: str,
) -> None:
    """The command line of a demo-data generator: ``--out --num-train --num-val --size --seed``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=default_out, help="output folder")
    parser.add_argument("--num-train", type=int, default=16)
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="largest image side (>= 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = generate(args.out, args.num_train, args.num_val, args.size, args.seed)
    print(f"wrote {kind} demo data to {root}")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (:func:`classification.atomic.atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def save_image_atomic(path: Path, array: np.ndarray) -> None:
    """Encode an image array by the file suffix (JPEG at quality 95, PNG lossless) atomically."""
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())

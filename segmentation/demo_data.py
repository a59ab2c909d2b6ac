"""Generate a small ADE20K-format semantic-segmentation dataset of coloured shapes.

Layout (as ADEChallengeData2016): ``images/{training,validation}/*.jpg`` and
``annotations/{training,validation}/*.png`` with 0 = background ("other", ignored through
``reduce_zero_label`` like ADE20K) and 1..3 = rectangle / ellipse / triangle.

    python -m segmentation.demo_data --out demo_data/ade --num-train 16 --num-val 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from detection.demo_shapes import make_scene, save_image_atomic


def _split(root: Path, split: str, count: int, size: int, rng: np.random.Generator) -> None:
    for index in range(count):
        height = int(rng.integers(size * 3 // 4, size + 1))
        width = int(rng.integers(size * 3 // 4, size + 1))
        image, shapes = make_scene(rng, height, width)
        label = np.zeros((height, width), dtype=np.uint8)
        for shape in shapes:
            label[shape.mask] = shape.label + 1
        stem = f"ADE_{split}_{index:08d}"
        save_image_atomic(root / "images" / split / f"{stem}.jpg", image)
        save_image_atomic(root / "annotations" / split / f"{stem}.png", label)


def generate(
    out: str | Path, num_train: int = 16, num_val: int = 8, size: int = 256, seed: int = 0
) -> Path:
    """Write the dataset under `out` and return its root; image sides vary in [3/4 size, size]."""
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    if size < 64:
        raise ValueError(f"size must be >= 64, got {size}")
    root = Path(out)
    rng = np.random.default_rng(seed)
    _split(root, "training", num_train, size, rng)
    _split(root, "validation", num_val, size, rng)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_data/ade", help="output folder")
    parser.add_argument("--num-train", type=int, default=16)
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="largest image side (>= 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = generate(args.out, args.num_train, args.num_val, args.size, args.seed)
    print(f"wrote ADE20K-format demo data to {root}")


if __name__ == "__main__":
    main()

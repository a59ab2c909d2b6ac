"""Generate a small ADE20K-format semantic-segmentation dataset of coloured shapes.

Layout (as ADEChallengeData2016): ``images/{training,validation}/*.jpg`` and
``annotations/{training,validation}/*.png`` with 0 = background ("other", ignored through
``reduce_zero_label`` like ADE20K) and 1..3 = rectangle / ellipse / triangle.

    python -m segmentation.demo_data --out demo_data/ade --num-train 16 --num-val 8
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detection.demo_shapes import demo_data_main, generate_splits, random_scene, save_image_atomic


def _split(root: Path, split: str, count: int, size: int, rng: np.random.Generator) -> None:
    for index in range(count):
        height, width, image, shapes = random_scene(rng, size)
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
    splits = (("training", num_train), ("validation", num_val))
    return generate_splits(out, splits, size, seed, _split)


def main(argv: list[str] | None = None) -> None:
    demo_data_main(argv, __doc__.splitlines()[0], "demo_data/ade", generate, "ADE20K-format")


if __name__ == "__main__":
    main()

"""Generate a small COCO-format instance-segmentation dataset of coloured shapes.

Layout (as COCO 2017): ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/*.jpg``;
categories rectangle / ellipse / triangle with boxes, polygon masks and areas.

    python -m detection.demo_data --out demo_data/coco --num-train 16 --num-val 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from detection.demo_shapes import SHAPE_CLASSES, make_scene, save_image_atomic, write_bytes_atomic


def _split(
    root: Path, split: str, count: int, size: tuple[int, int], rng: np.random.Generator
) -> None:
    images, annotations = [], []
    for index in range(count):
        height = int(rng.integers(size[0] * 3 // 4, size[0] + 1))
        width = int(rng.integers(size[1] * 3 // 4, size[1] + 1))
        image, shapes = make_scene(rng, height, width)
        file_name = f"{index:06d}.jpg"
        save_image_atomic(root / f"{split}2017" / file_name, image)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for shape in shapes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": shape.label + 1,
                    "bbox": shape.bbox_xywh,
                    "area": float(shape.mask.sum()),
                    "segmentation": [[coord for point in shape.polygon for coord in point]],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(SHAPE_CLASSES)]
    payload = {"images": images, "annotations": annotations, "categories": categories}
    write_bytes_atomic(
        root / "annotations" / f"instances_{split}2017.json", json.dumps(payload).encode()
    )


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
    _split(root, "train", num_train, (size, size), rng)
    _split(root, "val", num_val, (size, size), rng)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_data/coco", help="output folder")
    parser.add_argument("--num-train", type=int, default=16)
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="largest image side (>= 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = generate(args.out, args.num_train, args.num_val, args.size, args.seed)
    print(f"wrote COCO-format demo data to {root}")


if __name__ == "__main__":
    main()

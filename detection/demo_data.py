"""Generate a small COCO-format instance-segmentation dataset of coloured shapes.

Layout (as COCO 2017): ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/*.jpg``;
categories rectangle / ellipse / triangle with boxes, polygon masks and areas.

    python -m detection.demo_data --out demo_data/coco --num-train 16 --num-val 8
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detection.demo_shapes import (
    SHAPE_CLASSES,
    demo_data_main,
    generate_splits,
    random_scene,
    save_image_atomic,
    write_bytes_atomic,
)


def _split(root: Path, split: str, count: int, size: int, rng: np.random.Generator) -> None:
    images, annotations = [], []
    for index in range(count):
        height, width, image, shapes = random_scene(rng, size)
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
    return generate_splits(out, (("train", num_train), ("val", num_val)), size, seed, _split)


def main(argv: list[str] | None = None) -> None:
    demo_data_main(argv, __doc__.splitlines()[0], "demo_data/coco", generate, "COCO-format")


if __name__ == "__main__":
    main()

"""Evaluate a detection checkpoint (COCO box and mask AP through pycocotools).

python -m detection.test CONFIG CHECKPOINT [--work-dir DIR] [--out-json FILE]
torchrun --nproc_per_node=8 -m detection.test CONFIG CHECKPOINT
"""

from __future__ import annotations

from detection.runner_cli import test


def main(argv: list[str] | None = None) -> None:
    test(argv, "detection.models", __doc__.splitlines()[0])


if __name__ == "__main__":
    main()

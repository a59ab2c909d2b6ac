"""Evaluate a segmentation checkpoint (mIoU; ``--tta`` for multi-scale + flip).

python -m segmentation.test CONFIG CHECKPOINT [--tta] [--work-dir DIR] [--out-json FILE]
torchrun --nproc_per_node=8 -m segmentation.test CONFIG CHECKPOINT
"""

from __future__ import annotations

from detection.runner_cli import test


def main(argv: list[str] | None = None) -> None:
    test(argv, "segmentation.models", __doc__.splitlines()[0], with_tta=True)


if __name__ == "__main__":
    main()

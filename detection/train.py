"""Train a detection config with mmengine's Runner.

python -m detection.train CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--amp|--no-amp]
torchrun --nproc_per_node=8 -m detection.train CONFIG
"""

from __future__ import annotations

from detection.runner_cli import train


def main(argv: list[str] | None = None) -> None:
    train(argv, "detection.models", __doc__.splitlines()[0])


if __name__ == "__main__":
    main()

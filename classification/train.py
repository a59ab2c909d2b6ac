"""nat-train: train a zoo model on ImageNet-style folders from one YAML config.

nat-train --config configs/classification/nat_tiny.yaml --data /data/imagenet
torchrun --nproc_per_node=8 -m classification.train --config ... --data ...
nat-train --config ... --data ... --set optim.lr=5e-4 data.batch_size=64
nat-train --config ... --data ... --resume auto

One training at a time per run directory (a lock file in it); errors are reported in one line
with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import CheckpointFileError
from .training.config import ConfigError, apply_overrides, config_to_yaml, load_config
from .training.config import validate_config as _validate
from .training.state import CheckpointError, checkpoint_config, load_training_checkpoint

__all__ = ["main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nat-train", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", "-c", help="YAML config (may inherit with _base_)")
    parser.add_argument(
        "--data",
        help="dataset root with train/ and val/ class folders, or 'synthetic' (sets data.path)",
    )
    parser.add_argument("--run-dir", help="run directory (sets run.dir)")
    parser.add_argument(
        "--resume",
        help="checkpoint to continue from, or 'auto' for the latest in the run directory",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. optim.lr=5e-4",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument("extra", nargs="*", metavar="KEY=VALUE", help="more overrides")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> tuple[dict, str]:
    """The validated config and the run's default name (the config file's stem).

    A checkpoint file resumes in its own directory unless the command line names another
    (--run-dir or run.dir=): never in the run.dir its config or a config file records."""
    overrides = [*args.overrides, *args.extra]
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.run_dir:
        overrides.append(f"run.dir={args.run_dir}")
    from_file = bool(args.resume) and args.resume != "auto"
    if args.config:
        cfg, name = load_config(args.config, overrides), Path(args.config).stem
    elif from_file:  # continue with the checkpoint's own config
        cfg = checkpoint_config(load_training_checkpoint(args.resume), args.resume)
        try:
            apply_overrides(cfg, overrides)
            _validate(cfg)
        except ConfigError as err:
            raise ConfigError(f"--resume {args.resume}: {err}") from None
        name = Path(args.resume).parent.name
    else:
        raise ConfigError("--config is required (unless --resume names a checkpoint file)")
    named = any(item.split("=", 1)[0].strip() == "run.dir" for item in overrides)
    if from_file and not named:
        cfg["run"]["dir"] = str(Path(args.resume).parent)
    return cfg, name


def _error(err: BaseException) -> int:
    print(f"nat-train: error: {err}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg, name = resolve_config(args)
    except (ConfigError, CheckpointError, CheckpointFileError, FileNotFoundError) as err:
        return _error(err)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    from .training.engine import TrainingError, train

    try:
        train(cfg, name, args.resume)
    except (CheckpointError, TrainingError, ValueError) as err:
        # ValueError covers config, data (CorruptImageError), model, file and run-dir errors
        return _error(err)
    except OSError as err:  # file system trouble: a full disk, permissions, a vanished folder
        return _error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training state: the checkpoints nat-train writes to resume a run (atomic writes, RNG state,
discovery of the latest, pruning, clear errors for corrupt files). Everything saved loads with
``torch.load(weights_only=True)``. Published model weights and their formats are
:mod:`classification.checkpoint`."""

from __future__ import annotations

import copy
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write
from ..checkpoint import describe_error, weights_only_refusal
from .config import DEFAULTS, ConfigError, fill_defaults, validate_config

__all__ = [
    "FORMAT",
    "CheckpointError",
    "CheckpointWriteError",
    "atomic_save",
    "capture_rng_state",
    "checkpoint_config",
    "checkpoint_name",
    "list_checkpoints",
    "load_training_checkpoint",
    "prune_checkpoints",
    "restore_rng_state",
]

FORMAT = "natzoo-train-1"
_NAME = re.compile(r"^checkpoint-(\d+)\.pth$")
_REQUIRED = ("format", "model", "optimizer", "scheduler", "epoch", "step", "config")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (missing, truncated, corrupt or of another format)."""


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}.pth"


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, I/O error); the file it would have replaced
    and every other checkpoint are intact."""


def _free_space(directory: Path) -> str:
    try:
        return f"{shutil.disk_usage(directory).free / 2**20:.0f} MiB free there"
    except OSError:
        return "free space unknown"


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save through a temporary file and os.replace; CheckpointWriteError when it fails
    (torch's zip writer reports a full disk as a RuntimeError, file calls as OSError)."""
    path = Path(path)
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as err:
        raise CheckpointWriteError(
            f"cannot write checkpoint {path} ({describe_error(err)}; {_free_space(path.parent)})"
        ) from err


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as weights_only-loadable objects."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            torch.cuda.set_rng_state(state["cuda"][0])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Periodic checkpoints in `run_dir`, oldest (lowest step) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(run_dir: str | os.PathLike[str], keep: int) -> None:
    """Delete all but the `keep` most recent periodic checkpoints (best.pth is never touched)."""
    for path in list_checkpoints(run_dir)[:-keep]:
        path.unlink(missing_ok=True)


def load_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a training checkpoint; raise CheckpointError with the reason and the other
    checkpoints available in its directory when the file is unusable. Never deletes anything."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated (empty: 0 bytes); it was left in place. "
            f"{_alternatives(path)}"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, wrong file type...
        refusal = weights_only_refusal(err)
        what = f"cannot be read: {refusal}" if refusal else "is corrupt or truncated"
        detail = "" if refusal else f" ({describe_error(err)})"
        raise CheckpointError(
            f"checkpoint {path} {what}{detail}; it was left in place. {_alternatives(path)}"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a natzoo training checkpoint (format {FORMAT!r}); to start from "
            f"model weights use model.init_checkpoint={path}. {_alternatives(path)}"
        )
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}. {_alternatives(path)}")
    wrong = [k for k, kind in _TYPES.items() if k in ckpt and not _is(ckpt[k], kind)]
    if wrong:
        raise CheckpointError(
            f"checkpoint {path} is malformed: {', '.join(wrong)} of the wrong type "
            f"({', '.join(type(ckpt[k]).__name__ for k in wrong)}). {_alternatives(path)}"
        )
    return ckpt


# the entries whose type is checked on load (the config is checked by checkpoint_config)
_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": Mapping,
    "optimizer": Mapping,
    "scheduler": Mapping,
    "epoch": int,
    "step": int,
    "steps_per_epoch": int,
    "num_classes": int,
    "classes": (list, type(None)),
    "epoch_rows": (list, type(None)),
    "best": (Mapping, type(None)),
    "rng": list,
}


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not (isinstance(value, bool) and kind is int)


def checkpoint_config(ckpt: Mapping[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """The configuration a training checkpoint stores, with the keys added to the schema since
    filled in, validated like a config file; CheckpointError naming the file and the key when it
    is malformed."""
    stored = ckpt.get("config")
    if not isinstance(stored, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds no valid config (a mapping, got {type(stored).__name__})"
        )
    cfg = copy.deepcopy(dict(stored))
    bad = [k for k in DEFAULTS if k in cfg and not isinstance(cfg[k], dict)]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds a malformed config: section '{bad[0]}' is a "
            f"{type(cfg[bad[0]]).__name__}, not a mapping"
        )
    try:
        fill_defaults(cfg)
        validate_config(cfg)
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {path} holds an invalid config: {err}") from None
    return cfg


def _alternatives(path: Path) -> str:
    others = [p.name for p in list_checkpoints(path.parent) if p != path]
    if (path.parent / "best.pth").is_file() and path.name != "best.pth":
        others.append("best.pth")
    if not others:
        return "No other checkpoint is in its directory."
    return f"Other checkpoints in {path.parent}: {', '.join(others)} (pass one with --resume)."

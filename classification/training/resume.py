"""Resuming a run: whether a training checkpoint may continue under this command's config and
dataset, and bringing ``best.pth`` up to the best epoch the checkpoint records."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_copy
from ..checkpoint import mismatch
from .config import RESUME_MAY_CHANGE, resume_conflicts
from .state import CheckpointError, checkpoint_config, checkpoint_name

__all__ = ["check_resumable", "restore_best"]


def check_resumable(
    ckpt: Mapping[str, Any],
    path: Path,
    cfg: Mapping[str, Any],
    model: torch.nn.Module,
    num_classes: int,
    classes: list[str] | None,
) -> None:
    """Refuse, before anything is written, a checkpoint of another model, class count or class
    list (``num_classes`` and ``classes`` are the dataset's), weights that do not fit ``model``,
    or a config that differs from ``cfg`` in anything RESUME_MAY_CHANGE lacks."""
    stored = checkpoint_config(ckpt, path)
    theirs = stored["model"]["name"]
    ours = cfg["model"]["name"]
    stored_classes = ckpt.get("num_classes")
    names = ckpt.get("classes")
    problem = None
    if theirs != ours:
        problem = f"it is a checkpoint of {theirs}, the config builds {ours}"
    elif stored_classes is not None and stored_classes != num_classes:
        problem = f"it has {stored_classes} classes, this config and dataset have {num_classes}"
    elif names is not None and classes is not None and names != classes:
        differ = next(i for i, (a, b) in enumerate(zip(names, classes)) if a != b)
        problem = (
            f"it was trained on other classes than this dataset's (class {differ} is "
            f"{names[differ]!r} there, {classes[differ]!r} here)"
        )
    elif (mismatch := _state_mismatch(model, ckpt["model"])) is not None:
        problem = f"its weights do not fit the model the config builds: {mismatch}"
    elif conflicts := resume_conflicts(stored, cfg):
        shown = "; ".join(conflicts[:6]) + ("; ..." if len(conflicts) > 6 else "")
        raise CheckpointError(
            f"--resume {path}: its config differs from this command's in {shown}; a resumed "
            f"run may change only {_may_change()}: resume with the checkpoint's config "
            f"(leave out --config and those settings), or start a new run in another run "
            f"directory"
        )
    if problem:
        raise CheckpointError(
            f"--resume {path}: {problem}; resume it with its own config (leave out "
            f"--config), or start a new run in another run directory"
        )


def _state_mismatch(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """How `state` differs from the model's own state dict in keys and shapes (None if not)."""
    missing, unexpected, shapes = mismatch(model, state)
    parts = [
        f"{len(items)} {what} (e.g. {items[0]})"
        for items, what in (
            (missing, "missing keys"),
            (unexpected, "unexpected keys"),
            (shapes, "tensors of other shapes, checkpoint vs model"),
        )
        if items
    ]
    return "; ".join(parts) or None


def _may_change() -> str:
    """RESUME_MAY_CHANGE in a few words: `run.*`, `data.{path, workers}`, `optim.lr`."""
    sections: dict[str, list[str]] = {}
    for key in RESUME_MAY_CHANGE:
        section, _, rest = key.partition(".")
        sections.setdefault(section, []).append(rest or "*")
    parts = []
    for section, keys in sections.items():
        inner = keys[0] if len(keys) == 1 else "{" + ", ".join(keys) + "}"
        parts.append(f"{section}.{inner}")
    return ", ".join(parts)


def _saved_epoch(path: Path) -> int | None:
    """The epoch a training checkpoint was saved at (None if it is missing or unreadable)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["epoch"])
    except Exception:  # any unreadable file is simply not the one wanted
        return None


def restore_best(
    run_dir: Path, epoch: int | None, steps_per_epoch: int, resume_path: Path | None
) -> None:
    """A kill while best.pth was written leaves it older than the best epoch (``epoch``) the
    checkpoint records: copy the checkpoint of that epoch (``resume_path`` or the epoch-end
    checkpoint in ``run_dir``) over it."""
    best_path = run_dir / "best.pth"
    if epoch is None or _saved_epoch(best_path) == epoch:
        return
    candidates = [run_dir / checkpoint_name(epoch * steps_per_epoch)]
    if resume_path is not None:
        candidates.insert(0, resume_path)
    for source in candidates:
        of_that_epoch = source.is_file() and _saved_epoch(source) == epoch
        if of_that_epoch and source.resolve() != best_path.resolve():
            atomic_copy(source, best_path)
            print(f"best.pth restored from {source.name} (epoch {epoch})", flush=True)
            return
    warnings.warn(
        f"best.pth is not the checkpoint of the best epoch ({epoch}) and no checkpoint of "
        f"that epoch is left in {run_dir} to restore it from",
        stacklevel=2,
    )

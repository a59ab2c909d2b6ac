"""Run logging on rank 0: steps.csv (every log_interval steps), epochs.csv (one row per epoch),
summary.json (rewritten atomically each epoch), a tqdm progress bar, and optional Weights &
Biases (imported lazily, offline unless configured otherwise, never required)."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write

__all__ = ["EPOCH_FIELDS", "STEP_FIELDS", "RunLogger", "read_csv"]

STEP_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "time")
EPOCH_FIELDS = (
    "epoch",
    "step",
    "train_loss",
    "val_loss",
    "top1",
    "top5",
    "ema_val_loss",
    "ema_top1",
    "ema_top5",
    "lr",
    "samples_per_s",
    "epoch_time",
)


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _truncate_csv(path: Path, fields: tuple[str, ...], max_step: int) -> None:
    """Keep the header and the rows with step <= max_step (rows a crashed run wrote past its
    last checkpoint would otherwise duplicate the resumed run's)."""
    if not path.is_file():
        return
    rows = [r for r in read_csv(path) if r.get("step") and int(r["step"]) <= max_step]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


class RunLogger:
    """Writes the run's logs; every method is a no-op on ranks other than 0."""

    def __init__(
        self, run_dir: Path, cfg: Mapping[str, Any], enabled: bool, resume_step: int | None = None
    ) -> None:
        self.run_dir, self.enabled, self.cfg = run_dir, enabled, cfg
        self.steps_path, self.epochs_path = run_dir / "steps.csv", run_dir / "epochs.csv"
        self.summary_path = run_dir / "summary.json"
        self._wandb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            _truncate_csv(self.steps_path, STEP_FIELDS, resume_step)
            _truncate_csv(self.epochs_path, EPOCH_FIELDS, resume_step)
        for path, fields in ((self.steps_path, STEP_FIELDS), (self.epochs_path, EPOCH_FIELDS)):
            if not path.is_file() or path.stat().st_size == 0:
                with open(path, "w", newline="") as f:
                    csv.DictWriter(f, fieldnames=fields).writeheader()
        if cfg["logging"]["wandb"]:
            self._wandb = self._start_wandb(resume_step is not None)

    def _start_wandb(self, resuming: bool):
        log = self.cfg["logging"]
        os.environ.setdefault("WANDB_MODE", log["wandb_mode"])
        try:
            import wandb
        except ImportError:
            warnings.warn(
                "logging.wandb is on but wandb is not installed (pip install wandb); "
                "continuing without it",
                stacklevel=2,
            )
            return None
        try:
            return wandb.init(
                project=log["wandb_project"],
                name=self.run_dir.name,
                dir=str(self.run_dir),
                config=dict(self.cfg),
                resume="allow" if resuming else None,
                id=_wandb_id(self.run_dir),
                settings=wandb.Settings(init_timeout=30),
            )
        except Exception as err:  # network trouble must never stop training
            warnings.warn(f"wandb.init failed ({err}); continuing without it", stacklevel=2)
            return None

    def _append(self, path: Path, fields: tuple[str, ...], row: Mapping[str, Any]) -> None:
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields, extrasaction="ignore").writerow(
                {k: _fmt(row.get(k)) for k in fields}
            )

    def log_step(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._append(self.steps_path, STEP_FIELDS, row)
        if self._wandb is not None:
            self._wandb.log(
                {f"train/{k}": v for k, v in row.items() if v is not None}, step=int(row["step"])
            )

    def log_epoch(self, row: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._append(self.epochs_path, EPOCH_FIELDS, row)
        text = json.dumps(dict(summary), indent=2, default=str)
        atomic_write(self.summary_path, lambda f: f.write(text.encode()))
        parts = [f"epoch {row['epoch']}", f"step {row['step']}"]
        for key in ("train_loss", "val_loss", "top1", "top5", "ema_top1", "lr", "samples_per_s"):
            if row.get(key) is not None:
                parts.append(f"{key} {_fmt(row[key])}")
        parts.append(f"time {row['epoch_time']:.1f}s")
        print(" | ".join(parts), file=sys.stdout, flush=True)
        if self._wandb is not None:
            self._wandb.log(
                {f"epoch/{k}": v for k, v in row.items() if v is not None}, step=int(row["step"])
            )

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _wandb_id(run_dir: Path) -> str:
    path = run_dir / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    atomic_write(path, lambda f: f.write(run_id.encode()))
    return run_id


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value

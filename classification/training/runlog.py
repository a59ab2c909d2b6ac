"""Run logging on rank 0: steps.csv (every log_interval steps), epochs.csv (one row per epoch),
summary.json (rewritten atomically each epoch), and optional Weights & Biases (imported lazily,
offline unless configured otherwise, never required).

When a run starts or resumes, the logs are made exactly what an uninterrupted run would have
written up to the checkpoint: steps.csv keeps its rows up to the checkpoint's step (none for a
new run), epochs.csv is rewritten from the rows the checkpoint carries."""

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

from ..atomic import atomic_write

__all__ = ["EPOCH_FIELDS", "STEP_FIELDS", "RunLogger", "read_csv", "truncate_csv"]

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


def _rewrite_csv(path: Path, fields: tuple[str, ...], rows: list[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: _fmt(row.get(k)) for k in fields} for row in rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def _complete_rows(path: Path, fields: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a log with every field present and an integer step (a write interrupted by
    a full disk can leave a partial last line)."""
    if not path.is_file():
        return []
    rows = []
    for row in read_csv(path):
        if None in row or any(row.get(k) is None for k in fields):
            continue
        try:
            int(row["step"])
        except (KeyError, ValueError):
            continue
        rows.append(row)
    return rows


def truncate_csv(path: Path, fields: tuple[str, ...], max_step: int) -> list[dict[str, str]]:
    """Keep the header and the rows with step <= max_step (rows a crashed run wrote past its
    last checkpoint would otherwise duplicate the resumed run's); returns the rows kept."""
    rows = [r for r in _complete_rows(path, fields) if int(r["step"]) <= max_step]
    _rewrite_csv(path, fields, rows)
    return rows


class RunLogger:
    """Writes the run's logs; every method is a no-op on ranks other than 0."""

    def __init__(
        self,
        run_dir: Path,
        cfg: Mapping[str, Any],
        enabled: bool,
        resume_step: int | None = None,
        epoch_rows: list[Mapping[str, Any]] | None = None,
    ) -> None:
        """`resume_step` None starts new logs; otherwise steps.csv is cut back to it and
        epochs.csv rewritten from `epoch_rows` (cut back to the step too when None)."""
        self.run_dir, self.enabled, self.cfg = run_dir, enabled, cfg
        self.steps_path, self.epochs_path = run_dir / "steps.csv", run_dir / "epochs.csv"
        self.summary_path = run_dir / "summary.json"
        self._wandb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        truncate_csv(self.steps_path, STEP_FIELDS, resume_step or 0)
        if epoch_rows is not None:
            _rewrite_csv(self.epochs_path, EPOCH_FIELDS, epoch_rows)
        else:
            truncate_csv(self.epochs_path, EPOCH_FIELDS, resume_step or 0)
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
        self.write_summary(summary)
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

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        text = json.dumps(dict(summary), indent=2, default=str)
        atomic_write(self.summary_path, lambda f: f.write(text.encode()))

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

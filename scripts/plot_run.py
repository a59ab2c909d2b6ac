"""Plot a nat-train run's curves (training loss and lr per step, validation metrics per epoch)
to a PNG. Needs matplotlib (the `plot` extra).

    python scripts/plot_run.py runs/demo            # writes runs/demo/curves.png
    python scripts/plot_run.py runs/a runs/b --out compare.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from classification.training.runlog import read_csv


def _series(rows: list[dict[str, str]], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(float(r[x]), float(r[y])) for r in rows if r.get(y) not in (None, "")]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """Draw the runs into one figure and write it atomically to `out`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit("plot_run.py needs matplotlib: pip install -e '.[plot]'") from err
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    (ax_loss, ax_lr), (ax_val_loss, ax_top1) = axes
    for run in run_dirs:
        steps_csv, epochs_csv = run / "steps.csv", run / "epochs.csv"
        if not steps_csv.is_file():
            raise SystemExit(f"{run}: no steps.csv (is it a nat-train run directory?)")
        steps = read_csv(steps_csv)
        epochs = read_csv(epochs_csv) if epochs_csv.is_file() else []
        label = run.name
        ax_loss.plot(*_series(steps, "step", "loss"), label=label, lw=0.8)
        ax_lr.plot(*_series(steps, "step", "lr"), label=label)
        ax_val_loss.plot(*_series(epochs, "epoch", "train_loss"), "--", label=f"{label} train")
        ax_val_loss.plot(*_series(epochs, "epoch", "val_loss"), "o-", label=f"{label} val")
        ax_top1.plot(*_series(epochs, "epoch", "top1"), "o-", label=f"{label} top-1")
        ax_top1.plot(*_series(epochs, "epoch", "top5"), "s--", label=f"{label} top-5")
        if any(r.get("ema_top1") for r in epochs):
            ax_top1.plot(*_series(epochs, "epoch", "ema_top1"), "^-", label=f"{label} EMA top-1")
    for ax, title, xlabel in (
        (ax_loss, "training loss", "step"),
        (ax_lr, "learning rate", "step"),
        (ax_val_loss, "loss per epoch", "epoch"),
        (ax_top1, "validation accuracy (%)", "epoch"),
    ):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, help="PNG path (default: <first run>/curves.png)")
    args = parser.parse_args(argv)
    out = plot_runs(args.runs, args.out or args.runs[0] / "curves.png")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

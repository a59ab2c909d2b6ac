"""The built-in demo: the generated dataset, and a short demo-config training that learns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from classification import train as train_cli
from classification.demo_data import CLASSES, generate
from classification.demo_data import main as demo_main
from classification.training.runlog import read_csv

DEMO = Path(__file__).resolve().parents[1] / "configs" / "classification" / "demo.yaml"


def test_demo_data_layout_and_determinism(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", train_per_class=2, val_per_class=1, size=40, seed=5)
    for split, n in (("train", 2), ("val", 1)):
        assert sorted(p.name for p in (a / split).iterdir()) == sorted(CLASSES)
        for cls in CLASSES:
            files = sorted((a / split / cls).glob("*.png"))
            assert len(files) == n
            assert Image.open(files[0]).size == (40, 40)
    b = generate(tmp_path / "b", train_per_class=2, val_per_class=1, size=40, seed=5)
    img = "train/ring/ring_0001.png"
    assert np.array_equal(np.asarray(Image.open(a / img)), np.asarray(Image.open(b / img)))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over


def test_demo_data_reuse_and_refusal(tmp_path: Path, capsys) -> None:
    out = tmp_path / "d"
    assert demo_main(["--out", str(out), "--train-per-class", "1", "--val-per-class", "1"]) == 0
    marker = json.loads((out / "demo_data.json").read_text())
    stamp = (out / "train" / "dots" / "dots_0000.png").stat().st_mtime_ns
    assert demo_main(["--out", str(out), "--train-per-class", "1", "--val-per-class", "1"]) == 0
    assert (out / "train" / "dots" / "dots_0000.png").stat().st_mtime_ns == stamp  # reused
    assert demo_main(["--out", str(out), "--train-per-class", "2", "--val-per-class", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((out / "demo_data.json").read_text()) == marker  # left intact
    assert demo_main(["--out", str(tmp_path / "e"), "--size", "8"]) == 2
    assert "size" in capsys.readouterr().err


def test_demo_config_learns(tmp_path: Path) -> None:
    """A shortened demo run (smaller images, fewer epochs) is clearly above chance (10%): with
    200 val images, chance accuracy exceeds 18% with probability below 1e-4."""
    data = generate(tmp_path / "data", seed=0)  # the demo's own dataset
    run_dir = tmp_path / "run"
    rc = train_cli.main(
        [
            "--config",
            str(DEMO),
            "--data",
            str(data),
            "--run-dir",
            str(run_dir),
            "--set",
            "data.img_size=32",
            "sched.epochs=14",
            "sched.warmup_epochs=1",
            "data.workers=1",
            "logging.progress=false",
            "train.eval_every=7",
        ]
    )
    assert rc == 0
    epochs = read_csv(run_dir / "epochs.csv")
    assert len(epochs) == 14
    first, last = float(epochs[0]["train_loss"]), float(epochs[-1]["train_loss"])
    assert last < first
    assert float(epochs[-1]["top1"]) > 18.0

"""nat-train / nat-validate end to end on CPU with a tiny NAT and tiny generated images:
checkpoints and logs are written, a resumed run reproduces the uninterrupted one exactly,
corrupt checkpoints are refused without harm, validation reads the checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from classification import train as train_cli
from classification import validate as validate_cli
from classification.demo_data import generate
from classification.training.runlog import read_csv
from classification.training.state import (
    CheckpointError,
    list_checkpoints,
    load_training_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]

TINY = """
model:
  name: nat_mini
  drop_path_rate: 0.1
  kwargs: {embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2], mlp_ratio: 1.0,
           kernel_size: 3}
data: {img_size: 16, crop_pct: 1.0, batch_size: 8, workers: 0, interpolation: bilinear,
       train_interpolation: bilinear}
aug: {auto_augment: rand-m9-mstd0.5-inc1, reprob: 0.25, mixup: 0.8, cutmix: 1.0,
      color_jitter: 0.0}
optim: {lr: 1.0e-3}
sched: {epochs: 2, warmup_epochs: 1, cooldown_epochs: 0, warmup_lr: 1.0e-4}
train: {amp: none, seed: 3}
checkpoint: {keep: 10}
logging: {log_interval: 1, progress: false}
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 10 classes x 3 training images = 30 -> 3 steps of 8 per epoch; 2 val images per class
    return generate(tmp_path_factory.mktemp("data") / "demo", 3, 2, size=24, seed=1)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY)
    return path


def _train(config: Path, data: Path, run_dir: Path, *extra: str) -> int:
    return train_cli.main(
        ["--config", str(config), "--data", str(data), "--run-dir", str(run_dir), *extra]
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, config: Path, data_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    assert _train(config, data_dir, run_dir) == 0
    return run_dir


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_writes_checkpoints_and_logs(full_run: Path) -> None:
    ckpts = list_checkpoints(full_run)
    assert [p.name for p in ckpts] == ["checkpoint-00000003.pth", "checkpoint-00000006.pth"]
    assert (full_run / "best.pth").is_file() and (full_run / "config.yaml").is_file()
    assert not [p for p in full_run.iterdir() if p.name.endswith(".tmp")]
    steps = read_csv(full_run / "steps.csv")
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(float(r["loss"]) > 0 and float(r["lr"]) > 0 for r in steps)
    epochs = read_csv(full_run / "epochs.csv")
    assert [int(r["epoch"]) for r in epochs] == [1, 2]
    assert all(0 <= float(r["top1"]) <= 100 and r["val_loss"] for r in epochs)
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["step"] == 6 and summary["epoch"] == 2
    ckpt = load_training_checkpoint(ckpts[-1])
    for key in ("model", "optimizer", "scheduler", "rng", "epoch", "step", "config"):
        assert key in ckpt
    assert (ckpt["epoch"], ckpt["step"], len(ckpt["rng"])) == (2, 6, 1)
    # warmup then cosine: per-iteration lr, rising through epoch 1
    lrs = [float(r["lr"]) for r in steps]
    assert lrs[0] < lrs[1] < lrs[2]


@pytest.mark.parametrize("stop_at", [2, 3], ids=["mid-epoch", "epoch-end"])
def test_resume_reproduces_the_uninterrupted_run(
    tmp_path: Path, config: Path, data_dir: Path, full_run: Path, stop_at: int
) -> None:
    run_dir = tmp_path / "resumed"
    assert _train(config, data_dir, run_dir, "--set", f"train.max_steps={stop_at}") == 0
    assert list_checkpoints(run_dir)[-1].name == f"checkpoint-{stop_at:08d}.pth"
    assert _train(config, data_dir, run_dir, "--resume", "auto") == 0
    full = {int(r["step"]): r["loss"] for r in read_csv(full_run / "steps.csv")}
    resumed = {int(r["step"]): r["loss"] for r in read_csv(run_dir / "steps.csv")}
    assert resumed == full  # every step, including those after the resume point
    a = load_training_checkpoint(full_run / "checkpoint-00000006.pth")
    b = load_training_checkpoint(run_dir / "checkpoint-00000006.pth")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # every epoch row as the uninterrupted run wrote it (the resumed epoch's train_loss averages
    # all its steps, not only those after the resume); only the timings may differ
    columns = ("epoch", "step", "train_loss", "val_loss", "top1", "top5", "lr")
    epochs_full = [[r[c] for c in columns] for r in read_csv(full_run / "epochs.csv")]
    epochs_resumed = [[r[c] for c in columns] for r in read_csv(run_dir / "epochs.csv")]
    assert epochs_resumed == epochs_full


def test_truncated_checkpoint_is_refused_cleanly(
    tmp_path: Path, full_run: Path, config: Path, data_dir: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for p in list_checkpoints(full_run):
        (run_dir / p.name).write_bytes(p.read_bytes())
    latest = list_checkpoints(run_dir)[-1]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    before = {p.name: _sha(p) for p in run_dir.iterdir()}
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_training_checkpoint(latest)
    rc = _train(config, data_dir, run_dir, "--resume", "auto")
    err = capsys.readouterr().err
    assert rc == 2
    assert "corrupt or truncated" in err and latest.name in err
    assert "checkpoint-00000003.pth" in err  # points at the intact one
    assert {p.name: _sha(p) for p in run_dir.iterdir()} == before  # nothing destroyed
    (run_dir / "garbage.pth").write_bytes(b"not a checkpoint")
    assert _train(config, data_dir, run_dir, "--resume", str(run_dir / "garbage.pth")) == 2


def test_validate_reads_the_checkpoint(full_run: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    args = [
        "--checkpoint",
        str(full_run / "checkpoint-00000006.pth"),
        "--data",
        str(data_dir),
        "--workers",
        "0",
        "--batch-size",
        "7",
        "--results-file",
        str(out),
    ]
    assert validate_cli.main(args) == 0
    result = json.loads(out.read_text())
    last = read_csv(full_run / "epochs.csv")[-1]
    assert result["images"] == 20
    assert result["top1"] == pytest.approx(float(last["top1"]), abs=1e-3)
    assert result["loss"] == pytest.approx(float(last["val_loss"]), rel=1e-4)
    assert result["model"] == "nat_mini" and result["images_per_s"] > 0
    # the plain state dict of the same weights, through the zoo's loader, gives the same
    plain = tmp_path / "plain.pth"
    torch.save(load_training_checkpoint(full_run / "checkpoint-00000006.pth")["model"], plain)
    out2 = tmp_path / "result2.json"
    kwargs = json.dumps(
        {
            "embed_dim": 16,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 2, 2],
            "mlp_ratio": 1.0,
            "kernel_size": 3,
        }
    )
    assert (
        validate_cli.main(
            [
                "--model",
                "nat_mini",
                "--checkpoint",
                str(plain),
                "--data",
                str(data_dir),
                "--num-classes",
                "10",
                "--model-kwargs",
                kwargs,
                "--img-size",
                "16",
                "--crop-pct",
                "1.0",
                "--interpolation",
                "bilinear",
                "--workers",
                "0",
                "--results-file",
                str(out2),
            ]
        )
        == 0
    )
    assert json.loads(out2.read_text())["top1"] == pytest.approx(result["top1"])


def test_gradient_accumulation_matches_the_full_batch(
    tmp_path: Path, config: Path, data_dir: Path
) -> None:
    common = [
        "--set",
        "aug.mixup=0",
        "aug.cutmix=0",
        "model.drop_path_rate=0",
        "aug.reprob=0",
        "train.max_steps=2",
    ]
    assert _train(config, data_dir, tmp_path / "a", *common) == 0
    assert (
        _train(
            config, data_dir, tmp_path / "b", *common, "data.batch_size=4", "optim.accum_steps=2"
        )
        == 0
    )
    a = [float(r["loss"]) for r in read_csv(tmp_path / "a" / "steps.csv")]
    b = [float(r["loss"]) for r in read_csv(tmp_path / "b" / "steps.csv")]
    assert len(a) == len(b) == 2
    assert a == pytest.approx(b, rel=1e-4)


def test_cli_errors_name_the_problem(config: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    assert _train(config, data_dir, tmp_path / "x", "--set", "optim.lrr=1") == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert _train(config, tmp_path / "missing", tmp_path / "y") == 2
    assert "--data" in capsys.readouterr().err
    assert train_cli.main(["--config", str(config), "--print-config", "optim.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out


def test_torchrun_two_cpu_processes_match_one(tmp_path: Path, config: Path, data_dir: Path) -> None:
    """DDP over Gloo: 2 ranks x batch 4 follow the single-process batch-8 run (no mixup/drop
    path, whose random draws differ per rank), and only rank 0 writes."""
    common = [
        "--config",
        str(config),
        "--data",
        str(data_dir),
        "--set",
        "aug.mixup=0",
        "aug.cutmix=0",
        "model.drop_path_rate=0",
        "aug.reprob=0",
        "sched.epochs=1",
        "sched.warmup_epochs=0",
    ]
    single, double = tmp_path / "one", tmp_path / "two"
    assert train_cli.main([*common, "--run-dir", str(single)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "classification.train",
            *common,
            "data.batch_size=4",
            "--run-dir",
            str(double),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = [float(r["loss"]) for r in read_csv(single / "steps.csv")]
    b = [float(r["loss"]) for r in read_csv(double / "steps.csv")]
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, rel=1e-4)
    ckpt = load_training_checkpoint(list_checkpoints(double)[-1])
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    top1_a = read_csv(single / "epochs.csv")[-1]["top1"]
    top1_b = read_csv(double / "epochs.csv")[-1]["top1"]
    assert float(top1_a) == pytest.approx(float(top1_b), abs=1e-3)


def test_randaugment_posterize_at_full_magnitude_does_not_crash() -> None:
    """rand-m9-mstd0.5-inc1 can draw magnitude 10, i.e. posterize to 0 bits (Pillow >= 11
    rejects that); the training transform must keep going, producing a black image as before."""
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    from classification.training.config import load_config
    from classification.training.data import train_transform

    train_transform(load_config(None))  # installs the safe op
    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    out = op(Image.new("RGB", (8, 8), (200, 100, 50)))
    assert out.getextrema() == ((0, 0), (0, 0), (0, 0))

"""nat-train / nat-validate under crashes, concurrency and bad input, on CPU with the tiny NAT and
images of tests/test_train.py: the run directory and its logs end up exactly as an uninterrupted
run leaves them, a second training on the same directory is refused, nothing is written before
every check passed, and every error is one line naming the file or key (exit status 2)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_train
import torch
import yaml
from PIL import Image
from test_train import ROOT, _train

from classification import train as train_cli
from classification import validate as validate_cli
from classification.atomic import atomic_write, stale_temporaries
from classification.checkpoint import save_state_dict
from classification.training.rundir import LOCK_NAME
from classification.training.runlog import read_csv
from classification.training.state import (
    atomic_save,
    list_checkpoints,
    load_training_checkpoint,
)

config = test_train.config
data_dir = test_train.data_dir
full_run = test_train.full_run  # 2 epochs of 3 steps, uninterrupted

ONE_EPOCH = ["sched.epochs=1", "sched.warmup_epochs=0"]
# columns that do not depend on timing
STEP_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm")
EPOCH_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "top1", "top5", "lr")


def _rows(path: Path, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [tuple(r[c] for c in columns) for r in read_csv(path)]


def _files(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.iterdir()}


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("nat-"), lines[0]
    return lines[0]


def _copy_run(full_run: Path, dest: Path, names: list[str] | None = None) -> Path:
    dest.mkdir(parents=True)
    for path in full_run.iterdir():
        if names is None or path.name in names:
            shutil.copy2(path, dest / path.name)
    return dest


# ------------------------------------------------------------------- the run directory and logs
# nat-train in which the process kills itself (SIGKILL) while best.pth is half written
_KILLED_WHILE_BEST_IS_WRITTEN = """
import os, signal, sys, tempfile
from pathlib import Path
from classification import train
from classification.training import engine

real_save = engine.atomic_save

def save(obj, path):
    path = Path(path)
    if path.name == "best.pth":
        fd, _ = tempfile.mkstemp(prefix=".best.pth.", suffix=".tmp", dir=path.parent)
        os.write(fd, b"PK\\x03\\x04 half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, path)

engine.atomic_save = save
sys.exit(train.main(sys.argv[1:]))
"""


def test_kill_while_best_is_written_is_repaired_on_resume(
    tmp_path: Path, config: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    args = ["--config", str(config), "--data", str(data_dir), "--run-dir", str(run_dir)]
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WHILE_BEST_IS_WRITTEN, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (run_dir / LOCK_NAME).is_file()  # left behind, but no longer locked
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-00000003.pth"]
    assert not (run_dir / "best.pth").exists() and read_csv(run_dir / "epochs.csv") == []
    assert len(stale_temporaries(run_dir)) == 1
    capsys.readouterr()

    # resumed up to the checkpoint's own step: nothing to train, the directory is repaired
    assert _train(config, data_dir, run_dir, "--resume", "auto", "--set", "train.max_steps=3") == 0
    out = capsys.readouterr().out
    assert "is complete" in out and "resumed" not in out
    assert stale_temporaries(run_dir) == []
    assert load_training_checkpoint(run_dir / "best.pth")["epoch"] == 1
    reference = _rows(full_run / "epochs.csv", EPOCH_COLUMNS)
    assert _rows(run_dir / "epochs.csv", EPOCH_COLUMNS) == reference[:1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["epoch"], summary["step"], summary["best"]["epoch"]) == (1, 3, 1)

    # and the rest of the run ends as the uninterrupted one
    assert _train(config, data_dir, run_dir, "--resume", "auto") == 0
    assert _rows(run_dir / "steps.csv", STEP_COLUMNS) == _rows(full_run / "steps.csv", STEP_COLUMNS)
    assert _rows(run_dir / "epochs.csv", EPOCH_COLUMNS) == reference
    best = load_training_checkpoint(run_dir / "best.pth")
    expected = load_training_checkpoint(full_run / "best.pth")
    assert best["epoch"] == expected["epoch"]
    for key, value in expected["model"].items():
        assert torch.equal(best["model"][key], value), key


def test_resume_auto_before_the_first_checkpoint_starts_clean_logs(
    tmp_path: Path, config: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    """A run killed before its first checkpoint left config.yaml and two step rows."""
    run_dir = _copy_run(full_run, tmp_path / "run", ["config.yaml"])
    lines = (full_run / "steps.csv").read_text().splitlines(keepends=True)
    (run_dir / "steps.csv").write_text("".join(lines[:3]))
    assert _train(config, data_dir, run_dir, "--resume", "auto", "--set", "train.max_steps=2") == 0
    assert "starting a new run" in capsys.readouterr().out
    reference = _rows(full_run / "steps.csv", STEP_COLUMNS)[:2]
    assert _rows(run_dir / "steps.csv", STEP_COLUMNS) == reference  # not four rows


def test_a_second_training_on_the_same_run_directory_is_refused(
    tmp_path: Path, config: Path, data_dir: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(  # another process holding the run directory's lock
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f'pid {os.getpid()}'.encode());"
            "print('locked', flush=True); sys.stdin.read()",
            str(run_dir / LOCK_NAME),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _train(config, data_dir, run_dir, "--set", "train.max_steps=1") == 2
        line = _error_line(capsys)
        assert "in use by another training" in line and f"pid {holder.pid}" in line
        assert os.listdir(run_dir) == [LOCK_NAME]  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with its holder: the directory can be used again
    assert _train(config, data_dir, run_dir, "--set", "train.max_steps=1") == 0
    assert (run_dir / "checkpoint-00000001.pth").is_file()
    assert not (run_dir / LOCK_NAME).exists()


def test_results_without_checkpoints_are_never_overwritten(
    tmp_path: Path, config: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    names = ["best.pth", "epochs.csv", "steps.csv", "summary.json", "config.yaml"]
    run_dir = _copy_run(full_run, tmp_path / "run", names)
    before = _files(run_dir)
    for resume in ([], ["--resume", "auto"]):
        assert _train(config, data_dir, run_dir, *resume) == 2
        line = _error_line(capsys)
        assert "previous run's results" in line and "best.pth" in line and str(run_dir) in line
        assert _files(run_dir) == before


def test_resume_auto_on_a_finished_run_says_it_is_complete(
    tmp_path: Path, config: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    run_dir = _copy_run(full_run, tmp_path / "run")
    before = _files(run_dir)
    stamps = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    # with a setting resume may change: nothing trains, so nothing records it
    assert _train(config, data_dir, run_dir, "--resume", "auto", "--set", "optim.lr=5e-4") == 0
    out = capsys.readouterr().out
    assert "is complete: epoch 2 of 2, step 6" in out and "resumed" not in out
    assert _files(run_dir) == before  # no step trained, no log row added or changed
    for name in ("config.yaml", "summary.json", "best.pth", "checkpoint-00000006.pth"):
        assert (run_dir / name).stat().st_mtime_ns == stamps[name], name  # not rewritten


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.name=nat_tiny", "a checkpoint of nat_mini, the config builds nat_tiny"),
        ("model.num_classes=12", "it has 10 classes, this config and dataset have 12"),
        ("model.kwargs.mlp_ratio=2.0", "its weights do not fit the model"),
    ],
    ids=["model", "classes", "shapes"],
)
def test_resume_from_a_checkpoint_of_another_model_writes_nothing(
    tmp_path: Path, config: Path, data_dir: Path, full_run: Path, capsys, override, message
) -> None:
    run_dir = _copy_run(full_run, tmp_path / "run", ["checkpoint-00000003.pth", "config.yaml"])
    before = _files(run_dir)
    ckpt = run_dir / "checkpoint-00000003.pth"
    assert _train(config, data_dir, run_dir, "--resume", str(ckpt), "--set", override) == 2
    line = _error_line(capsys)
    assert message in line and str(ckpt) in line
    assert _files(run_dir) == before  # config.yaml included


def test_model_and_data_errors_leave_no_run_directory(
    tmp_path: Path, config: Path, data_dir: Path, capsys
) -> None:
    empty = tmp_path / "empty.pth"
    empty.touch()
    one_class = tmp_path / "one_class"
    for split in ("train", "val"):
        first = sorted((data_dir / split).iterdir())[0]
        shutil.copytree(first, one_class / split / first.name)
    cases = [
        (data_dir, ["model.kwargs.foo=1"], ["model.kwargs", "'foo'", "embed_dim"]),
        (data_dir, [f"model.init_checkpoint={empty}"], ["model.init_checkpoint", str(empty)]),
        (one_class, [], ["at least 2 classes", str(one_class / "train")]),
    ]
    for i, (data, settings, words) in enumerate(cases):
        top = tmp_path / f"out{i}"
        extra = ["--set", *settings] if settings else []
        assert _train(config, data, top / "nested" / "run", *extra) == 2
        line = _error_line(capsys)
        assert all(word in line for word in words), line
        assert not top.exists()


def test_files_respect_the_umask(tmp_path: Path, config: Path, data_dir: Path) -> None:
    run_dir = tmp_path / "run"
    previous = os.umask(0o027)
    try:
        assert _train(config, data_dir, run_dir, "--set", *ONE_EPOCH, "train.max_steps=1") == 0
        assert _train(config, data_dir, run_dir, "--resume", "auto", "--set", *ONE_EPOCH) == 0
        save_state_dict({"w": torch.ones(2)}, tmp_path / "weights.pth")
        save_state_dict({"w": torch.ones(2)}, tmp_path / "weights.safetensors")
    finally:
        os.umask(previous)
    names = {p.name for p in run_dir.iterdir()}
    assert {"checkpoint-00000003.pth", "best.pth", "config.yaml", "summary.json"} <= names
    assert {"steps.csv", "epochs.csv"} <= names
    for path in [*run_dir.iterdir(), tmp_path / "weights.pth", tmp_path / "weights.safetensors"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path.name


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "kept.txt"
    path.write_text("old")
    path.chmod(0o604)
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o604


# ------------------------------------------------------------------------------------- errors
def test_train_device_cuda_without_cuda(tmp_path: Path, config: Path, data_dir: Path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert _train(config, data_dir, tmp_path / "run", "--set", "train.device=cuda") == 2
    line = _error_line(capsys)
    assert "train.device" in line and "CUDA is not available" in line
    assert not (tmp_path / "run").exists()


def test_impossible_and_read_only_run_directories(
    tmp_path: Path, config: Path, data_dir: Path, capsys, monkeypatch
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert _train(config, data_dir, blocker / "run") == 2
    line = _error_line(capsys)
    assert "cannot be created" in line and str(blocker / "run") in line

    # a read-only file system (chmod does not stop root, so its refusal is injected)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_open = os.open

    def refuse_writes(path, flags, *args, **kwargs):
        if str(path).startswith(str(read_only)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_writes)
    assert _train(config, data_dir, read_only) == 2
    line = _error_line(capsys)
    assert "not writable" in line and "Read-only file system" in line and str(read_only) in line
    assert os.listdir(read_only) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_run_directory_by_permissions(tmp_path: Path, config, data_dir, capsys) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        assert _train(config, data_dir, read_only) == 2
        assert "not writable" in _error_line(capsys)
    finally:
        read_only.chmod(0o755)


@pytest.mark.parametrize("failure", ["zip-writer", "enospc"])
def test_disk_full_stops_with_the_previous_checkpoint_intact(
    tmp_path: Path, config: Path, data_dir: Path, capsys, monkeypatch, failure: str
) -> None:
    run_dir = tmp_path / "run"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 2:  # the second checkpoint fills the disk
            f.write(b"PK\x03\x04 the start of a checkpoint")
            if failure == "zip-writer":  # what torch's zip writer raises
                raise RuntimeError(
                    "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed "
                    "writing file data/3: file write failed"
                )
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    settings = [*ONE_EPOCH, "checkpoint.every_steps=1", "train.max_steps=2"]
    assert _train(config, data_dir, run_dir, "--set", *settings) == 2
    monkeypatch.undo()
    line = _error_line(capsys)
    assert "cannot write checkpoint" in line and "checkpoint-00000002.pth" in line
    assert f"the last complete checkpoint is {run_dir / 'checkpoint-00000001.pth'}" in line
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-00000001.pth"]
    assert load_training_checkpoint(run_dir / "checkpoint-00000001.pth")["step"] == 1
    assert stale_temporaries(run_dir) == []


def test_divergence_names_the_step_and_the_last_good_checkpoint(
    tmp_path: Path, config: Path, data_dir: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    settings = [*ONE_EPOCH, "optim.lr=1e20", "optim.clip_grad=null", "checkpoint.every_steps=1"]
    assert _train(config, data_dir, run_dir, "--set", *settings) == 2
    line = _error_line(capsys)
    ckpts = list_checkpoints(run_dir)
    assert "training diverged: loss is nan at step" in line
    assert ckpts and f"the last complete checkpoint is {ckpts[-1]}" in line
    step = int(line.split("at step ")[1].split()[0])
    assert ckpts[-1].name == f"checkpoint-{step - 1:08d}.pth"
    weights = load_training_checkpoint(ckpts[-1])["model"].values()
    assert all(torch.isfinite(w).all() for w in weights if w.is_floating_point())


def test_validate_unreadable_checkpoints(
    tmp_path: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    ckpt = (full_run / "checkpoint-00000006.pth").read_bytes()
    cases = {
        "empty.pth": (b"", "empty (0 bytes)"),
        "truncated.pth": (ckpt[: len(ckpt) // 2], "truncated or corrupt"),
        "garbage.pth": (b"\x80\x02not a pickle at all", "not a torch checkpoint"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        args = ["--checkpoint", str(path), "--data", str(data_dir), "--workers", "0"]
        assert validate_cli.main([*args, "--model", "nat_mini"]) == 2
        line = _error_line(capsys)
        assert str(path) in line and reason in line, line


# --------------------------------------------------------------------------------------- data
def _with_unreadable_images(data_dir: Path, dest: Path, split: str, count: int) -> list[str]:
    """Copy the dataset and spoil `count` images of `split`: a zero-byte file, a truncated
    JPEG, truncated PNGs; returns their paths."""
    shutil.copytree(data_dir, dest)
    spoiled = []
    images = sorted((dest / split).rglob("*.png"))[::3][:count]
    for i, path in enumerate(images):
        if i == 0:
            path.write_bytes(b"")
        elif i == 1:
            jpeg = path.with_suffix(".jpg")
            Image.open(path).convert("RGB").save(jpeg, quality=95)
            path.unlink()
            path = jpeg
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        spoiled.append(str(path.resolve()))
    return spoiled


def test_validate_never_counts_another_image_for_an_unreadable_one(
    tmp_path: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    root = tmp_path / "data"
    spoiled = _with_unreadable_images(data_dir, root, "val", 2)
    ckpt = full_run / "checkpoint-00000006.pth"
    args = ["--checkpoint", str(ckpt), "--data", str(root), "--workers", "0", "--batch-size", "7"]
    assert validate_cli.main(args) == 2
    line = _error_line(capsys)
    assert any(path in line for path in spoiled)

    out = tmp_path / "result.json"
    assert validate_cli.main([*args, "--skip-corrupt", "--results-file", str(out)]) == 0
    assert "skipped 2 image(s)" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["images"] == 18 and sorted(result["skipped"]) == sorted(spoiled)
    # the metrics are those of the readable images alone
    for path in spoiled:
        Path(path).unlink()
    clean = tmp_path / "clean.json"
    assert validate_cli.main([*args, "--results-file", str(clean)]) == 0
    expected = json.loads(clean.read_text())
    assert (result["top1"], result["loss"]) == (expected["top1"], expected["loss"])


def test_training_stops_on_an_unreadable_image(
    tmp_path: Path, config: Path, data_dir: Path, capsys
) -> None:
    root = tmp_path / "data"
    spoiled = _with_unreadable_images(data_dir, root, "train", 3)
    settings = [*ONE_EPOCH, "data.batch_size=10"]  # 3 steps of 10: every image is drawn
    assert _train(config, root, tmp_path / "run", "--set", *settings) == 2
    line = _error_line(capsys)
    assert "cannot read image" in line and any(path in line for path in spoiled)


# ------------------------------------------------------------- whose run directory is written
def _stamps(run_dir: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in run_dir.iterdir()
    }


def _recording_dir(run_dir: Path, recorded: Path) -> None:
    """Make the checkpoints of `run_dir` record `recorded` as their run.dir."""
    for path in [*list_checkpoints(run_dir), run_dir / "best.pth"]:
        ckpt = load_training_checkpoint(path)
        ckpt["config"]["run"]["dir"] = str(recorded)
        atomic_save(ckpt, path)


def test_resume_from_a_file_runs_beside_it_never_where_it_was_written(
    tmp_path: Path, config: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    original = _copy_run(full_run, tmp_path / "original")
    _recording_dir(original, original)  # as if written there
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = _stamps(original)
    ckpt = copy / "checkpoint-00000003.pth"
    assert train_cli.main(["--resume", str(ckpt), "--set", "checkpoint.keep=1"]) == 0
    assert _stamps(original) == before  # not one file deleted, rewritten or touched
    assert [p.name for p in list_checkpoints(copy)] == ["checkpoint-00000006.pth"]
    assert yaml.safe_load((copy / "config.yaml").read_text())["run"]["dir"] == str(copy)
    assert json.loads((copy / "summary.json").read_text())["run_dir"] == str(copy)
    assert _rows(copy / "steps.csv", STEP_COLUMNS) == _rows(full_run / "steps.csv", STEP_COLUMNS)

    # the same with --config: the config file's run.dir is not the command line's either
    with_dir = tmp_path / "with_dir.yaml"
    with_dir.write_text(config.read_text() + f"run: {{dir: {original}}}\n")
    copy2 = tmp_path / "copy2"
    shutil.copytree(original, copy2)
    ckpt2 = copy2 / "checkpoint-00000003.pth"
    argv = ["--config", str(with_dir), "--data", str(data_dir), "--resume", str(ckpt2)]
    assert train_cli.main(argv) == 0
    assert _stamps(original) == before
    assert (copy2 / "checkpoint-00000006.pth").is_file()
    capsys.readouterr()


def test_resume_from_a_file_into_another_run_directory(
    tmp_path: Path, config: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    """--run-dir names where a checkpoint continues: a new directory, never one holding
    another run (its checkpoints would be pruned, its logs rewritten)."""
    source = _copy_run(full_run, tmp_path / "source")
    before = _stamps(source)
    other = _copy_run(full_run, tmp_path / "other", ["checkpoint-00000006.pth", "config.yaml"])
    other_before = _stamps(other)
    ckpt = source / "checkpoint-00000003.pth"
    assert train_cli.main(["--resume", str(ckpt), "--run-dir", str(other)]) == 2
    line = _error_line(capsys)
    assert str(other) in line and "already holds checkpoints" in line
    assert _stamps(other) == other_before
    fresh = tmp_path / "fresh"
    assert train_cli.main(["--resume", str(ckpt), "--run-dir", str(fresh)]) == 0
    assert _stamps(source) == before
    assert [p.name for p in list_checkpoints(fresh)] == ["checkpoint-00000006.pth"]
    assert _rows(fresh / "epochs.csv", EPOCH_COLUMNS) == _rows(
        full_run / "epochs.csv", EPOCH_COLUMNS
    )


def test_resume_auto_adopts_only_auto_numbered_runs(
    tmp_path: Path, config: Path, data_dir: Path, capsys
) -> None:
    root = tmp_path / "runs"
    common = ["--config", str(config), "--data", str(data_dir), "--set", f"run.output={root}"]
    # another experiment whose name starts with the config's: tiny-ablation
    assert train_cli.main([*common, "run.name=tiny-ablation", "aug.mixup=0", *ONE_EPOCH,
                           "train.max_steps=1"]) == 0  # fmt: skip
    ablation = _stamps(root / "tiny-ablation")
    capsys.readouterr()
    assert train_cli.main([*common, *ONE_EPOCH, "train.max_steps=1", "--resume", "auto"]) == 0
    assert "no checkpoint under" in capsys.readouterr().out
    assert _stamps(root / "tiny-ablation") == ablation
    assert [p.name for p in list_checkpoints(root / "tiny")] == ["checkpoint-00000001.pth"]
    # an auto-numbered run is one of them: the newest is continued
    shutil.copytree(root / "tiny", root / "tiny-2")
    os.utime(root / "tiny-2" / "checkpoint-00000001.pth")
    tiny = _stamps(root / "tiny")
    assert train_cli.main([*common, *ONE_EPOCH, "train.max_steps=2", "--resume", "auto"]) == 0
    assert (root / "tiny-2" / "checkpoint-00000002.pth").is_file()
    assert _stamps(root / "tiny") == tiny and _stamps(root / "tiny-ablation") == ablation


def test_resume_refuses_a_config_that_changes_the_experiment(
    tmp_path: Path, config: Path, data_dir: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    assert _train(config, data_dir, run_dir, "--set", "train.max_steps=1") == 0
    before = _stamps(run_dir)
    changed = ["aug.mixup=0.5", "optim.weight_decay=0.1", "sched.warmup_epochs=0"]
    assert _train(config, data_dir, run_dir, "--resume", "auto", "--set", *changed) == 2
    line = _error_line(capsys)
    assert "its config differs" in line and "optim.lr" in line  # names what may change
    for key, old, new in (("aug.mixup", 0.8, 0.5), ("optim.weight_decay", 0.05, 0.1),
                          ("sched.warmup_epochs", 1, 0)):  # fmt: skip
        assert f"{key} {old} -> {new}" in line, line
    assert _stamps(run_dir) == before
    # the checkpoint file without --config: the same refusal
    ckpt = run_dir / "checkpoint-00000001.pth"
    assert train_cli.main(["--resume", str(ckpt), "--set", "aug.mixup=0.5"]) == 2
    assert "aug.mixup 0.8 -> 0.5" in _error_line(capsys)
    assert _stamps(run_dir) == before


def test_resume_applies_a_new_lr_and_schedule(
    tmp_path: Path, config: Path, data_dir: Path, capsys
) -> None:
    """optim.lr, sched.epochs and sched.min_lr set on resume rebuild the schedule: from the
    checkpoint's step on, the lr is that of a run started with them."""
    new = ["optim.lr=5e-4", "sched.epochs=3", "sched.min_lr=1e-5"]
    reference = tmp_path / "reference"
    assert _train(config, data_dir, reference, "--set", *new) == 0
    run_dir = tmp_path / "run"
    assert _train(config, data_dir, run_dir, "--set", "train.max_steps=2") == 0
    assert _train(config, data_dir, run_dir, "--resume", "auto", "--set", *new) == 0
    want = {int(r["step"]): r["lr"] for r in read_csv(reference / "steps.csv")}
    got = {int(r["step"]): r["lr"] for r in read_csv(run_dir / "steps.csv")}
    assert sorted(got) == list(range(1, 10))
    assert {s: got[s] for s in range(3, 10)} == {s: want[s] for s in range(3, 10)}
    assert got[2] != want[2]  # before the resume: the old schedule
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (recorded["optim"]["lr"], recorded["sched"]["epochs"]) == (5e-4, 3)
    assert recorded["sched"]["min_lr"] == 1e-5
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["epochs"], summary["step"]) == (3, 9)


# ------------------------------------------------------------- signals and orphaned workers
LONG = ["sched.epochs=200", "data.workers=2", "checkpoint.every_steps=1", "checkpoint.keep=2"]


def _start(config: Path, data_dir: Path, run_dir: Path, log=subprocess.PIPE) -> subprocess.Popen:
    """nat-train in a process group of its own (as a shell job, Slurm or systemd starts it);
    its output goes to pipes, or to the file object `log`."""
    args = ["--config", str(config), "--data", str(data_dir), "--run-dir", str(run_dir)]
    return subprocess.Popen(
        [sys.executable, "-m", "classification.train", *args, "--set", *LONG],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        stdout=log,
        stderr=subprocess.STDOUT if log is not subprocess.PIPE else subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_steps(proc: subprocess.Popen, run_dir: Path, steps: int) -> None:
    deadline = time.monotonic() + 240
    path = run_dir / "steps.csv"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        if path.is_file() and len(path.read_text().splitlines()) > steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {steps} steps logged in time")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_stops_with_a_checkpoint(
    tmp_path: Path, config: Path, data_dir: Path, capsys, sig: signal.Signals
) -> None:
    """timeout, Slurm, systemd and Ctrl-C signal every process of the group, the loader workers
    included: they leave the stop to the main process, which saves a checkpoint and exits 0."""
    run_dir = tmp_path / "run"
    proc = _start(config, data_dir, run_dir)
    try:
        _wait_for_steps(proc, run_dir, 2)
        assert len(_children(proc.pid)) >= 2  # the loader workers are running
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
    assert err.count("stop requested") == 1, err[-3000:]  # the main process's, only
    # every step trained is in the last checkpoint: nothing is lost
    last = list_checkpoints(run_dir)[-1]
    step = load_training_checkpoint(last)["step"]
    assert [int(r["step"]) for r in read_csv(run_dir / "steps.csv")] == list(range(1, step + 1))
    assert last.name == f"checkpoint-{step:08d}.pth" and step >= 2
    if step % 3:  # mid-epoch (at an epoch's end the epoch checkpoint is the stop's)
        assert f"stopped at step {step}" in out
        assert load_training_checkpoint(last)["reason"] == "stopped"
    assert stale_temporaries(run_dir) == []
    # and the run continues from it
    settings = ["data.workers=0", f"train.max_steps={step + 1}"]
    assert _train(config, data_dir, run_dir, "--resume", "auto", "--set", *LONG, *settings) == 0
    assert f"resumed from {last}" in capsys.readouterr().out
    assert load_training_checkpoint(list_checkpoints(run_dir)[-1])["step"] == step + 1


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_orphaned_workers_do_not_hold_the_run_lock_after_kill_9(
    tmp_path: Path, config: Path, data_dir: Path, capsys
) -> None:
    """kill -9 of the main process leaves its loader workers alive for seconds: they must not
    hold the run directory's lock, or the immediate --resume auto is refused."""
    run_dir = tmp_path / "run"
    log = open(tmp_path / "log.txt", "w")  # noqa: SIM115 - the workers keep it open
    proc = _start(config, data_dir, run_dir, log)
    workers: list[int] = []
    try:
        _wait_for_steps(proc, run_dir, 2)
        workers = _children(proc.pid)
        assert len(workers) >= 2
        for pid in workers:  # keep them alive (and holding whatever they hold) meanwhile
            os.kill(pid, signal.SIGSTOP)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        assert all(Path(f"/proc/{pid}").exists() for pid in workers)
        latest = load_training_checkpoint(list_checkpoints(run_dir)[-1])["step"]
        settings = ["data.workers=0", f"train.max_steps={latest + 1}"]
        rc = _train(config, data_dir, run_dir, "--resume", "auto", "--set", *LONG, *settings)
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        assert "in use by another training" not in captured.err
        assert load_training_checkpoint(list_checkpoints(run_dir)[-1])["step"] == latest + 1
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

"""What the image folders yield: every PIL mode decoded by value, symlinked folders (and loops)
never followed by default and never twice, labels by the training classes' names (nat-validate
by the checkpoint's), and one-line errors for empty splits and unknown classes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import test_train
import timm
import torch
from PIL import Image

from classification import train as train_cli
from classification import validate as validate_cli
from classification.training.data import (
    eval_transform,
    image_folder,
    scan_image_folder,
    to_rgb,
)
from classification.training.state import load_training_checkpoint

config = test_train.config
data_dir = test_train.data_dir
full_run = test_train.full_run

GRAY = np.array([[0, 17, 34, 51], [68, 85, 102, 119], [136, 153, 170, 187], [204, 221, 238, 255]])


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("nat-"), lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------- modes
def _image(mode: str) -> tuple[Image.Image, np.ndarray]:
    """An image of `mode` whose pixels are the gray levels GRAY, and the RGB values it holds."""
    gray = Image.fromarray(GRAY.astype(np.uint8), "L")
    expected = np.repeat(GRAY[..., None], 3, axis=2)
    if mode == "1":
        levels = (GRAY >= 128) * 255
        return Image.fromarray(levels.astype(np.uint8), "L").convert("1"), np.repeat(
            levels[..., None], 3, axis=2
        )
    if mode == "I;16":
        return Image.fromarray((GRAY * 257).astype(np.uint16)), expected
    if mode == "I":  # 16-bit values in a 32-bit image (what 16-bit TIFFs and PGMs open as)
        return Image.fromarray((GRAY * 257).astype(np.int32)), expected
    if mode == "F":  # a float image in [0, 1]
        return Image.fromarray((GRAY / 255).astype(np.float32)), expected
    if mode in ("LA", "PA", "RGBA"):
        base = gray.convert(mode[:-1] if mode != "RGBA" else "RGB")
        base.putalpha(Image.fromarray(np.full((4, 4), 77, np.uint8), "L"))
        return base, expected
    return gray.convert(mode), expected


MODES = ["1", "L", "LA", "P", "PA", "I;16", "I", "F", "RGB", "RGBA", "CMYK"]


@pytest.mark.parametrize("mode", MODES)
def test_every_image_mode_is_decoded_by_value(tmp_path: Path, mode: str) -> None:
    img, expected = _image(mode)
    assert img.mode == mode
    decoded = to_rgb(img)
    assert decoded.mode == "RGB"
    got = np.asarray(decoded).astype(int)
    assert np.abs(got - expected).max() <= 1, (mode, got[..., 0])


# the modes the image files an ImageFolder reads (.png, .jpg, .jpeg) open as
FILE_MODES = {"1": ".png", "L": ".png", "LA": ".png", "P": ".png", "I;16": ".png",
              "RGB": ".png", "RGBA": ".png", "CMYK": ".jpg"}  # fmt: skip


@pytest.mark.parametrize("mode", sorted(FILE_MODES))
def test_image_files_of_every_mode_are_decoded_by_value(tmp_path: Path, mode: str) -> None:
    img, expected = _image(mode)
    path = tmp_path / "split" / "a" / f"img{FILE_MODES[mode]}"
    path.parent.mkdir(parents=True)
    img.save(path, **({"quality": 100} if mode == "CMYK" else {}))
    assert Image.open(path).mode == mode  # the file really holds that mode
    decoded, label = image_folder(tmp_path / "split", transform=None)[0]
    assert label == 0 and decoded.mode == "RGB"
    got = np.asarray(decoded).astype(int)
    tolerance = 3 if mode == "CMYK" else 1  # JPEG
    assert np.abs(got - expected).max() <= tolerance, (mode, got[..., 0])


def test_sixteen_bit_training_images_are_not_white(tmp_path: Path) -> None:
    """A 16-bit PNG's mid gray stays mid gray through the evaluation transform."""
    path = tmp_path / "split" / "a" / "gray16.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 128 * 257, np.uint16)).save(path)
    transform = eval_transform(8, 1.0, "bilinear", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    tensor, _ = image_folder(tmp_path / "split", transform)[0]
    assert torch.allclose(tensor, torch.full_like(tensor, 128 / 255), atol=1 / 255)


# ------------------------------------------------------------------------------- symlinks
def _with_loop(data_dir: Path, dest: Path, split: str = "val") -> Path:
    """A copy of the dataset whose first class folder of `split` links back to the split."""
    shutil.copytree(data_dir, dest)
    first = sorted((dest / split).iterdir())[0]
    (first / "loop").symlink_to(dest / split, target_is_directory=True)
    return first / "loop"


def test_scanning_skips_symlinked_folders_and_loops(tmp_path: Path, data_dir: Path) -> None:
    loop = _with_loop(data_dir, tmp_path / "data")
    outside = tmp_path / "outside" / "extra"
    outside.mkdir(parents=True)
    shutil.copy(next((tmp_path / "data" / "val").rglob("*.png")), outside / "x.png")
    linked = tmp_path / "data" / "val" / "extra"
    linked.symlink_to(outside, target_is_directory=True)
    twice = tmp_path / "data" / "val" / "extra_again"
    twice.symlink_to(outside, target_is_directory=True)

    default = scan_image_folder(tmp_path / "data" / "val")
    assert len(default.samples) == 20
    assert sorted(default.unfollowed) == sorted(map(str, (loop, linked, twice)))
    assert "data.follow_symlinks=true" in default.skipped_message()
    assert "--follow-symlinks follows" in default.skipped_message("--follow-symlinks")

    followed = scan_image_folder(tmp_path / "data" / "val", follow_symlinks=True)
    assert len(followed.samples) == 21  # the outside folder once, under the first link to it
    assert ("extra", str(linked / "x.png")) in [(c, p) for p, c in followed.samples]
    assert sorted(followed.looping) == sorted(map(str, (loop, twice)))
    assert "loop" in followed.skipped_message()


def test_validate_does_not_follow_a_symlink_loop(
    tmp_path: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    loop = _with_loop(data_dir, tmp_path / "data")
    out = tmp_path / "result.json"
    ckpt = full_run / "checkpoint-00000006.pth"
    args = ["--checkpoint", str(ckpt), "--data", str(tmp_path / "data"), "--workers", "0"]
    assert validate_cli.main([*args, "--results-file", str(out)]) == 0
    assert json.loads(out.read_text())["images"] == 20
    assert str(loop) in capsys.readouterr().out
    assert validate_cli.main([*args, "--follow-symlinks", "--results-file", str(out)]) == 0
    assert json.loads(out.read_text())["images"] == 20
    assert "lead back into the dataset" in capsys.readouterr().out


def test_training_does_not_follow_a_symlink_loop(
    tmp_path: Path, config: Path, data_dir: Path, capsys
) -> None:
    loop = _with_loop(data_dir, tmp_path / "data", "train")
    run_dir = tmp_path / "run"
    settings = ["sched.epochs=1", "sched.warmup_epochs=0", "train.max_steps=1"]
    argv = ["--config", str(config), "--data", str(tmp_path / "data"), "--run-dir", str(run_dir)]
    assert train_cli.main([*argv, "--set", *settings]) == 0
    out = capsys.readouterr().out
    assert str(loop) in out and "3 steps/epoch" in out  # 30 images, not a loop's worth


# ----------------------------------------------------------------------- classes and labels
def _without_class(data_dir: Path, dest: Path, index: int = 0) -> tuple[Path, str]:
    shutil.copytree(data_dir, dest)
    gone = sorted((dest / "val").iterdir())[index]
    shutil.rmtree(gone)
    return dest, gone.name


def _top1_by_hand(ckpt_path: Path, val_dir: Path, classes: list[str]) -> float:
    """Top-1 of the checkpoint's model on val_dir, the label of a folder its index in
    `classes`."""
    ckpt = load_training_checkpoint(ckpt_path)
    cfg = ckpt["config"]
    model = timm.create_model(cfg["model"]["name"], num_classes=10, **cfg["model"]["kwargs"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    data = cfg["data"]
    transform = eval_transform(16, 1.0, "bilinear", data["mean"], data["std"])
    correct = total = 0
    for class_dir in sorted(val_dir.iterdir()):
        label = classes.index(class_dir.name)
        for path in sorted(class_dir.glob("*.png")):
            with torch.no_grad():
                logits = model(transform(Image.open(path).convert("RGB"))[None])
            correct += int(logits.argmax(1).item() == label)
            total += 1
    return 100 * correct / total


def test_validate_labels_by_the_checkpoint_classes(
    tmp_path: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    root, gone = _without_class(data_dir, tmp_path / "data")
    ckpt = full_run / "checkpoint-00000006.pth"
    out = tmp_path / "result.json"
    args = ["--checkpoint", str(ckpt), "--data", str(root), "--workers", "0"]
    assert validate_cli.main([*args, "--results-file", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 18
    trained = sorted(p.name for p in (data_dir / "train").iterdir())  # the training classes
    assert result["top1"] == pytest.approx(_top1_by_hand(ckpt, root / "val", trained), abs=1e-3)
    assert load_training_checkpoint(ckpt)["classes"] == trained
    assert result["absent_classes"] == [gone]
    printed = capsys.readouterr().out
    assert "1 of the checkpoint's classes have no images" in printed and gone in printed


def test_validate_refuses_classes_the_checkpoint_does_not_know(
    tmp_path: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    first = sorted((root / "val").iterdir())[0]
    shutil.copytree(first, root / "val" / "zebra")
    ckpt = full_run / "checkpoint-00000006.pth"
    args = ["--checkpoint", str(ckpt), "--data", str(root), "--workers", "0"]
    assert validate_cli.main(args) == 2
    line = _error_line(capsys)
    assert "zebra" in line and "unknown to the checkpoint" in line and str(ckpt) in line


def test_training_refuses_val_classes_unknown_to_train(
    tmp_path: Path, config: Path, data_dir: Path, capsys
) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    first = sorted((root / "val").iterdir())[0]
    shutil.copytree(first, root / "val" / "zebra")
    top = tmp_path / "out"
    argv = ["--config", str(config), "--data", str(root), "--run-dir", str(top / "run")]
    assert train_cli.main(argv) == 2
    line = _error_line(capsys)
    assert "zebra" in line and str(root / "val") in line and "training split" in line
    assert not top.exists()


def test_resume_refuses_a_dataset_of_other_classes(
    tmp_path: Path, config: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    """Same class count, other names: the labels would mean other classes."""
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    for split in ("train", "val"):
        first = sorted((root / split).iterdir())[0]
        first.rename(first.with_name("renamed"))
    run_dir = tmp_path / "run"
    shutil.copytree(full_run, run_dir)
    ckpt = run_dir / "checkpoint-00000003.pth"
    assert train_cli.main(["--resume", str(ckpt), "--data", str(root)]) == 2
    assert "other classes" in _error_line(capsys)


# ------------------------------------------------------------------------- empty splits
@pytest.mark.parametrize("layout", ["no-folders", "empty-class-folders", "no-images"])
def test_an_empty_val_split_is_one_line(
    tmp_path: Path, config: Path, data_dir: Path, full_run: Path, capsys, layout: str
) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    shutil.rmtree(root / "val")
    (root / "val").mkdir()
    if layout == "empty-class-folders":
        for name in ("a", "b"):
            (root / "val" / name).mkdir()
    elif layout == "no-images":
        (root / "val" / "a").mkdir()
        (root / "val" / "a" / "notes.txt").write_text("not an image")
    ckpt = full_run / "checkpoint-00000006.pth"
    assert validate_cli.main(["--checkpoint", str(ckpt), "--data", str(root)]) == 2
    line = _error_line(capsys)
    assert "no images found" in line and str(root / "val") in line
    top = tmp_path / "out"
    argv = ["--config", str(config), "--data", str(root), "--run-dir", str(top / "run")]
    assert train_cli.main(argv) == 2
    line = _error_line(capsys)
    assert "no images found" in line and str(root / "val") in line
    assert not top.exists()


# ------------------------------------------------------------------------ nat-validate input
def test_validate_checks_its_results_file_before_evaluating(
    tmp_path: Path, data_dir: Path, full_run: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = full_run / "checkpoint-00000006.pth"
    (tmp_path / "a_file").write_text("x")
    evaluated: list = []
    import classification.validate as validate_module

    real_evaluate = validate_module.evaluate
    monkeypatch.setattr(
        validate_module, "evaluate", lambda *a, **k: evaluated.append(1) or real_evaluate(*a, **k)
    )
    for target, reason in (
        (tmp_path / "a_file" / "result.json", "is not a folder"),
        (tmp_path, "is a folder"),
    ):
        args = ["--checkpoint", str(ckpt), "--data", str(data_dir), "--workers", "0"]
        assert validate_cli.main([*args, "--results-file", str(target)]) == 2
        line = _error_line(capsys)
        assert "--results-file" in line and str(target) in line and reason in line
    assert evaluated == []


@pytest.mark.parametrize(
    ("option", "value", "accepted"),
    [
        ("--img-size", "100000", "[1, 4096]"),
        ("--batch-size", "1000000", "[1, 16384]"),
        ("--workers", "10000", "[0, 64]"),
    ],
)
def test_validate_bounds_its_sizes(data_dir: Path, capsys, option, value, accepted) -> None:
    args = ["--pretrained", "--model", "nat_mini", "--data", str(data_dir), option, value]
    with pytest.raises(SystemExit) as info:
        validate_cli.main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and accepted in err

"""Argument handling of the train command lines (the Runner itself is exercised elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

from mmengine.runner import Runner

from detection import test as det_test
from detection import train as det_train
from detection.progress_hook import EvalProgressHook
from segmentation import train as seg_train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list:
    seen: list = []

    class FakeRunner:
        def register_hook(self, hook, priority=None) -> None:
            seen.append(hook)

        def train(self) -> None:
            seen.append("trained")

    def from_cfg(cfg):
        seen.append(cfg)
        return FakeRunner()

    monkeypatch.setattr(Runner, "from_cfg", staticmethod(from_cfg))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return seen


def test_detection_train_options(captured: list, tmp_path: Path) -> None:
    config = CONFIGS / "detection/nat/mask_rcnn_nat_mini_3x_coco.py"
    det_train.main(
        [
            str(config),
            "--no-amp",
            "--resume",
            "--work-dir",
            str(tmp_path),
            "--cfg-options",
            "train_dataloader.batch_size=4",
        ]
    )
    cfg, hook, done = captured
    assert isinstance(hook, EvalProgressHook) and done == "trained"
    assert cfg.optim_wrapper.type == "OptimWrapper" and "loss_scale" not in cfg.optim_wrapper
    assert cfg.resume is True and cfg.load_from is None and cfg.work_dir == str(tmp_path)
    assert cfg.train_dataloader.batch_size == 4 and cfg.launcher == "none"


def test_segmentation_train_options(
    captured: list, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun
    config = CONFIGS / "segmentation/demo/upernet_nat_mini_demo.py"
    seg_train.main([str(config), "--amp", "--resume", str(tmp_path / "iter_4.pth")])
    cfg = captured[0]
    assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.loss_scale == "dynamic"
    assert cfg.resume is True and cfg.load_from == str(tmp_path / "iter_4.pth")
    assert cfg.launcher == "pytorch"
    assert cfg.work_dir == str(Path("work_dirs") / "upernet_nat_mini_demo")


def test_auto_scale_lr_needs_a_base_batch(captured: list) -> None:
    det_train.main([str(CONFIGS / "detection/demo/mask_rcnn_nat_mini_demo.py"), "--auto-scale-lr"])
    assert captured[0].auto_scale_lr.enable is True
    with pytest.raises(SystemExit, match="auto_scale_lr"):
        seg_train.main(
            [str(CONFIGS / "segmentation/demo/upernet_nat_mini_demo.py"), "--auto-scale-lr"]
        )


def test_unreadable_backbone_weights_end_the_command_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    """The Runner fails on an init_cfg file (raised from the backbone's init_weights): one line
    naming it, exit status 2, no traceback."""
    from classification.checkpoint import CheckpointFileError

    message = f"checkpoint file {tmp_path / 'nat_mini.pth'} cannot be read: it is empty (0 bytes)"

    class FailingRunner:
        def register_hook(self, hook, priority=None) -> None:
            pass

        def train(self) -> None:
            raise CheckpointFileError(message)

    monkeypatch.setattr(Runner, "from_cfg", staticmethod(lambda cfg: FailingRunner()))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = CONFIGS / "segmentation/demo/upernet_nat_mini_demo.py"
    with pytest.raises(SystemExit) as exit_info:
        seg_train.main([str(config), "--work-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f": error: {message}")


def test_test_command_runs_with_the_progress_hook(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    """nat-det-test / nat-seg-test register EvalProgressHook on the Runner before testing."""
    calls: list = []

    class FakeRunner:
        def register_hook(self, hook, priority=None) -> None:
            calls.append(hook)

        def test(self) -> dict:
            calls.append("tested")
            return {"coco/bbox_mAP": 0.5}

    monkeypatch.setattr(Runner, "from_cfg", staticmethod(lambda cfg: FakeRunner()))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = CONFIGS / "detection/demo/mask_rcnn_nat_mini_demo.py"
    det_test.main([str(config), str(tmp_path / "w.pth"), "--work-dir", str(tmp_path)])
    assert len(calls) == 2 and isinstance(calls[0], EvalProgressHook) and calls[1] == "tested"
    assert '"coco/bbox_mAP": 0.5' in capsys.readouterr().out

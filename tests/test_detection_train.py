"""Mask R-CNN and Cascade Mask R-CNN with a (small) real NAT backbone on the generated COCO-format
data: one training iteration, COCO evaluation, checkpoint resume, the test tool and the demo."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("mmdet")
pycocotools = pytest.importorskip("pycocotools")

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import detection.models  # noqa: E402,F401  (mmcv-lite stand-in, backbone registration)
from detection import demo_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = {
    "mask_rcnn": REPO / "configs/detection/demo/mask_rcnn_nat_mini_demo.py",
    "cascade": REPO / "configs/detection/demo/cascade_mask_rcnn_nat_mini_demo.py",
}
# A small NAT (same code, fewer/narrower blocks) and 64-channel heads keep CPU steps short.
SMALL = {
    "model.backbone.embed_dim": 32,
    "model.backbone.depths": [1, 1, 2, 1],
    "model.backbone.num_heads": [1, 2, 4, 8],
    "model.backbone.mlp_ratio": 2.0,
    "model.neck.in_channels": [32, 64, 128, 256],
    "model.neck.out_channels": 64,
    "model.rpn_head.in_channels": 64,
    "model.rpn_head.feat_channels": 64,
    "model.roi_head.bbox_roi_extractor.out_channels": 64,
    "model.roi_head.mask_roi_extractor.out_channels": 64,
    "model.roi_head.mask_head.in_channels": 64,
    "model.roi_head.mask_head.conv_out_channels": 64,
    "model.train_cfg.rpn.sampler.num": 64,
    "model.train_cfg.rpn_proposal.nms_pre": 200,
    "model.train_cfg.rpn_proposal.max_per_img": 100,
    "model.test_cfg.rpn.nms_pre": 200,
    "model.test_cfg.rpn.max_per_img": 100,
    "model.test_cfg.rcnn.score_thr": 0.0,  # keep detections of the barely trained model
    "model.test_cfg.rcnn.max_per_img": 20,
}
MASK_RCNN_HEADS = {
    "model.roi_head.bbox_head.in_channels": 64,
    "model.roi_head.bbox_head.fc_out_channels": 128,
    "model.train_cfg.rcnn.sampler.num": 64,
}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    return demo_data.generate(root, num_train=2, num_val=2, size=96, seed=1)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def small_config(name: str, root: Path, work_dir: Path, epochs: int = 1) -> Config:
    """The demo config with the small model, 96-pixel images and one iteration per epoch."""
    cfg = Config.fromfile(DEMO[name])
    cfg.work_dir = str(work_dir)
    cfg.merge_from_dict(SMALL)
    if name == "mask_rcnn":
        cfg.merge_from_dict(MASK_RCNN_HEADS)
    else:
        for head in cfg.model.roi_head.bbox_head:
            head.update(in_channels=64, conv_out_channels=64, fc_out_channels=128)
        for stage in cfg.model.train_cfg.rcnn:
            stage.sampler.num = 64
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = str(root)
        for step in loader.dataset.pipeline:
            if step.type == "RandomChoiceResize":
                step.scales = [(128, 96)]
            elif step.type == "Resize":
                step.scale = (128, 96)
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        evaluator.ann_file = str(root / "annotations/instances_val2017.json")
    cfg.train_cfg.update(max_epochs=epochs, val_interval=100)  # validation is run explicitly
    cfg.param_scheduler = [dict(type="ConstantLR", factor=1.0, by_epoch=False)]
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1)
    cfg.log_level = "WARNING"
    return cfg


def _train(cfg: Config) -> Runner:
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def test_demo_data_is_valid_coco(coco_root: Path) -> None:
    from pycocotools.coco import COCO

    coco = COCO(str(coco_root / "annotations/instances_train2017.json"))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == [
        "ellipse",
        "rectangle",
        "triangle",
    ]
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        x, y, w, h = ann["bbox"]
        assert mask.sum() > 0 and w > 0 and h > 0
        ys, xs = mask.nonzero()
        assert xs.min() >= int(x) - 1 and xs.max() <= x + w
        assert ys.min() >= int(y) - 1 and ys.max() <= y + h
        # pycocotools and Pillow rasterise polygon borders differently: allow a border's width
        assert abs(int(mask.sum()) - ann["area"]) <= 3 * math.sqrt(ann["area"])


def test_mask_rcnn_trains_evaluates_resumes_and_tests(
    coco_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "mask_rcnn"
    runner = _train(small_config("mask_rcnn", coco_root, work))
    assert runner.iter == 1
    metrics = runner.val_loop.run()
    for key in ("coco/bbox_mAP", "coco/segm_mAP"):
        assert 0.0 <= metrics[key] <= 1.0
    first = {k: v.clone() for k, v in runner.model.state_dict().items()}
    assert (work / "epoch_1.pth").is_file()

    resumed = small_config("mask_rcnn", coco_root, work, epochs=2)
    resumed.resume = True
    runner2 = Runner.from_cfg(resumed)
    runner2.train()
    assert runner2.iter == 2 and runner2.epoch == 2  # continued from epoch 1, not from scratch
    changed = [k for k, v in runner2.model.state_dict().items() if not v.equal(first[k])]
    assert any(k.startswith("backbone.levels") for k in changed)

    from detection import test as det_test

    out_json = tmp_path / "metrics.json"
    terminal = Terminal()  # on a terminal the test loop draws mmengine's progress bar
    monkeypatch.setattr(sys, "stderr", terminal)
    det_test.main(
        [
            str(DEMO["mask_rcnn"]),
            str(work / "epoch_2.pth"),
            "--work-dir",
            str(tmp_path / "test"),
            "--out-json",
            str(out_json),
            "--cfg-options",
            *_cli_overrides(coco_root),
        ]
    )
    saved = json.loads(out_json.read_text())
    assert 0.0 <= saved["coco/segm_mAP"] <= 1.0
    assert "] 2/2, " in terminal.getvalue()  # the two val images


def _cli_overrides(root: Path) -> list[str]:
    """--cfg-options giving the command-line tools the small Mask R-CNN and the generated data."""
    options = {**SMALL, **MASK_RCNN_HEADS}
    options["test_dataloader.dataset.data_root"] = root
    options["test_evaluator.ann_file"] = root / "annotations/instances_val2017.json"
    options["log_level"] = "WARNING"
    return [f"{k}={v}".replace(" ", "") for k, v in options.items()]


def test_cascade_mask_rcnn_trains_and_predicts(coco_root: Path, tmp_path: Path) -> None:
    runner = _train(small_config("cascade", coco_root, tmp_path))
    assert runner.iter == 1
    stages = runner.model.roi_head.bbox_head
    assert len(stages) == 3 and all(h.num_classes == 3 for h in stages)
    metrics = runner.val_loop.run()
    assert 0.0 <= metrics["coco/bbox_mAP"] <= 1.0


def test_demo_writes_png_with_predictions(coco_root: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from detection import demo

    image = next((coco_root / "val2017").glob("*.jpg"))
    out = demo.run(
        [
            str(image),
            str(DEMO["mask_rcnn"]),
            "--out",
            str(tmp_path / "pred.png"),
            "--score-thr",
            "0.0",
            "--cfg-options",
            *_cli_overrides(coco_root),
        ]
    )
    drawn = np.asarray(Image.open(out).convert("RGB"))
    original = np.asarray(Image.open(image).convert("RGB"))
    assert drawn.shape == original.shape
    # with a threshold of 0 every prediction is drawn, so the image differs from the input
    assert not np.array_equal(drawn, original)


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def _bad_checkpoint(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A checkpoint that cannot be used, and the words its error must hold."""
    import torch

    path = tmp_path / f"{kind}.pth"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty (0 bytes)"
    if kind == "truncated":
        torch.save({"state_dict": {"w": torch.ones(4096)}}, path)
        path.write_bytes(path.read_bytes()[:2048])
        return path, "truncated or corrupt"
    torch.save({"state_dict": {}, "x": _RunsCode(f"touch {tmp_path / 'code-ran'}")}, path)
    return path, "posix.system"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert ": error: " in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("kind", ["empty", "truncated", "malicious"])
def test_test_and_resume_refuse_unreadable_checkpoints_in_one_line(
    coco_root: Path, tmp_path: Path, capsys, kind: str
) -> None:
    from detection import test as det_test
    from detection import train as det_train

    bad, words = _bad_checkpoint(tmp_path, kind)
    with pytest.raises(SystemExit) as info:
        det_test.main([str(DEMO["mask_rcnn"]), str(bad), "--work-dir", str(tmp_path / "test"),
                       "--cfg-options", *_cli_overrides(coco_root)])  # fmt: skip
    assert info.value.code == 2
    line = _one_line(capsys)
    assert str(bad) in line and words in line and "weights_only" not in line
    data = {
        "train_dataloader.dataset.data_root": coco_root,
        "val_dataloader.dataset.data_root": coco_root,
        "val_evaluator.ann_file": coco_root / "annotations/instances_val2017.json",
    }
    options = [f"{k}={v}" for k, v in data.items()]
    with pytest.raises(SystemExit) as info:
        det_train.main([str(DEMO["mask_rcnn"]), "--no-amp", "--resume", str(bad), "--work-dir",
                        str(tmp_path / "train"), "--cfg-options", *_cli_overrides(coco_root),
                        *options])  # fmt: skip
    assert info.value.code == 2
    line = _one_line(capsys)
    assert str(bad) in line and words in line
    assert not (tmp_path / "code-ran").exists()

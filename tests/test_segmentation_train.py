"""UPerNet with a (small) real NAT backbone on the generated ADE20K-format data: one training
iteration, mIoU evaluation, the test tool (single and multi-scale) and the demo."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmseg")

from mmengine.config import Config
from mmengine.runner import Runner
from PIL import Image

import segmentation.models  # noqa: F401  (mmcv-lite stand-in, backbone registration)
from segmentation import demo_data

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs/segmentation/demo/upernet_nat_mini_demo.py"
# A small NAT (same code, fewer/narrower blocks) and narrow heads keep CPU steps short.
SMALL = {
    "model.backbone.embed_dim": 32,
    "model.backbone.depths": [1, 1, 2, 1],
    "model.backbone.num_heads": [1, 2, 4, 8],
    "model.backbone.mlp_ratio": 2.0,
    "model.data_preprocessor.size": (64, 64),
    "model.decode_head.in_channels": [32, 64, 128, 256],
    "model.decode_head.channels": 64,
    "model.auxiliary_head.in_channels": 128,
    "model.auxiliary_head.channels": 32,
    "log_level": "WARNING",
}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_data.generate(tmp_path_factory.mktemp("ade"), num_train=2, num_val=2, size=64)


def _data_options(root: Path) -> dict:
    return {
        f"{split}_dataloader.dataset.data_root": str(root) for split in ("train", "val", "test")
    }


def test_demo_data_layout(ade_root: Path) -> None:
    images = sorted((ade_root / "images/training").glob("*.jpg"))
    labels = sorted((ade_root / "annotations/training").glob("*.png"))
    assert [p.stem for p in images] == [p.stem for p in labels] and len(images) == 2
    label = np.asarray(Image.open(labels[0]))
    assert label.dtype == np.uint8 and label.ndim == 2
    assert set(np.unique(label)) <= {0, 1, 2, 3} and label.max() > 0
    assert Image.open(images[0]).size == label.shape[::-1]


def test_upernet_trains_evaluates_and_tests(
    ade_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = Config.fromfile(DEMO)
    cfg.merge_from_dict({**SMALL, **_data_options(ade_root)})
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        for step in loader.dataset.pipeline:
            if step.type in ("RandomResize", "Resize"):
                step.scale = (256, 64)
            elif step.type == "RandomCrop":
                step.crop_size = (64, 64)
    cfg.work_dir = str(tmp_path / "train")
    cfg.train_cfg.update(max_iters=1, val_interval=1)
    cfg.param_scheduler = [dict(type="ConstantLR", factor=1.0, by_epoch=False)]
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=1)
    runner = Runner.from_cfg(cfg)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    assert runner.iter == 1
    after = runner.model.state_dict()
    assert any(not after[k].equal(v) for k, v in before.items() if k.startswith("backbone."))
    checkpoint = tmp_path / "train/iter_1.pth"
    assert checkpoint.is_file()

    from segmentation import test as seg_test

    options = {**SMALL, **_data_options(ade_root)}
    options["test_dataloader.dataset.pipeline.1.scale"] = (256, 64)
    cli = [f"{k}={v}".replace(" ", "") for k, v in options.items()]
    for extra in ([], ["--tta"]):
        out_json = tmp_path / f"metrics{len(extra)}.json"
        terminal = Terminal()  # on a terminal the test loop draws mmengine's progress bar
        monkeypatch.setattr(sys, "stderr", terminal)
        seg_test.main(
            [
                str(DEMO),
                str(checkpoint),
                "--work-dir",
                str(tmp_path / "test"),
                "--out-json",
                str(out_json),
                *extra,
                "--cfg-options",
                *cli,
            ]
        )
        miou = json.loads(out_json.read_text())["mIoU"]
        assert 0.0 <= miou <= 100.0
        assert "] 2/2, " in terminal.getvalue()  # the two val images


def test_demo_writes_png_with_prediction(ade_root: Path, tmp_path: Path) -> None:
    from segmentation import demo

    image = next((ade_root / "images/validation").glob("*.jpg"))
    cli = [f"{k}={v}".replace(" ", "") for k, v in SMALL.items()]
    out = demo.run(
        [str(image), str(DEMO), "--out", str(tmp_path / "seg.png"), "--cfg-options", *cli]
    )
    drawn = np.asarray(Image.open(out).convert("RGB"))
    original = np.asarray(Image.open(image).convert("RGB"))
    assert drawn.shape == original.shape
    assert not np.array_equal(drawn, original)  # every pixel gets a class colour blended in

"""Every published detection/segmentation config builds its model (on the meta device: no
memory, no weights) with the published parameter count, and carries the published recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

from mmdet.registry import MODELS as DET_MODELS
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS as SEG_MODELS

import detection.models  # noqa: F401
import segmentation.models  # noqa: F401

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Published parameter counts (millions, as rounded in the NAT/DiNAT READMEs).
PUBLISHED_PARAMS = {
    "mask_rcnn_nat_mini_3x_coco": 40,
    "mask_rcnn_nat_tiny_3x_coco": 48,
    "mask_rcnn_nat_small_3x_coco": 70,
    "mask_rcnn_dinat_mini_3x_coco": 40,
    "mask_rcnn_dinat_tiny_3x_coco": 48,
    "mask_rcnn_dinat_small_3x_coco": 70,
    "mask_rcnn_dinat_s_tiny_3x_coco": 48,
    "mask_rcnn_dinat_s_small_3x_coco": 69,
    "cascade_mask_rcnn_nat_mini_3x_coco": 77,
    "cascade_mask_rcnn_nat_tiny_3x_coco": 85,
    "cascade_mask_rcnn_nat_small_3x_coco": 108,
    "cascade_mask_rcnn_nat_base_3x_coco": 147,
    "cascade_mask_rcnn_dinat_mini_3x_coco": 77,
    "cascade_mask_rcnn_dinat_tiny_3x_coco": 85,
    "cascade_mask_rcnn_dinat_small_3x_coco": 108,
    "cascade_mask_rcnn_dinat_base_3x_coco": 147,
    "cascade_mask_rcnn_dinat_large_3x_coco": 258,
    "cascade_mask_rcnn_dinat_s_tiny_3x_coco": 86,
    "cascade_mask_rcnn_dinat_s_small_3x_coco": 107,
    "cascade_mask_rcnn_dinat_s_base_3x_coco": 145,
    "cascade_mask_rcnn_dinat_s_large_3x_coco": 253,
    "upernet_nat_mini_512x512_160k_ade20k": 50,
    "upernet_nat_tiny_512x512_160k_ade20k": 58,
    "upernet_nat_small_512x512_160k_ade20k": 82,
    "upernet_nat_base_512x512_160k_ade20k": 123,
    "upernet_dinat_mini_512x512_160k_ade20k": 50,
    "upernet_dinat_tiny_512x512_160k_ade20k": 58,
    "upernet_dinat_small_512x512_160k_ade20k": 82,
    "upernet_dinat_base_512x512_160k_ade20k": 123,
    "upernet_dinat_large_640x640_160k_ade20k": 238,
    "upernet_dinat_s_tiny_512x512_160k_ade20k": 60,
    "upernet_dinat_s_small_512x512_160k_ade20k": 81,
    "upernet_dinat_s_base_512x512_160k_ade20k": 121,
    "upernet_dinat_s_large_640x640_160k_ade20k": 234,
}
PUBLISHED = sorted(
    p
    for task in ("detection", "segmentation")
    for family in ("nat", "dinat", "dinat_s")
    for p in (CONFIGS / task / family).glob("*.py")
)
DEMOS = sorted((CONFIGS / "detection/demo").glob("*.py")) + sorted(
    (CONFIGS / "segmentation/demo").glob("*.py")
)


def test_every_published_combination_has_a_config() -> None:
    assert sorted(p.stem for p in PUBLISHED) == sorted(PUBLISHED_PARAMS)


def _build_on_meta(cfg: Config) -> torch.nn.Module:
    registry = DET_MODELS if cfg.default_scope == "mmdet" else SEG_MODELS
    with DefaultScope.overwrite_default_scope(cfg.default_scope), torch.device("meta"):
        return registry.build(cfg.model)


@pytest.mark.parametrize("path", PUBLISHED + DEMOS, ids=lambda p: p.stem)
def test_config_builds_its_model(path: Path) -> None:
    cfg = Config.fromfile(path)
    model = _build_on_meta(cfg)
    backbone = cfg.model.backbone
    assert type(model.backbone).__name__ == backbone.type
    assert len(model.backbone.stages) == 4
    if path.stem in PUBLISHED_PARAMS:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert round(params) == PUBLISHED_PARAMS[path.stem]
        assert backbone.init_cfg.type == "Pretrained"
        assert backbone.init_cfg.checkpoint.startswith("https://shi-labs.com/projects/")


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.stem)
def test_published_recipe(path: Path) -> None:
    cfg = Config.fromfile(path)
    name = path.stem
    wrapper = cfg.optim_wrapper
    assert wrapper.optimizer.type == "AdamW"
    assert wrapper.paramwise_cfg.custom_keys == {
        "rpb": {"decay_mult": 0.0},
        "norm": {"decay_mult": 0.0},
    }
    large_fp32 = "_dinat_large_" in name  # trained in float32 upstream
    assert wrapper.type == ("OptimWrapper" if large_fp32 else "AmpOptimWrapper")
    if name.startswith(("mask_rcnn", "cascade")):
        lr = {"dinat_base": 7.5e-5, "dinat_large": 7.5e-5, "dinat_s_base": 7.5e-5}
        lr["dinat_s_large"] = 5e-5
        variant = name.split("rcnn_")[1].replace("_3x_coco", "")
        assert wrapper.optimizer.lr == lr.get(variant, 1e-4)
        assert wrapper.optimizer.weight_decay == 0.05
        assert cfg.train_cfg.max_epochs == 36
        # RPN anchors across the border: ignored by the original Cascade configs, kept by Mask R-CNN
        assert cfg.model.train_cfg.rpn.allowed_border == (0 if name.startswith("cascade") else -1)
        warmup, steps = cfg.param_scheduler
        assert (warmup.type, warmup.end, warmup.by_epoch) == ("LinearLR", 500, False)
        assert steps.milestones == [27, 33]
        assert cfg.train_dataloader.batch_size * 8 == 16
        choice = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == "RandomChoice"]
        assert len(choice) == 1 and len(choice[0].transforms) == 2
        assert cfg.test_dataloader.dataset.pipeline[1].scale == (1333, 800)
        assert set(cfg.val_evaluator.metric) == {"bbox", "segm"}
    else:
        assert wrapper.optimizer.lr == 6e-5 and wrapper.optimizer.weight_decay == 0.01
        assert cfg.train_cfg.max_iters == 160000
        warmup, poly = cfg.param_scheduler
        assert (warmup.type, warmup.end, poly.type, poly.power) == ("LinearLR", 1500, "PolyLR", 1.0)
        assert (warmup.begin, poly.begin, poly.end) == (0, 0, 160000)  # warmup on top of the decay
        assert cfg.model.auxiliary_head.in_index == 2 and cfg.model.decode_head.channels == 512
        assert cfg.model.auxiliary_head.loss_decode.loss_weight == 0.4
        size = 640 if "640x640" in name else 512
        crop = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == "RandomCrop"]
        assert crop[0].crop_size == (size, size)
        assert cfg.model.data_preprocessor.size == (size, size)
        assert cfg.test_dataloader.dataset.pipeline[1].scale == (4 * size, size)
        assert cfg.train_dataloader.batch_size * 8 == 16


def test_drop_path_and_dilations_per_config() -> None:
    def backbone(rel: str):
        return Config.fromfile(CONFIGS / rel).model.backbone

    # drop path differs between tasks for the same backbone (spec §5)
    assert backbone("detection/nat/mask_rcnn_nat_tiny_3x_coco.py").drop_path_rate == 0.2
    assert backbone("detection/nat/cascade_mask_rcnn_nat_tiny_3x_coco.py").drop_path_rate == 0.3
    assert (
        backbone("segmentation/nat/upernet_nat_tiny_512x512_160k_ade20k.py").drop_path_rate == 0.3
    )
    det = backbone("detection/dinat/mask_rcnn_dinat_mini_3x_coco.py").dilations
    assert det == [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7], [1, 3, 1, 3, 1]]
    tiny = backbone("detection/dinat/cascade_mask_rcnn_dinat_tiny_3x_coco.py").dilations
    assert tiny[2] == [1, 3, 1, 5, 1, 7] * 3
    seg = backbone("segmentation/dinat/upernet_dinat_large_640x640_160k_ade20k.py").dilations
    assert seg[:2] == [[1, 20, 1], [1, 5, 1, 10]] and len(seg[2]) == 18
    assert backbone("detection/nat/mask_rcnn_nat_small_3x_coco.py").layer_scale == 1e-5


def test_rpb_and_norm_parameters_get_no_weight_decay() -> None:
    from mmengine.optim import build_optim_wrapper

    cfg = Config.fromfile(CONFIGS / "segmentation/demo/upernet_nat_mini_demo.py")
    cfg.model.backbone.update(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8])
    cfg.model.decode_head.update(in_channels=[16, 32, 64, 128], channels=16)
    cfg.model.auxiliary_head.update(in_channels=64, channels=16)
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = SEG_MODELS.build(cfg.model)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g["weight_decay"] for g in wrapper.optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert decay[id(names["backbone.levels.0.blocks.0.attn.rpb"])] == 0.0
    assert decay[id(names["backbone.norm2.weight"])] == 0.0
    assert decay[id(names["backbone.levels.1.downsample.norm.weight"])] == 0.0
    assert decay[id(names["backbone.levels.0.blocks.0.attn.qkv.weight"])] == 0.01

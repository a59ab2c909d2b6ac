"""Detect objects in one image and write a PNG with the boxes, masks and labels drawn.

python -m detection.demo IMAGE CONFIG [--checkpoint CKPT] --out result.png [--score-thr 0.3]
"""

from __future__ import annotations

import importlib
import uuid
from pathlib import Path

from detection.runner_cli import dataset_meta, demo_parser, save_png


def run(argv: list[str] | None = None) -> Path:
    """Run the demo; returns the written PNG's path."""
    parser = demo_parser(__doc__.splitlines()[0])
    parser.add_argument("--score-thr", type=float, default=0.3, help="draw scores above this")
    args = parser.parse_args(argv)
    if not 0.0 <= args.score_thr <= 1.0:
        parser.error(f"--score-thr must be in [0, 1], got {args.score_thr}")

    importlib.import_module("detection.models")  # mmcv-lite setup + NAT backbones, first
    import mmcv
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import DATASETS, VISUALIZERS
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.checkpoint is None:
        cfg.model.backbone.init_cfg = None  # no download for a random-weights run
    model = init_detector(cfg, args.checkpoint, device=args.device)
    if args.checkpoint is None:
        model.dataset_meta = dataset_meta(cfg, DATASETS)
    result = inference_detector(model, args.image)

    vis_cfg = cfg.visualizer.copy()
    vis_cfg.name = f"natzoo_demo_{uuid.uuid4().hex}"
    visualizer = VISUALIZERS.build(vis_cfg)
    visualizer.dataset_meta = model.dataset_meta
    image = mmcv.imread(args.image, channel_order="rgb")
    visualizer.add_datasample(
        "result", image, data_sample=result, draw_gt=False, pred_score_thr=args.score_thr
    )
    out = save_png(args.out, visualizer.get_image())
    kept = int((result.pred_instances.scores > args.score_thr).sum())
    print(f"{kept} detections above {args.score_thr} drawn to {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()

"""Segment one image and write a PNG with the predicted classes overlaid.

python -m segmentation.demo IMAGE CONFIG [--checkpoint CKPT] --out result.png [--opacity 0.5]
"""

from __future__ import annotations

import importlib
import uuid
from pathlib import Path

from detection.runner_cli import dataset_meta, demo_parser, save_png


def run(argv: list[str] | None = None) -> Path:
    """Run the demo; returns the written PNG's path."""
    parser = demo_parser(__doc__.splitlines()[0])
    parser.add_argument("--opacity", type=float, default=0.5, help="overlay opacity in (0, 1]")
    args = parser.parse_args(argv)
    if not 0.0 < args.opacity <= 1.0:
        parser.error(f"--opacity must be in (0, 1], got {args.opacity}")

    importlib.import_module("segmentation.models")  # mmcv-lite setup + NAT backbones, first
    import mmcv
    from mmengine.config import Config
    from mmseg.apis import inference_model, init_model
    from mmseg.registry import DATASETS, VISUALIZERS

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.checkpoint is None:
        cfg.model.backbone.init_cfg = None  # no download for a random-weights run
    model = init_model(cfg, args.checkpoint, device=args.device)
    if args.checkpoint is None or not getattr(model, "dataset_meta", None):
        model.dataset_meta = dataset_meta(cfg, DATASETS)
    result = inference_model(model, args.image)

    vis_cfg = cfg.visualizer.copy()
    vis_cfg.name = f"natzoo_demo_{uuid.uuid4().hex}"
    vis_cfg.alpha = args.opacity
    visualizer = VISUALIZERS.build(vis_cfg)
    visualizer.dataset_meta = model.dataset_meta
    image = mmcv.imread(args.image, channel_order="rgb")
    visualizer.add_datasample("result", image, data_sample=result, draw_gt=False)
    out = save_png(args.out, visualizer.get_image())
    labels = sorted(int(v) for v in result.pred_sem_seg.data.unique())
    print(f"predicted classes {labels} drawn to {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()

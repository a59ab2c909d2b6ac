"""Train / test command lines on mmengine's Runner, shared by :mod:`detection` and
:mod:`segmentation` (each passes the module that registers its models).

Single process: ``python -m detection.train CONFIG``; several GPUs:
``torchrun --nproc_per_node=N -m detection.train CONFIG`` (the launcher is picked from torchrun's
environment unless ``--launcher`` says otherwise).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmengine.config import Config, DictAction


def _default_launcher() -> str:
    return "pytorch" if "WORLD_SIZE" in os.environ else "none"


def _common_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", help="config file (mmengine Python format)")
    parser.add_argument("--work-dir", help="folder for logs and checkpoints")
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config entries, e.g. train_dataloader.batch_size=4",
    )
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm", "mpi"],
        default=None,
        help="job launcher (default: 'pytorch' under torchrun, else 'none')",
    )
    return parser


def load_config(args: argparse.Namespace, registry_module: str) -> Config:
    """Import ``registry_module`` (mmcv-lite setup + backbone registration), read the config,
    apply ``--cfg-options``, the launcher and the work dir (default ``work_dirs/<config name>``)."""
    importlib.import_module(registry_module)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher or _default_launcher()
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = str(Path("work_dirs") / Path(args.config).stem)
    return cfg


def _setup_cpu_distributed(cfg: Config) -> None:
    """torchrun without CUDA: mmengine's pytorch launcher calls ``torch.cuda.set_device`` and
    wraps the model in DDP with ``device_ids=[LOCAL_RANK]``, both of which fail on CPU. Join
    the process group here (Gloo, as NCCL needs CUDA; mmengine then keeps it) and wrap
    without device ids."""
    import torch
    import torch.distributed as dist

    if cfg.launcher != "pytorch" or torch.cuda.is_available() or dist.is_initialized():
        return
    if "RANK" not in os.environ:  # not under torchrun: mmengine reports the missing variables
        return
    env = cfg.setdefault("env_cfg", {})
    options = dict(env.get("dist_cfg") or {})
    backend = options.pop("backend", "gloo")
    if backend == "nccl":
        backend = env.setdefault("dist_cfg", {})["backend"] = "gloo"
    if options.get("timeout") is not None:
        options["timeout"] = datetime.timedelta(seconds=options["timeout"])
    dist.init_process_group(backend=backend, **options)
    wrapper = cfg.get("model_wrapper_cfg") or dict(
        type="MMDistributedDataParallel",
        broadcast_buffers=False,
        find_unused_parameters=cfg.get("find_unused_parameters", False),
    )
    if wrapper.get("type", "MMDistributedDataParallel") == "MMDistributedDataParallel":
        wrapper["device_ids"] = None
    cfg.model_wrapper_cfg = wrapper


def _run_reporting_file_errors(prog: str, action: Callable[[], Any]) -> Any:
    """action(); a backbone weights file that cannot be read (init_cfg Pretrained) ends the
    command with a one-line error naming it and exit status 2."""
    from classification.checkpoint import CheckpointFileError

    try:
        return action()
    except CheckpointFileError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _runner(cfg: Config) -> Any:
    """mmengine's Runner for ``cfg``, with a progress bar over its test and validation loops on
    a terminal (:class:`detection.progress_hook.EvalProgressHook`)."""
    from mmengine.runner import Runner

    from detection.progress_hook import EvalProgressHook

    runner = Runner.from_cfg(cfg)
    runner.register_hook(EvalProgressHook())
    return runner


def _set_amp(cfg: Config, enabled: bool) -> None:
    wrapper = cfg.optim_wrapper
    if enabled:
        wrapper.type = "AmpOptimWrapper"
        wrapper.setdefault("loss_scale", "dynamic")
    else:
        wrapper.type = "OptimWrapper"
        for key in ("loss_scale", "dtype"):
            wrapper.pop(key, None)


def train(argv: list[str] | None, registry_module: str, description: str) -> None:
    """Entry point of ``detection.train`` / ``segmentation.train``."""
    parser = _common_parser(description)
    amp = parser.add_mutually_exclusive_group()
    amp.add_argument("--amp", action="store_true", help="float16 mixed precision (CUDA)")
    amp.add_argument("--no-amp", action="store_true", help="full precision (e.g. on CPU)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="resume from the latest checkpoint in the work dir, or from the given one",
    )
    parser.add_argument(
        "--auto-scale-lr",
        action="store_true",
        help="scale the lr by the actual total batch size over the config's base batch size",
    )
    args = parser.parse_args(argv)
    cfg = load_config(args, registry_module)
    if args.amp or args.no_amp:
        _set_amp(cfg, enabled=args.amp)
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if args.auto_scale_lr:
        if "auto_scale_lr" not in cfg:
            raise SystemExit("--auto-scale-lr: the config defines no auto_scale_lr.base_batch_size")
        cfg.auto_scale_lr.enable = True

    _setup_cpu_distributed(cfg)
    _run_reporting_file_errors(parser.prog, lambda: _runner(cfg).train())


def test(
    argv: list[str] | None, registry_module: str, description: str, with_tta: bool = False
) -> dict[str, Any]:
    """Entry point of ``detection.test`` / ``segmentation.test``: evaluates a checkpoint with
    the config's test evaluator, prints the metrics as JSON and returns them."""
    parser = _common_parser(description)
    parser.add_argument("checkpoint", help="checkpoint file or URL")
    parser.add_argument("--out-json", help="also write the metrics to this JSON file")
    if with_tta:
        parser.add_argument(
            "--tta", action="store_true", help="multi-scale + flip test (the config's tta_*)"
        )
    args = parser.parse_args(argv)
    cfg = load_config(args, registry_module)
    cfg.load_from = args.checkpoint
    if with_tta and args.tta:
        if "tta_model" not in cfg or "tta_pipeline" not in cfg:
            raise SystemExit("--tta: the config defines no tta_model / tta_pipeline")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    _setup_cpu_distributed(cfg)
    metrics = _run_reporting_file_errors(parser.prog, lambda: _runner(cfg).test())
    plain = {k: v if isinstance(v, str) else float(v) for k, v in metrics.items()}
    text = json.dumps(plain, indent=2, sort_keys=True)
    print(text)
    if args.out_json:
        from detection.demo_shapes import write_bytes_atomic

        write_bytes_atomic(Path(args.out_json), text.encode())
    return metrics


def dataset_meta(cfg: Config, datasets: Any) -> dict[str, Any]:
    """Class names and palette of the config's test dataset: its ``metainfo`` override over the
    dataset class's ``METAINFO`` (``datasets`` is mmdet's or mmseg's DATASETS registry)."""
    dataset_cfg = cfg.test_dataloader.dataset
    meta = dict(getattr(datasets.get(dataset_cfg.type), "METAINFO", {}))
    meta.update(dataset_cfg.get("metainfo") or {})
    return meta


def demo_parser(description: str) -> argparse.ArgumentParser:
    """Arguments of the image demos: image, config, checkpoint (optional), output PNG, device."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("image", help="input image file")
    parser.add_argument("config", help="config file")
    parser.add_argument("--checkpoint", help="weights (path or URL); random weights if omitted")
    parser.add_argument("--out", required=True, help="output PNG with the predictions drawn")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override config entries"
    )
    return parser


def save_png(path: str | Path, rgb: Any) -> Path:
    """Write an RGB uint8 array as PNG atomically; returns the path."""
    from detection.demo_shapes import save_image_atomic

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {path}")
    save_image_atomic(path, rgb)
    return path

"""nat-validate: top-1 / top-5, loss and throughput of a model on an ImageNet-style val split.

    nat-validate --model nat_tiny --pretrained --data /data/imagenet
    nat-validate --model nat_tiny --checkpoint runs/nat_tiny/best.pth --data /data/imagenet
    nat-validate --checkpoint runs/demo/best.pth --data demo_data   # model from the checkpoint

Checkpoints: nat-train checkpoints (EMA weights with --ema), the published state dicts, the
Hugging Face layout, safetensors: whatever the zoo's checkpoint filter reads.

An image that cannot be decoded stops the run with its name (no other image is counted in its
place); --skip-corrupt leaves such images out of the metrics instead and lists them at the end."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config

from .atomic import atomic_write
from .checkpoint import CheckpointFileError, check_fit, read_checkpoint, unwrap_state_dict
from .pretrained import WeightsDownloadError
from .training.data import (
    SYNTHETIC,
    SyntheticDataset,
    checked_loader,
    eval_transform,
    find_split,
    image_folder,
    resolve_workers,
)
from .training.engine import autocast_for, evaluate
from .training.model import check_model_kwargs, register_zoo
from .training.progress import Progress
from .training.state import FORMAT, CheckpointError, checkpoint_config

__all__ = ["main", "validate"]


def _load(path: Path) -> Any:
    try:
        return read_checkpoint(path)
    except CheckpointFileError as err:
        raise CheckpointFileError(f"--checkpoint: {err}") from err


def _state_dict(path: Path, ckpt: Any) -> dict[str, torch.Tensor]:
    try:
        return unwrap_state_dict(ckpt)
    except (TypeError, ValueError) as err:
        raise CheckpointFileError(f"--checkpoint {path} holds no state dict ({err})") from err


def build_for_validation(args: argparse.Namespace, num_classes: int | None):
    """(model, model name, data hints) from --model / --checkpoint / --pretrained; the hints are
    a nat-train checkpoint's evaluation settings (size, crop, interpolation, mean, std) and its
    class names ("classes"). A checkpoint's config is validated and its model kwargs must be
    the model's own hyper-parameters, like --model-kwargs."""
    register_zoo()
    hints: dict[str, Any] = {}
    kwargs: dict[str, Any] = json.loads(args.model_kwargs) if args.model_kwargs else {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model-kwargs must be a JSON object, got {args.model_kwargs}")
    where = "--model-kwargs"
    name = args.model
    state_dict = None
    if args.checkpoint:
        path = Path(args.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint: file not found: {path}")
        ckpt = _load(path)
        if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:  # a nat-train checkpoint
            cfg = checkpoint_config(ckpt, path)
            hints = {
                k: cfg["data"][k] for k in ("img_size", "crop_pct", "interpolation", "mean", "std")
            }
            hints["classes"] = ckpt.get("classes")
            name = name or cfg["model"]["name"]
            if name == cfg["model"]["name"] and not args.model_kwargs:
                kwargs = dict(cfg["model"]["kwargs"])
                where = f"--checkpoint {path}: model.kwargs"
            num_classes = num_classes or ckpt.get("num_classes")
            use_ema = args.ema and ckpt.get("ema") is not None
            if args.ema and not use_ema:
                print("--ema: the checkpoint has no EMA weights; using the model's", flush=True)
            state_dict = ckpt["ema"] if use_ema else ckpt["model"]
    if not name:
        raise ValueError("--model is required (unless --checkpoint is a nat-train checkpoint)")
    if not timm.is_model(name):
        raise ValueError(f"--model: unknown model {name!r}")
    check_model_kwargs(name, kwargs, None, where)
    create: dict[str, Any] = dict(kwargs)
    if num_classes is not None:
        create["num_classes"] = num_classes
    if args.checkpoint and state_dict is None:
        # any other format goes through the model's own pretrained loader and filter
        create["pretrained_cfg_overlay"] = {"state_dict": _state_dict(path, ckpt)}
        # timm drops a head whose size differs from the pretrained cfg's: say the file's size
        head = args.checkpoint_num_classes or num_classes
        if head:
            create["pretrained_cfg_overlay"]["num_classes"] = head
        model = timm.create_model(name, pretrained=True, **create)
    else:
        model = timm.create_model(name, pretrained=args.pretrained, **create)
        if state_dict is not None:
            hint = "give the --model it was trained with, or leave --model out"
            try:
                state_dict = check_fit(state_dict, model, True, str(path), hint)
            except CheckpointFileError as err:
                raise CheckpointFileError(f"--checkpoint: {err}") from err
            model.load_state_dict(state_dict)
    return model, name, hints


def _check_writable(path: str | None, option: str = "--results-file") -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, or one whose
    nearest existing parent is not a writable folder."""
    if not path:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{option} {path} is a folder, not a file")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {path} cannot be written: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (
        target.exists() and not os.access(target, os.W_OK)
    ):
        raise ValueError(f"{option} {path} cannot be written: {parent} is not writable")


def validate(args: argparse.Namespace) -> dict[str, Any]:
    _check_writable(args.results_file)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    synthetic = args.data == SYNTHETIC
    val_dir = None if synthetic else find_split(args.data, args.split)
    classes = sum(1 for p in val_dir.iterdir() if p.is_dir()) if val_dir is not None else 0
    model, name, hints = build_for_validation(args, args.num_classes)
    model = model.to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data_cfg = resolve_data_config({}, model=model)
    img_size = args.img_size or hints.get("img_size") or data_cfg["input_size"][-1]
    crop_pct = args.crop_pct or hints.get("crop_pct") or data_cfg["crop_pct"]
    interpolation = args.interpolation or hints.get("interpolation") or data_cfg["interpolation"]
    mean, std = hints.get("mean", data_cfg["mean"]), hints.get("std", data_cfg["std"])
    num_classes = model.num_classes if hasattr(model, "num_classes") else None
    absent: list[str] = []
    if synthetic:
        dataset = SyntheticDataset(args.synthetic_size, num_classes or 1000, img_size)
    elif hints.get("classes"):  # the labels the model was trained with, by name
        transform = eval_transform(img_size, crop_pct, interpolation, mean, std)
        trained = {c: i for i, c in enumerate(hints["classes"])}
        dataset = image_folder(
            val_dir,
            transform,
            trained,
            args.follow_symlinks,
            f"the checkpoint {args.checkpoint}",
            _FOLLOW,
        )
        absent = list(dataset.missing_classes)
    else:
        transform = eval_transform(img_size, crop_pct, interpolation, mean, std)
        dataset = image_folder(
            val_dir, transform, follow_symlinks=args.follow_symlinks, follow_option=_FOLLOW
        )
        if classes and num_classes and classes > num_classes:
            raise ValueError(
                f"--data: {classes} class folders but the model has {num_classes} "
                f"outputs (set --num-classes)"
            )
        if classes and num_classes and classes < num_classes:
            print(
                f"nat-validate: warning: --data has {classes} class folders, the model "
                f"{num_classes} classes: labels are the folders' indices 0-{classes - 1} in "
                f"sorted order, so the metrics mean something only if those are the model's "
                f"first {classes} classes",
                file=sys.stderr,
                flush=True,
            )
    loader = checked_loader(
        dataset,
        skip=args.skip_corrupt,
        batch_size=args.batch_size,
        num_workers=resolve_workers(args.workers, device.type),
        pin_memory=device.type == "cuda",
    )
    if args.compile:
        model = torch.compile(model)
    first = next(iter(loader), None)
    if first is None:
        raise ValueError(f"--data: no readable image in {val_dir}")
    with torch.no_grad(), autocast_for(device, args.amp):  # warm-up batch (kernels, compile)
        model(first[0][: args.batch_size].to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with Progress(len(loader), "validate") as progress:  # a bar on a terminal, else quiet lines
        metrics = evaluate(model, loader, device, args.amp, args.channels_last, progress)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    result = {
        "model": name,
        "checkpoint": args.checkpoint,
        "data": str(args.data),
        "img_size": img_size,
        "crop_pct": crop_pct,
        "interpolation": interpolation,
        "top1": round(metrics["top1"], 3),
        "top5": round(metrics["top5"], 3),
        "loss": round(metrics["loss"], 5),
        "images": metrics["count"],
        "skipped": [image.path for image in loader.skipped],
        "absent_classes": absent,
        "skipped_folders": _skipped_folders(dataset),
        "images_per_s": round(metrics["count"] / elapsed, 1),
        "device": str(device),
        "amp": args.amp,
    }
    return result


_FOLLOW = "--follow-symlinks"


def _skipped_folders(dataset: Any) -> str | None:
    scan = getattr(dataset, "scan", None)
    return scan.skipped_message(_FOLLOW) if scan is not None else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nat-validate", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--model", help="model name (default: the nat-train checkpoint's)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="weights file (any format the zoo loads)")
    src.add_argument("--pretrained", action="store_true", help="the published weights")
    p.add_argument(
        "--data", required=True, help="dataset root (or its val folder's parent), or 'synthetic'"
    )
    p.add_argument("--split", default="val", help="split folder under --data (default val)")
    p.add_argument("--ema", action="store_true", help="use a nat-train checkpoint's EMA weights")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: checkpoint's)")
    p.add_argument(
        "--checkpoint-num-classes",
        type=int,
        help="head size stored in --checkpoint when it differs from --num-classes",
    )
    p.add_argument("--model-kwargs", help="JSON of constructor kwargs, e.g. '{\"embed_dim\": 32}'")
    p.add_argument("--img-size", type=int, help="input size (default: the model's)")
    p.add_argument("--crop-pct", type=float, help="centre-crop fraction (default: the model's)")
    p.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"))
    p.add_argument("--batch-size", "-b", type=int, default=128)
    p.add_argument(
        "--workers",
        "-j",
        default="auto",
        help="data loader processes, or auto (default): sized to the machine as nat-train does",
    )
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default="none")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--synthetic-size", type=int, default=1024, help="images with --data synthetic")
    p.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="enter symlinked folders of the dataset (never one leading back into it)",
    )
    p.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="leave images that cannot be decoded out of the metrics (listed at the end) "
        "instead of stopping",
    )
    p.add_argument("--results-file", help="also write the result as JSON here")
    args = p.parse_args(argv)
    for name, high in _BOUNDS.items():
        value = getattr(args, name)
        if value is not None and not 1 <= value <= high:
            p.error(f"--{name.replace('_', '-')} must be in [1, {high}], got {value}")
    if args.workers != "auto":
        workers = int(args.workers) if args.workers.isdigit() else -1
        if not 0 <= workers <= 64:
            p.error(f"--workers must be auto or an int in [0, 64], got {args.workers!r}")
        args.workers = workers
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        p.error(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
    return args


# upper bounds of the size arguments (the training config's)
_BOUNDS = {
    "batch_size": 16384,
    "synthetic_size": 10_000_000,
    "img_size": 4096,
    "num_classes": 1_000_000,
    "checkpoint_num_classes": 1_000_000,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = validate(args)
    except (CheckpointError, OSError, ValueError, RuntimeError, WeightsDownloadError) as err:
        print(f"nat-validate: error: {err}", file=sys.stderr)
        return 2
    print(
        f"{result['model']}: top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  "
        f"loss {result['loss']:.4f}  ({result['images']} images, "
        f"{result['images_per_s']:.1f} img/s on {result['device']})"
    )
    if result["absent_classes"]:
        absent = result["absent_classes"]
        shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
        print(
            f"note: {len(absent)} of the checkpoint's classes have no images in {args.data}: "
            f"{shown} (the others keep the checkpoint's labels)"
        )
    if result["skipped_folders"]:
        print(result["skipped_folders"])
    if result["skipped"]:
        shown = ", ".join(result["skipped"][:5]) + (", ..." if len(result["skipped"]) > 5 else "")
        print(
            f"skipped {len(result['skipped'])} image(s) that cannot be decoded, left out of the "
            f"metrics: {shown}"
        )
    if args.results_file:
        text = json.dumps(result, indent=2)
        try:
            atomic_write(args.results_file, lambda f: f.write(text.encode()))
        except OSError as err:
            print(
                f"nat-validate: error: --results-file {args.results_file} cannot be written: "
                f"{err.strerror or err}",
                file=sys.stderr,
            )
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

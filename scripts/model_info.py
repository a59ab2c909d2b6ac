#!/usr/bin/env python
"""Print parameters, MACs (fvcore, natten_ext.flops) and throughput of zoo models.

    python scripts/model_info.py nat_tiny 'dinat_s_*' [--img-size 224] [--batch-size 64]
        [--device cuda] [--amp bf16] [--iters 20] [--no-macs] [--no-throughput]

Names may be timm wildcards. The resolution defaults to each model's pretrained input size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm
import torch

import classification  # noqa: F401  (registers the models)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("models", nargs="+", help="model names or wildcards (e.g. 'dinat_*')")
    p.add_argument("--img-size", type=int, help="square input size (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32, help="throughput batch size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--iters", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations")
    p.add_argument("--no-macs", action="store_true", help="skip the fvcore MAC count")
    p.add_argument("--no-throughput", action="store_true", help="skip the timing")
    args = p.parse_args(argv)
    for name in ("batch_size", "iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.img_size is not None and args.img_size < 16:
        p.error("--img-size must be >= 16")
    return args


def resolve_models(patterns: list[str]) -> list[str]:
    names: list[str] = []
    for pattern in patterns:
        found = timm.list_models(pattern)
        if not found:
            raise SystemExit(f"no registered model matches {pattern!r}")
        names += [n for n in found if n not in names]
    return names


@torch.no_grad()
def throughput(model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> float:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    dev = torch.device(args.device)

    def step() -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            model(x)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    return args.iters * x.shape[0] / (time.perf_counter() - start)


def describe(name: str, args: argparse.Namespace) -> dict[str, float | str]:
    model = timm.create_model(name).eval()
    size = args.img_size or model.pretrained_cfg["input_size"][-1]
    row: dict[str, float | str] = {
        "model": name,
        "res": size,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if not args.no_macs:
        from natten_ext.flops import get_flops

        row["GMACs"] = get_flops(model, torch.randn(1, 3, size, size)) / 1e9
    if not args.no_throughput:
        model = model.to(args.device)
        x = torch.randn(args.batch_size, 3, size, size, device=args.device)
        row["img_per_s"] = throughput(model, x, args)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in resolve_models(args.models):
        row = describe(name, args)
        print(
            "  ".join(
                f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

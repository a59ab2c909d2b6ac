"""CPU benchmark: inference latency of NAT/DiNAT against timm's Swin-T and ConvNeXt-T, and the
demo model's training speed, per neighborhood-attention backend, all in one process.

Inference: 224 px, float32, ``torch.inference_mode``, batch 1 and 8; the median of ``--reps``
timed calls after a warm-up. Training: the demo configuration's model (configs/classification/
demo.yaml: a slimmed nat_mini at 32 px) for ``--train-steps`` AdamW steps on random tensors,
images/s. NAT/DiNAT rows run once per backend given in ``--backends`` (default: the automatic
choice, which is ``tiled`` on CPU, and ``reference``, the previous CPU path).

Usage: python scripts/bench_cpu.py [--models nat_tiny,dinat_tiny,swin_tiny_patch4_window7_224,
    convnext_tiny] [--batches 1,8] [--reps 5] [--threads N] [--backends auto,reference]
    [--train-steps 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm

import classification  # noqa: F401  (registers the zoo with timm)
import natten_ext
from classification.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
ZOO_PREFIXES = ("nat_", "dinat_")


def backend_context(name: str):
    return contextlib.nullcontext() if name == "auto" else natten_ext.use_backend(name)


def time_inference(model, batch: int, reps: int) -> float:
    """Median milliseconds of one forward pass."""
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def time_demo_training(steps: int) -> float:
    """Images/s of the demo model's training steps (after 3 warm-up steps)."""
    cfg = load_config(ROOT / "configs" / "classification" / "demo.yaml")
    m = cfg["model"]
    kwargs = dict(m.get("kwargs") or {})
    model = timm.create_model(m["name"], num_classes=10, drop_path_rate=m["drop_path_rate"],
                              **kwargs)  # fmt: skip
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    size, batch = cfg["data"]["img_size"], cfg["data"]["batch_size"]
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="nat_tiny,dinat_tiny,swin_tiny_patch4_window7_224,"
                   "convnext_tiny")  # fmt: skip
    p.add_argument("--batches", default="1,8")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--backends", default="auto,reference")
    p.add_argument("--train-steps", type=int, default=30, help="0 skips the training rows")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps must be >= 1, got {args.reps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = args.backends.split(",")
    unknown = [b for b in backends if b != "auto" and b not in natten_ext.available_backends()]
    if unknown:
        p.error(f"--backends: {unknown} not available; choose from auto, "
                f"{', '.join(natten_ext.available_backends())}")  # fmt: skip
    batches = [int(b) for b in args.batches.split(",")]
    print(f"# CPU, {torch.get_num_threads()} threads | torch {torch.__version__} | "
          f"timm {timm.__version__}", flush=True)  # fmt: skip
    rows = []
    for name in args.models.split(","):
        model = timm.create_model(name).eval()
        for backend in backends if name.startswith(ZOO_PREFIXES) else ["-"]:
            with backend_context("auto" if backend == "-" else backend):
                ms = [time_inference(model, b, args.reps) for b in batches]
            rows.append({"model": name, "backend": backend, "ms": dict(zip(batches, ms))})
            print(f"{name:30s} {backend:10s} " + "  ".join(
                f"batch {b}: {t:8.1f} ms" for b, t in zip(batches, ms)), flush=True)  # fmt: skip
    train = []
    if args.train_steps:
        for backend in backends:
            with backend_context(backend):
                rate = time_demo_training(args.train_steps)
            train.append({"backend": backend, "images_per_s": rate})
            print(f"demo training ({backend}): {rate:.0f} img/s", flush=True)
    head = " | ".join(f"batch {b} (ms)" for b in batches)
    print(f"\n| model | backend | {head} |\n|---|---|" + "---|" * len(batches))
    for r in rows:
        print(f"| {r['model']} | {r['backend']} | " + " | ".join(
            f"{r['ms'][b]:.0f}" for b in batches) + " |")  # fmt: skip
    for t in train:
        print(f"\ndemo training, backend {t['backend']}: {t['images_per_s']:.0f} img/s")
    if args.json:
        args.json.write_text(json.dumps({"inference": rows, "training": train}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU benchmark: inference latency of NAT/DiNAT against timm's Swin-T and ConvNeXt-T, and the
demo model's training speed, per neighborhood-attention backend, all in one process.

Inference: 224 px, float32, ``torch.inference_mode``, batch 1 and 8; the median of ``--reps``
timed calls after a warm-up, the cases interleaved (one call of each per round, so that a slow
spell of the machine hits every case alike). Training: the demo configuration's model
(configs/classification/demo.yaml: a slimmed nat_mini at 32 px) for ``--train-steps`` AdamW steps
on random tensors, images/s. NAT/DiNAT rows run once per backend given in ``--backends``
(default: the automatic choice, which is ``cpu``, the C kernel, where a C compiler is found, and
``tiled``, the plain-PyTorch path before it); ``cpu-pythreads`` is the C kernel with its rows split
on Python threads instead of OpenMP's (``NATTEN_EXT_CPU_OPENMP=0``).

``--linears`` picks how the Linear layers run, one row per choice: ``shipped``, every model as
it ships (the zoo's ``FastLinear`` layers on oneDNN, timm's ``nn.Linear`` on PyTorch's GEMM);
``aten``, the zoo's layers on PyTorch's GEMM too (``NATTEN_EXT_CPU_LINEAR=0``); ``onednn``, timm's
models with their ``nn.Linear`` layers turned into ``FastLinear`` (same parameters), what they
would gain from the same change.

``--ops`` times the operator alone instead: inference and forward+backward of one call at each
of NAT-Tiny's and DiNAT-Tiny's level shapes (head_dim 32, kernel 7, RPB, q/k/v as views of one
qkv tensor), per backend, interleaved, minimum of ``--reps`` calls.

Usage: python scripts/bench_cpu.py [--models nat_tiny,dinat_tiny,swin_tiny_patch4_window7_224,
    convnext_tiny] [--batches 1,8] [--reps 5] [--threads N]
    [--backends auto,tiled,cpu-pythreads,reference]
    [--linears shipped,aten,onednn] [--train-steps 30] [--ops] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
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
from classification.layers import linear as fast_linear
from classification.training.config import load_config
from natten_ext.backends import cpu as cpu_backend

ROOT = Path(__file__).resolve().parents[1]
ZOO_PREFIXES = ("nat_", "dinat_")


PYTHREADS = "cpu-pythreads"  # the cpu backend with rows split on Python threads, not OpenMP
LINEARS = ("shipped", "aten", "onednn")


@contextlib.contextmanager
def backend_context(name: str):
    if name == "auto":
        yield
        return
    saved = cpu_backend._OPENMP
    cpu_backend._OPENMP = name != PYTHREADS
    try:
        with natten_ext.use_backend("cpu" if name == PYTHREADS else name):
            yield
    finally:
        cpu_backend._OPENMP = saved


@contextlib.contextmanager
def linear_context(variant: str):
    """``aten``: the zoo's ``FastLinear`` layers take PyTorch's GEMM (their oneDNN path off)."""
    saved = fast_linear._ONEDNN
    fast_linear._ONEDNN = saved and variant != "aten"
    try:
        yield
    finally:
        fast_linear._ONEDNN = saved


def with_fast_linears(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a timm model whose ``nn.Linear`` layers are ``FastLinear`` ones."""
    return fast_linear.use_fast_linears(copy.deepcopy(model))


def interleaved(calls: list[tuple], reps: int) -> list[list[float]]:
    """Seconds of ``reps`` calls of every ``(backend, linears, fn)``, one of each per round after
    a warm-up round, so that a slow spell of the machine hits every case alike."""
    times: list[list[float]] = [[] for _ in calls]
    for round_ in range(reps + 1):
        for (backend, linears, fn), out in zip(calls, times):
            with backend_context(backend), linear_context(linears):
                t0 = time.perf_counter()
                fn()
                if round_:
                    out.append(time.perf_counter() - t0)
    return times


def time_inference(cases: list[tuple], batch: int, reps: int) -> list[float]:
    """Median milliseconds of one forward pass of every ``(model, backend, linears)`` case,
    interleaved."""
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        times = interleaved([(b, lin, functools.partial(m, x)) for m, b, lin in cases], reps)
    return [1000 * statistics.median(t) for t in times]


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


OP_CASES = {  # name: (map side, heads, dilation)
    "56x56/2": (56, 2, 1), "28x28/4": (28, 4, 1), "14x14/8": (14, 8, 1), "7x7/16": (7, 16, 1),
    "56x56/2 d8": (56, 2, 8), "28x28/4 d4": (28, 4, 4), "14x14/8 d2": (14, 8, 2),
}  # fmt: skip


def op_calls(batch: int, side: int, heads: int, dil: int):
    """Zero-argument inference and forward+backward calls of one NA level shape."""
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(batch, side, side, 3, heads, 32, generator=gen)
    q, k, v = (t.detach().requires_grad_() for t in qkv.unbind(3))  # strided, as models pass them
    rpb = torch.randn(heads, 13, 13, requires_grad=True)

    def infer():
        with torch.inference_mode():
            natten_ext.na2d(q, k, v, 7, dilation=dil, rpb=rpb)

    def train():
        natten_ext.na2d(q, k, v, 7, dilation=dil, rpb=rpb).sum().backward()

    return (("infer", infer), ("fwd+bwd", train))


def time_ops(backends: list[str], batches: list[int], reps: int) -> list[dict]:
    """Minimum milliseconds of one NA call per (level shape, batch, backend, pass), interleaved."""
    rows = []
    for batch in batches:
        for name, (side, heads, dil) in OP_CASES.items():
            keys = [(b, p, fn) for b in backends for p, fn in op_calls(batch, side, heads, dil)]
            times = interleaved([(b, "shipped", fn) for b, _, fn in keys], reps)
            for (backend, pass_, _), t in zip(keys, times):
                rows.append({"case": name, "batch": batch, "backend": backend, "pass": pass_,
                             "ms": 1000 * min(t)})  # fmt: skip
                print(f"{name:12s} batch {batch}  {backend:8s} {pass_:8s} {rows[-1]['ms']:8.2f} ms",
                      flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="nat_tiny,dinat_tiny,swin_tiny_patch4_window7_224,"
                   "convnext_tiny")  # fmt: skip
    p.add_argument("--batches", default="1,8")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--backends", default="auto,tiled")
    p.add_argument("--linears", default="shipped", help=f"comma list of {', '.join(LINEARS)}")
    p.add_argument("--train-steps", type=int, default=30, help="0 skips the training rows")
    p.add_argument("--ops", action="store_true", help="time the operator alone (see above)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps must be >= 1, got {args.reps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = args.backends.split(",")
    known = ["auto", *natten_ext.available_backends()]
    if "cpu" in known:
        known.append(PYTHREADS)
    unknown = [b for b in backends if b not in known]
    if unknown:
        p.error(f"--backends: {unknown} not available; choose from {', '.join(known)}")
    linears = args.linears.split(",")
    if not set(linears) <= set(LINEARS):
        p.error(f"--linears: choose from {', '.join(LINEARS)}, got {args.linears}")
    if set(linears) - {"shipped"} and not fast_linear._ONEDNN:
        p.error("--linears aten/onednn: oneDNN's linear is not used on this machine")
    batches = [int(b) for b in args.batches.split(",")]
    print(f"# CPU, {torch.get_num_threads()} threads | torch {torch.__version__} | "
          f"timm {timm.__version__}", flush=True)  # fmt: skip
    if args.ops:
        ops = time_ops(backends, batches, args.reps)
        if args.json:
            args.json.write_text(json.dumps({"ops": ops}, indent=1))
        return 0
    cases, labels = [], []
    for name in args.models.split(","):
        model = timm.create_model(name).eval()
        zoo = name.startswith(ZOO_PREFIXES)
        for lin in linears:
            if lin == ("onednn" if zoo else "aten"):
                continue  # the same as shipped
            variant = with_fast_linears(model) if lin == "onednn" else model
            for backend in backends if zoo else ["-"]:
                cases.append((variant, "auto" if backend == "-" else backend, lin))
                labels.append((name, backend, lin))
    per_batch = [time_inference(cases, b, args.reps) for b in batches]
    rows = []
    for c, (name, backend, lin) in enumerate(labels):
        ms = [per_batch[i][c] for i in range(len(batches))]
        rows.append({"model": name, "backend": backend, "linears": lin,
                     "ms": dict(zip(batches, ms))})  # fmt: skip
        print(f"{name:30s} {backend:10s} {lin:8s} " + "  ".join(
            f"batch {b}: {t:8.1f} ms" for b, t in zip(batches, ms)), flush=True)  # fmt: skip
    train = []
    if args.train_steps:
        for backend in backends:
            with backend_context(backend):
                rate = time_demo_training(args.train_steps)
            train.append({"backend": backend, "images_per_s": rate})
            print(f"demo training ({backend}): {rate:.0f} img/s", flush=True)
    head = " | ".join(f"batch {b} (ms)" for b in batches)
    print(f"\n| model | backend | linears | {head} |\n|---|---|---|" + "---|" * len(batches))
    for r in rows:
        print(f"| {r['model']} | {r['backend']} | {r['linears']} | " + " | ".join(
            f"{r['ms'][b]:.0f}" for b in batches) + " |")  # fmt: skip
    for t in train:
        print(f"\ndemo training, backend {t['backend']}: {t['images_per_s']:.0f} img/s")
    if args.json:
        args.json.write_text(json.dumps({"inference": rows, "training": train}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

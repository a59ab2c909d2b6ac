"""Model-level GPU benchmark: training and inference images/s and peak memory, eager and compiled.

All models run in one process on one GPU, on synthetic tensors already on the device (224 px by
default, bf16 autocast, fused AdamW, cross-entropy on random labels), so the figures measure the
models, not the input pipeline. For each model and mode the script warms up (compiling where the
mode says so), then times several windows of steps with CUDA events and reports the median
window's images/s; peak memory is ``torch.cuda.max_memory_allocated`` over the timed windows.

Models: this project's zoo names (``nat_tiny``, ``dinat_tiny``, ...) and any timm model
(``swin_tiny_patch4_window7_224``, ``convnext_tiny``; ConvNeXt runs channels-last, as timm
recommends). Modes: ``train``, ``train_compiled``, ``infer``, ``infer_compiled`` (inductor in
``--compile-mode``), and ``train_cudagraphs`` / ``infer_cudagraphs`` (inductor with CUDA graphs,
``mode="reduce-overhead"``, in the same process).
``--profile MODEL`` prints where one step's GPU time goes, for each of ``--profile-modes``.

Usage:
    python scripts/bench_models.py [--models nat_tiny,swin_tiny_patch4_window7_224]
        [--modes train,train_compiled,infer,infer_compiled] [--batch 128] [--img 224]
        [--compile-mode default|max-autotune-no-cudagraphs|reduce-overhead] [--windows 5]
        [--steps 10] [--json out.json] [--profile nat_tiny]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm

import classification  # noqa: F401  (registers the zoo with timm)

DEFAULT_MODELS = (
    "nat_mini",
    "nat_tiny",
    "nat_small",
    "dinat_tiny",
    "dinat_s_tiny",
    "swin_tiny_patch4_window7_224",
    "convnext_tiny",
)
MODES = ("train", "train_compiled", "infer", "infer_compiled")
EXTRA_MODES = ("train_cudagraphs", "infer_cudagraphs")
ALL_MODES = MODES + EXTRA_MODES


def _compiles(mode: str) -> bool:
    return mode.endswith(("compiled", "cudagraphs"))


CHANNELS_LAST = ("convnext",)


def build(name: str, device: torch.device) -> torch.nn.Module:
    model = timm.create_model(name, num_classes=1000).to(device)
    model.bench_channels_last = name.startswith(CHANNELS_LAST)
    if model.bench_channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_step(model, mode: str, batch: int, img: int, compile_mode: str | None, device):
    """A zero-argument callable running one step of ``mode`` on fixed synthetic tensors."""
    train = mode.startswith("train")
    x = torch.randn(batch, 3, img, img, device=device)
    if getattr(model, "bench_channels_last", False):  # set by build()
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (batch,), device=device)
    model.train(train)
    fn = model
    if mode.endswith("cudagraphs"):
        compile_mode = "reduce-overhead"
    if _compiles(mode):
        kwargs: dict[str, Any] = {"fullgraph": True}
        if compile_mode not in (None, "default"):
            kwargs["mode"] = compile_mode
        fn = torch.compile(model, **kwargs)
    if train:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            torch.compiler.cudagraph_mark_step_begin()  # reduce-overhead: a new iteration
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = fn(x)
            F.cross_entropy(out.float(), target).backward()
            opt.step()

    else:

        def step():
            torch.compiler.cudagraph_mark_step_begin()
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                fn(x)

    return step


def time_windows(step, windows: int, steps: int) -> list[float]:
    """Milliseconds per step of each timed window (CUDA events around ``steps`` steps)."""
    out = []
    for _ in range(windows):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / steps)
    return out


def run_case(name, mode, args, device) -> dict[str, Any]:
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    model = build(name, device)
    step = make_step(model, mode, args.batch, args.img, args.compile_mode, device)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    # Earlier cases' compiled graphs leave millions of Python objects behind; without freezing
    # them, the garbage collector's full passes slow the host side of eager steps.
    gc.collect()
    gc.freeze()
    try:
        ms = time_windows(step, args.windows, args.steps)
    finally:
        gc.unfreeze()
    peak = torch.cuda.max_memory_allocated() / 2**30
    med = statistics.median(ms)
    return {
        "model": name,
        "mode": mode,
        "ms_per_step": med,
        "images_per_s": args.batch * 1000.0 / med,
        "window_ms": ms,
        "peak_gib": peak,
        "warmup_s": warm_s,
    }


# ------------------------------------------------------------------------------------ profile
_CATEGORIES = (
    ("na forward", ("_na_fwd",)),
    ("na backward dq", ("_na_bwd_dq",)),
    ("na backward dk/dv", ("_na_bwd_dkdv",)),
    ("attention (sdpa/flash)", ("flash", "fmha", "attention", "efficient")),
    ("matmul (cublas/cutlass)", ("gemm", "cutlass", "sm90", "cublas", "xmma", "nvjet")),
    ("convolution", ("conv", "cudnn", "implicit", "winograd", "dgrad", "wgrad")),
    ("layernorm", ("layer_norm", "layernorm")),
    ("optimizer", ("adam", "multi_tensor")),
    ("triton (inductor)", ("triton_",)),
    ("copy / cast / transpose", ("copy", "cast", "transpose", "cat", "stack", "permute")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "gelu", "mul", "add")),
    ("reduction", ("reduce",)),
)


def _category(kernel: str) -> str:
    low = kernel.lower()
    for label, keys in _CATEGORIES:
        if any(k in low for k in keys):
            return label
    return "other"


def profile(name: str, args, device) -> str:
    """GPU time per kernel category (and the top kernels) of training and inference steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    lines = []
    for mode in args.profile_modes.split(","):
        torch._dynamo.reset()
        model = build(name, device)
        step = make_step(model, mode, args.batch, args.img, args.compile_mode, device)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        reps = 3
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1000.0 / reps
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                step()
            torch.cuda.synchronize()
        per_kernel: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for evt in prof.events():
            if evt.device_type == torch.autograd.DeviceType.CUDA:
                per_kernel[evt.name] += evt.device_time / 1000.0 / reps  # ms per step
                counts[evt.name] += 1
        total = sum(per_kernel.values())
        by_cat: dict[str, float] = defaultdict(float)
        for k, v in per_kernel.items():
            by_cat[_category(k)] += v
        lines.append(
            f"\n## {name} {mode}: {total:.2f} ms of GPU time per step ({wall:.2f} ms wall, "
            f"unprofiled), batch {args.batch}"
        )
        lines.append("| category | ms/step | share |")
        lines.append("|---|---|---|")
        for cat, v in sorted(by_cat.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {cat} | {v:.2f} | {100 * v / total:.1f}% |")
        lines.append("\n| top kernels | ms/step | launches/step |")
        lines.append("|---|---|---|")
        for k, v in sorted(per_kernel.items(), key=lambda kv: -kv[1])[: args.top]:
            lines.append(f"| `{k[:90]}` | {v:.3f} | {counts[k] // reps} |")
        del model, step
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--compile-mode", default="default")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation included)")
    p.add_argument("--windows", type=int, default=5, help="timed windows (median reported)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--profile", default="", help="comma-separated models to profile instead")
    p.add_argument(
        "--profile-modes",
        default="train,infer",
        help="modes profiled by --profile (any of --modes' choices)",
    )
    p.add_argument("--top", type=int, default=15, help="kernels listed per profile")
    p.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="compile the compiled modes first in this many worker processes (fills inductor's "
        "on-disk caches, so the measuring process only loads them); 0: compile in place",
    )
    p.add_argument("--warm-only", action="store_true", help="with --jobs: only fill the caches")
    p.add_argument("--_warm", default="", help=argparse.SUPPRESS)  # worker: model:mode
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    for name, value in (("--batch", args.batch), ("--windows", args.windows)):
        if value < 1:
            p.error(f"{name} must be >= 1, got {value}")
    modes = [m for m in args.modes.split(",") if m]
    for flag, chosen in (("--modes", modes), ("--profile-modes", args.profile_modes.split(","))):
        bad = [m for m in chosen if m not in ALL_MODES]
        if bad:
            p.error(f"{flag}: unknown {bad}; choose from {', '.join(ALL_MODES)}")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(
        f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | timm {timm.__version__}"
        f" | batch {args.batch} | {args.img} px | bf16 | compile mode {args.compile_mode}",
        flush=True,
    )
    if args._warm:  # a --jobs worker: compile (and run a few steps of) one case, then exit
        name, mode = args._warm.split(":")
        step = make_step(build(name, device), mode, args.batch, args.img, args.compile_mode, device)
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        return 0
    if args.jobs > 0:
        warm_up_in_workers(args, modes)
        if args.warm_only:
            return 0
    if args.profile:
        for name in args.profile.split(","):
            print(profile(name, args, device), flush=True)
        return 0
    results = []
    for name in args.models.split(","):
        for mode in modes:
            try:
                r = run_case(name, mode, args, device)
                print(
                    f"{name:32s} {mode:15s} {r['images_per_s']:8.0f} img/s  "
                    f"{r['ms_per_step']:7.2f} ms  peak {r['peak_gib']:5.2f} GiB  "
                    f"(warm-up {r['warmup_s']:.0f} s)",
                    flush=True,
                )
            except Exception as exc:  # report and go on: one failure must not hide the rest
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                r = {"model": name, "mode": mode, "error": msg, "trace": traceback.format_exc()}
                print(f"{name:32s} {mode:15s} FAILED {msg}", flush=True)
            results.append(r)
    print(table(results, modes))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "results": results},
                indent=1,
                default=str,
            )
        )
    return 0


def warm_up_in_workers(args, modes: list[str]) -> None:
    """Compile every compiled case in parallel subprocesses (same shapes and settings)."""
    import subprocess

    cases = [(n, m) for n in args.models.split(",") for m in modes if _compiles(m)]
    base = [sys.executable, __file__, "--batch", str(args.batch), "--img", str(args.img),
            "--compile-mode", args.compile_mode]  # fmt: skip
    t0 = time.perf_counter()
    running: list[tuple[str, subprocess.Popen]] = []
    for name, mode in cases:
        while len(running) >= args.jobs:
            running = [(c, p) for c, p in running if p.poll() is None]
            time.sleep(0.5)
        cmd = [*base, "--_warm", f"{name}:{mode}"]
        running.append((f"{name}:{mode}", subprocess.Popen(cmd, stdout=subprocess.DEVNULL)))
    for case, proc in running:
        if proc.wait() != 0:
            print(f"warm-up of {case} failed (exit {proc.returncode})", flush=True)
    print(f"# compiled {len(cases)} cases in {args.jobs} workers: "
          f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip


def table(results: list[dict[str, Any]], modes: list[str]) -> str:
    """Markdown: one row per model, images/s per mode, peak training memory."""
    by = {(r["model"], r["mode"]): r for r in results}
    names = list(dict.fromkeys(r["model"] for r in results))
    cols = " | ".join(f"{m} img/s" for m in modes)
    trains = [m for m in modes if m.startswith("train")]
    head = f"| model | {cols} | peak GiB ({' / '.join(trains)}) |"
    lines = [head, "|" + "---|" * (len(modes) + 2)]
    for n in names:
        cells = []
        for m in modes:
            r = by.get((n, m), {})
            cells.append(f"{r['images_per_s']:.0f}" if "images_per_s" in r else "fails")
        mem = [by.get((n, m), {}).get("peak_gib") for m in trains]
        mem_s = " / ".join(f"{v:.1f}" if v is not None else "-" for v in mem)
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {mem_s} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

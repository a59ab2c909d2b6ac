"""Sweep the fused Triton kernels' launch configurations at NAT-Tiny / DiNAT-Tiny level shapes.

For every case (batch 128, bf16, head_dim 32, kernel 7, RPB, q/k/v as views of one qkv tensor as
the models pass them) and every variant of one kernel's configuration (``triton_fused._TUNE``
overrides: tiles, key/query block, warps, stages), it times the forward or the whole backward
(dQ + dK/dV, workspace and drpb reduction included) as GPU time: ``--inner`` calls captured in
one CUDA graph, replayed ``--outer`` times, median per call. Each variant changes one kernel, so
its difference to the defaults is that kernel's. ``--jobs N`` first JIT-compiles every variant
in N worker processes (Triton's on-disk cache), so the timing process only loads them.

Prints the defaults and the three best variants per case and kernel (marking those whose rpb
gradient needs atomic adds, which the default training avoids: it is deterministic); ``--json
PATH`` writes every figure. Use it on a new GPU before changing the defaults in
``triton_fused._config``.

Usage: python scripts/tune_na.py [--cases nat56,nat14,...] [--kernels fwd,dq,dkdv] [--jobs 15]
    [--json out.json] [--budget-s 600]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_na import replay_ms  # a CUDA graph of calls, replayed: median ms per call

from natten_ext.backends import triton_fused

CASES = {  # name: (map side, heads, dilation)
    "nat56": (56, 2, 1), "nat28": (28, 4, 1), "nat14": (14, 8, 1), "nat7": (7, 16, 1),
    "din56d8": (56, 2, 8), "din28d4": (28, 4, 4), "din14d2": (14, 8, 2),
}  # fmt: skip
BATCH, HEAD_DIM, KERNEL = 128, 32, 7
KERNELS = ("fwd", "dq", "dkdv", "box")


def variants() -> list[tuple[str, str, dict]]:
    """(kernel, timed pass, overrides); the first two are the shipped defaults. The generic
    kernels' variants turn the one-block kernels off (``box=False``), so that they are timed on
    the dilated cases too; the ``box`` variants time the one-block kernels."""
    out = [("defaults", "fwd", {}), ("defaults", "bwd", {})]
    fwd = itertools.product([(1, 8, 2), (1, 4, 4), (1, 8, 4), (1, 4, 8)], [16, 32, 64], [1, 2, 4],
                            [2, 3])  # fmt: skip
    out += [("fwd", "fwd", dict(tiles_fwd=t, block_n_fwd=n, warps_fwd=w, stages_fwd=s))
            for t, n, w, s in fwd]  # fmt: skip
    dq = itertools.product([(1, 4, 8), (1, 8, 8), (1, 2, 8), (1, 4, 4)], [32, 64, 128], [1, 2, 4],
                           [2, 3])  # fmt: skip
    out += [("dq", "bwd", dict(tiles_dq=t, block_n=n, warps_dq=w, stages_dq=s))
            for t, n, w, s in dq]  # fmt: skip
    dkdv = itertools.product([(1, 4, 8), (1, 8, 8), (1, 8, 4), (1, 4, 4)], [32, 64, 128],
                             [1, 2, 4], [1, 2])  # fmt: skip
    out += [("dkdv", "bwd", dict(tiles_dkdv=t, block_m=m, warps_dkdv=w, stages_dkdv=s))
            for t, m, w, s in dkdv]  # fmt: skip
    out = out[:2] + [(k, p, dict(t, box=False)) for k, p, t in out[2:]]
    box = itertools.product([(8, 8), (4, 8)], [1, 2, 4], [1, 2], ["fwd", "bwd"])
    out += [("box", p, dict(box_tiles=t, box_warps=w, box_stages=s)) for t, w, s, p in box]
    return out


def make_call(pass_: str, tune: dict, side: int, heads: int, dil: int, device: str, batch: int):
    """A zero-argument call of the forward or backward under the overrides ``tune``."""
    qkv = torch.randn(batch, side, side, 3, heads, HEAD_DIM, device=device, dtype=torch.bfloat16)
    q, k, v = qkv.unbind(3)
    rpb = torch.randn(heads, 2 * KERNEL - 1, 2 * KERNEL - 1, device=device)
    grad = torch.randn(batch, side, side, heads, HEAD_DIM, device=device, dtype=torch.bfloat16)
    window = ((KERNEL, KERNEL), (dil, dil), (False, False), HEAD_DIM**-0.5)
    triton_fused._TUNE.clear()
    triton_fused._TUNE.update(tune)
    out, lse = triton_fused.forward(q, k, v, rpb, *window)
    if pass_ == "fwd":
        return lambda: triton_fused.forward(q, k, v, rpb, *window)
    return lambda: triton_fused.backward(grad, q, k, v, rpb, out, lse, *window)


def jobs(cases: list[str], kernels: tuple[str, ...] = KERNELS) -> list[tuple]:
    """(case, variant index, kernel, pass, overrides) of the variants of ``kernels``."""
    return [(c, i, kern, pass_, tune) for c in cases for i, (kern, pass_, tune) in
            enumerate(variants()) if kern == "defaults" or kern in kernels]  # fmt: skip


def deterministic(tune: dict, side: int, dil: int) -> bool:
    """Whether the backward under ``tune`` sums the rpb gradient without atomics (the one-hot
    path, DRPB_MODE 3): variants that need atomics cost the default training its determinism."""
    triton_fused._TUNE.clear()
    triton_fused._TUNE.update(tune)
    try:
        plan = triton_fused._launch_plan(
            2, (1, KERNEL, KERNEL), (1, dil, dil), (False,) * 3, (1, side, side), HEAD_DIM, True,
            torch.bfloat16, False, tuple(sorted(tune.items())),
        )  # fmt: skip
    finally:
        triton_fused._TUNE.clear()
    return plan["mode"] != 1


def compile_share(cases, kernels, part: int, parts: int, device: str, batch: int) -> None:
    """Run (hence JIT-compile) every ``parts``-th variant, starting at ``part``."""
    for j, (case, _, _, pass_, tune) in enumerate(jobs(cases, kernels)):
        if j % parts == part:
            try:
                make_call(pass_, tune, *CASES[case], device, batch)()
            except Exception as exc:  # a config the kernels reject: reported, not fatal
                print(f"compile failed: {case} {tune}: {type(exc).__name__}", flush=True)


def summary(results: list[dict], cases: list[str]) -> str:
    lines = []
    for case in cases:
        rows = [r for r in results if r["case"] == case and r["ms"] is not None]
        base = {r["pass"]: r["ms"] for r in rows if r["kernel"] == "defaults"}
        if base:
            lines.append(f"{case}: defaults fwd {base.get('fwd', 0):.4f} ms, "
                         f"bwd {base.get('bwd', 0):.4f} ms")  # fmt: skip
        for kern in KERNELS:
            best = sorted((r for r in rows if r["kernel"] == kern), key=lambda r: r["ms"])[:3]
            lines += [
                f"  {kern:5s} {r['ms']:.4f} {r['tune']}"
                + ("" if r["deterministic"] else " (atomic drpb)")
                for r in best
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--kernels", default=",".join(KERNELS), help="whose variants to time")
    p.add_argument("--jobs", type=int, default=0, help="compile first in this many processes")
    p.add_argument("--inner", type=int, default=10, help="calls per CUDA graph")
    p.add_argument("--outer", type=int, default=7, help="timed replays (median)")
    p.add_argument("--budget-s", type=float, default=0.0, help="stop timing after this long")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--_part", default="", help=argparse.SUPPRESS)  # worker: "part/parts"
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"--cases: unknown {unknown}; choose from {', '.join(CASES)}")
    kernels = tuple(k for k in args.kernels.split(",") if k)
    if not kernels or any(k not in KERNELS for k in kernels):
        p.error(f"--kernels: got {args.kernels!r}; choose from {', '.join(KERNELS)}")
    if args.batch < 1 or args.inner < 1 or args.outer < 1:
        p.error("--batch, --inner and --outer must be >= 1")
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    if args._part:
        part, parts = map(int, args._part.split("/"))
        compile_share(cases, kernels, part, parts, "cuda", args.batch)
        return 0
    if args.jobs > 0:
        base = [sys.executable, __file__, "--cases", args.cases, "--kernels", args.kernels,
                "--batch", str(args.batch)]  # fmt: skip
        procs = [subprocess.Popen([*base, "--_part", f"{i}/{args.jobs}"]) for i in range(args.jobs)]
        for proc in procs:
            proc.wait()
    deadline = time.time() + args.budget_s if args.budget_s > 0 else float("inf")
    results = []
    for case, index, kern, pass_, tune in jobs(cases, kernels):
        if time.time() > deadline:
            print("--budget-s reached: the remaining variants were not timed", flush=True)
            break
        try:
            call = make_call(pass_, tune, *CASES[case], "cuda", args.batch)
            ms = replay_ms(call, args.inner, args.outer)
        except Exception as exc:  # record and go on
            ms = None
            print(f"failed: {case} {tune}: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
        side, _, dil = CASES[case]
        results.append({"case": case, "index": index, "kernel": kern, "pass": pass_,
                        "deterministic": deterministic(tune, side, dil),
                        "tune": {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in tune.items()}, "ms": ms})  # fmt: skip
    triton_fused._TUNE.clear()
    print(summary(results, cases))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "results": results}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

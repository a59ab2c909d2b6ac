"""Benchmark the fused Triton neighborhood-attention backend against its baselines on one GPU.

Cases (bf16 unless told): NAT-Tiny's four levels (batch 128, head_dim 32, kernel 7, RPB on) and
DiNAT's dilations at the same shapes; a 1-D case (8 x 8192 tokens, 8 heads, head_dim 64, kernel
255) and a 3-D case (4 x 16x32x32, 4 heads, head_dim 32, kernel 7x7x7). Each case times, in the
same process: the triton backend, the reference backend (2-D levels), Swin-style 7x7 blocked
window attention through SDPA on the same tensors (with and without its relative-position bias),
full self-attention through SDPA, and compiled ``flex_attention`` with a neighborhood block mask
(and an RPB ``score_mod`` where the case has RPB). Forward alone and forward+backward, median of
``triton.testing.do_bench``. Prints a table; ``--json PATH`` also writes every figure.

``--unfused`` also times the unfused ops (``na*d_qk`` + softmax + ``na*d_av``, NATTEN 0.14-style
code) on their Triton kernels and on the reference backend.

``--levels`` instead times the fused kernels alone (forward, and the whole backward with the rpb
gradient; GPU time of CUDA-graph replays) at each level NAT-Tiny and DiNAT-Tiny run at (batch
128, bf16, q/k/v as views of one qkv tensor as the models pass them), beside each level's memory
floor: the bytes the kernels must move (inputs read once, outputs written once) over 4.8 TB/s,
the H200's bandwidth. It adds the per-step sums over the models' blocks. ``--compare-generic``
also times the generic kernels where the one-block kernels serve a level.

Usage: python scripts/bench_na.py [--json out.json] [--only nat,dinat,1d,3d] [--no-flex] [--graphs]
    [--unfused] [--levels [--compare-generic]]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import natten_ext
from natten_ext.backends import reference

NAT_LEVELS = [(56, 2), (28, 4), (14, 8), (7, 16)]
DINAT_DILATION = {56: 8, 28: 4, 14: 2, 7: 1}
# (side, heads, dilation, blocks in NAT-Tiny, blocks in DiNAT-Tiny) at 224 px
MODEL_LEVELS = [(56, 2, 1, 3, 2), (56, 2, 8, 0, 1), (28, 4, 1, 4, 2), (28, 4, 4, 0, 2),
                (14, 8, 1, 18, 9), (14, 8, 2, 0, 9), (7, 16, 1, 5, 5)]  # fmt: skip
HBM_BYTES_PER_S = 4.8e12


def bench(fn: Callable[[], object], quick: bool = False) -> float:
    """Median milliseconds of ``fn`` (device events, after warm-up)."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    if quick:  # slow baselines: a few runs are enough
        times = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def graphed(step: Callable[[], object]) -> Callable[[], None]:
    """``step`` captured in a CUDA graph (after warm-up on a side stream): replays measure GPU
    time without the Python/launch overhead of the eager call."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def fwd_bwd(run: Callable[[], torch.Tensor], leaves: list[torch.Tensor], grad: torch.Tensor):
    def step():
        for t in leaves:
            t.grad = None
        run().backward(grad)

    return step


# ------------------------------------------------------------------------------------ baselines
def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """[B, H, W, heads, D] -> [B * nH * nW, heads, w*w, D] (Swin's partition)."""
    b, h, wd, heads, d = x.shape
    x = x.view(b, h // w, w, wd // w, w, heads, d).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(-1, heads, w * w, d)


def window_reverse(x: torch.Tensor, w: int, shape: torch.Size) -> torch.Tensor:
    b, h, wd, heads, d = shape
    x = x.view(b, h // w, wd // w, heads, w, w, d).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(shape)


@functools.lru_cache(maxsize=8)
def _swin_index(w: int, device: torch.device) -> torch.Tensor:
    coords = torch.stack(
        torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij"), 0
    ).flatten(1)
    rel = (coords[:, None, :] - coords[:, :, None]).permute(1, 2, 0) + (w - 1)
    return (rel[..., 0] * (2 * w - 1) + rel[..., 1]).to(device)


def swin_bias(table: torch.Tensor, w: int) -> torch.Tensor:
    """Swin-style [heads, w*w, w*w] bias gathered from a [heads, 2w-1, 2w-1] table."""
    return table.flatten(1)[:, _swin_index(w, table.device)]


def window_attention(q, k, v, table, w: int):
    qw, kw, vw = (window_partition(t, w) for t in (q, k, v))
    mask = swin_bias(table, w).unsqueeze(0).to(q.dtype) if table is not None else None
    out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask)
    return window_reverse(out, w, q.shape)


def full_attention(q, k, v):
    heads_first = [t.flatten(1, -3).transpose(1, 2) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*heads_first)
    return out.transpose(1, 2).reshape(q.shape)


def _axis_in_window(qi, ki, length: int, k: int, d: int, causal: bool):
    g = qi % d
    qp, kp = qi // d, ki // d
    same = (ki % d) == g
    if causal:
        return same & (kp <= qp) & (kp > qp - k)
    lg = (length - g + d - 1) // d
    start = torch.minimum(torch.clamp(qp - k // 2, min=0), lg - k)
    return same & (kp >= start) & (kp < start + k)


def _stride(ks, axis: int) -> int:
    return math.prod(2 * k - 1 for k in ks[axis + 1 :])


def flex_na(spatial, ks, dil, table):
    """(block mask, score_mod) on row-major flattened tokens; ``table`` is the flat rpb."""
    from torch.nn.attention.flex_attention import create_block_mask

    ndim = len(spatial)
    strides = [math.prod(spatial[a + 1 :]) for a in range(ndim)]

    def coords(idx):
        return [(idx // strides[a]) % spatial[a] for a in range(ndim)]

    def mask_mod(b, h, q_idx, kv_idx):
        qc, kc = coords(q_idx), coords(kv_idx)
        ok = _axis_in_window(qc[0], kc[0], spatial[0], ks[0], dil[0], False)
        for a in range(1, ndim):
            ok = ok & _axis_in_window(qc[a], kc[a], spatial[a], ks[a], dil[a], False)
        return ok

    n = math.prod(spatial)
    block_mask = create_block_mask(mask_mod, None, None, n, n, device="cuda")
    score_mod = None
    if table is not None:
        bins = math.prod(2 * k - 1 for k in ks)
        bias_strides = [_stride(ks, a) for a in range(ndim)]  # plain ints: nothing to trace

        def score_mod(score, b, h, q_idx, kv_idx):
            qc, kc = coords(q_idx), coords(kv_idx)
            index = h * bins
            for a in range(ndim):
                p = (ks[a] - 1) + (kc[a] - qc[a]) // dil[a]
                index = index + torch.clamp(p, 0, 2 * ks[a] - 2) * bias_strides[a]
            return score + table[index].to(score.dtype)  # one gather from a flat leaf

    return block_mask, score_mod


_FLEX = None


def reset_flex() -> None:
    """A fresh compiled flex_attention per case: no recompile-limit fallback to the eager path."""
    global _FLEX
    from torch.nn.attention.flex_attention import flex_attention as fa

    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = 64
    _FLEX = torch.compile(fa, dynamic=False)


def flex_attention(q, k, v, block_mask, score_mod):
    heads_first = [t.flatten(1, -3).transpose(1, 2) for t in (q, k, v)]
    out = _FLEX(*heads_first, score_mod=score_mod, block_mask=block_mask)
    return out.transpose(1, 2).reshape(q.shape)


# ----------------------------------------------------------------------------------------- cases
@contextlib.contextmanager
def gather_path_only():
    """Make the reference backend take its gather path even on small maps."""
    saved = reference._DENSE_FACTOR
    reference._DENSE_FACTOR = 0
    try:
        yield
    finally:
        reference._DENSE_FACTOR = saved


def na_call(ndim: int):
    return {1: natten_ext.na1d, 2: natten_ext.na2d, 3: natten_ext.na3d}[ndim]


def unfused_na(q, k, v, table, ks, dil):
    """The unfused API on heads-last tensors: qk (+rpb), softmax, av (NATTEN 0.14-style code)."""
    perm = (0, q.dim() - 2, *range(1, q.dim() - 2), q.dim() - 1)
    qh, kh, vh = (t.permute(perm) for t in (q, k, v))
    ndim = q.dim() - 3
    qk = {1: natten_ext.na1d_qk, 2: natten_ext.na2d_qk, 3: natten_ext.na3d_qk}[ndim]
    av = {1: natten_ext.na1d_av, 2: natten_ext.na2d_av, 3: natten_ext.na3d_av}[ndim]
    attn = qk(qh * q.shape[-1] ** -0.5, kh, ks, dil, rpb=table).softmax(-1)
    out = av(attn, vh, ks, dil)
    return out.permute(0, *range(2, ndim + 2), 1, ndim + 2)


def run_case(name, batch, spatial, heads, dim, ks, dil, rpb_on, opts, dtype=torch.bfloat16):
    ndim = len(spatial)
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (batch, *spatial, heads, dim)
    q, k, v, g = (torch.randn(shape, device="cuda", dtype=dtype, generator=gen) for _ in range(4))
    table = None
    if rpb_on:
        table = 0.02 * torch.randn(heads, *(2 * x - 1 for x in ks), device="cuda", generator=gen)
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    tleaf = table.detach().requires_grad_(True) if table is not None else None
    fn = na_call(ndim)
    row: dict[str, object] = {"case": name, "shape": list(shape), "kernel": list(ks),
                              "dilation": list(dil), "rpb": rpb_on}  # fmt: skip

    def timed(label, fwd, bwd_run, bwd_leaves, quick=False):
        try:
            with torch.no_grad():
                row[f"{label}_fwd"] = bench(fwd, quick)
            row[f"{label}_fwdbwd"] = bench(fwd_bwd(bwd_run, bwd_leaves, g), quick)
            if opts.graphs and not quick and label != "flex":
                row[f"{label}_graph_fwdbwd"] = bench(graphed(fwd_bwd(bwd_run, bwd_leaves, g)))
        except Exception as exc:  # report and go on: one failing baseline must not hide the rest
            row[f"{label}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        torch.cuda.empty_cache()

    all_leaves = leaves + ([tleaf] if tleaf is not None else [])
    with natten_ext.use_backend("triton"):
        timed(
            "triton",
            lambda: fn(q, k, v, ks, dil, rpb=table),
            lambda: fn(*leaves, ks, dil, rpb=tleaf),
            all_leaves,
        )
    if opts.reference and ndim == 2:
        with natten_ext.use_backend("reference"):
            timed(
                "reference",
                lambda: fn(q, k, v, ks, dil, rpb=table),
                lambda: fn(*leaves, ks, dil, rpb=tleaf),
                all_leaves,
                quick=True,
            )
        tokens, window = math.prod(spatial), math.prod(ks)
        if reference._use_dense(tokens, window):
            # Small maps take the reference's dense path; also time its plain gather path,
            # which serves the larger maps.
            with natten_ext.use_backend("reference"), gather_path_only():
                timed(
                    "reference_gather",
                    lambda: fn(q, k, v, ks, dil, rpb=table),
                    lambda: fn(*leaves, ks, dil, rpb=tleaf),
                    all_leaves,
                    quick=True,
                )
    if opts.unfused:  # the unfused ops: Triton kernels, and the reference (quick)
        timed(
            "unfused_triton",
            lambda: unfused_na(q, k, v, table, ks, dil),
            lambda: unfused_na(*leaves, tleaf, ks, dil),
            all_leaves,
        )
        with natten_ext.use_backend("reference"):
            timed(
                "unfused_reference",
                lambda: unfused_na(q, k, v, table, ks, dil),
                lambda: unfused_na(*leaves, tleaf, ks, dil),
                all_leaves,
                quick=True,
            )
    if ndim == 2 and all(s % 7 == 0 for s in spatial) and dil == (1, 1):
        timed(
            "window",
            lambda: window_attention(q, k, v, table, 7),
            lambda: window_attention(*leaves, tleaf, 7),
            all_leaves,
        )
        timed(
            "window_nobias",
            lambda: window_attention(q, k, v, None, 7),
            lambda: window_attention(*leaves, None, 7),
            leaves,
        )
    timed("sdpa_full", lambda: full_attention(q, k, v), lambda: full_attention(*leaves), leaves)
    if opts.flex:
        try:
            t0 = time.perf_counter()
            reset_flex()
            flat = table.reshape(-1) if table is not None else None
            flat_leaf = flat.detach().requires_grad_(True) if flat is not None else None
            block_mask, score_mod = flex_na(spatial, ks, dil, flat)
            _, score_mod_train = flex_na(spatial, ks, dil, flat_leaf)
            flex_leaves = leaves + ([flat_leaf] if flat_leaf is not None else [])
            timed(
                "flex",
                lambda: flex_attention(q, k, v, block_mask, score_mod),
                lambda: flex_attention(*leaves, block_mask, score_mod_train),
                flex_leaves,
            )
            row["flex_setup_s"] = time.perf_counter() - t0
        except Exception as exc:
            row["flex_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    print(json.dumps(row), flush=True)
    return row


# ------------------------------------------------------------------------------------ levels
def replay_ms(fn: Callable[[], object], inner: int = 10, outer: int = 9) -> float:
    """Median GPU milliseconds of one call of ``fn``, from a CUDA graph of ``inner`` calls."""
    replay = graphed(lambda: [fn() for _ in range(inner)])
    replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(outer):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def level_floor_ms(batch: int, side: int, heads: int, dim: int, elem: int) -> tuple[float, float]:
    """Memory floors of one call (forward, backward) in ms: q, k, v read and o, lse written;
    q, k, v, o, dO, lse read, dq, dk, dv written and delta written and read."""
    tensor = batch * side * side * heads * dim * elem
    rows = batch * side * side * heads * 4
    fwd = 4 * tensor + rows
    bwd = 8 * tensor + 3 * rows
    return fwd / HBM_BYTES_PER_S * 1e3, bwd / HBM_BYTES_PER_S * 1e3


def time_kernels(q, k, v, rpb, grad, window, tune: dict) -> tuple[float, float]:
    """(forward, backward) ms of the triton backend's kernels under ``triton_fused._TUNE``."""
    from natten_ext.backends import triton_fused

    triton_fused._TUNE.clear()
    triton_fused._TUNE.update(tune)
    try:
        out, lse = triton_fused.forward(q, k, v, rpb, *window)
        fwd = replay_ms(lambda: triton_fused.forward(q, k, v, rpb, *window))
        bwd = replay_ms(lambda: triton_fused.backward(grad, q, k, v, rpb, out, lse, *window))
    finally:
        triton_fused._TUNE.clear()
    return fwd, bwd


def run_levels(opts) -> list[dict]:
    from natten_ext.backends import triton_fused

    batch, dim, ks = 128, 32, (7, 7)
    rows = []
    variants = [("shipped", {})] + ([("generic", {"box": False})] if opts.compare_generic else [])
    for side, heads, dil, n_nat, n_dinat in MODEL_LEVELS:
        gen = torch.Generator(device="cuda").manual_seed(0)
        qkv = torch.randn(batch, side, side, 3, heads, dim, device="cuda", dtype=torch.bfloat16,
                          generator=gen)  # fmt: skip
        q, k, v = qkv.unbind(3)
        rpb = 0.02 * torch.randn(heads, 13, 13, device="cuda", generator=gen)
        grad = torch.randn(batch, side, side, heads, dim, device="cuda", dtype=torch.bfloat16,
                           generator=gen)  # fmt: skip
        window = (ks, (dil, dil), (False, False), dim**-0.5)
        floor_f, floor_b = level_floor_ms(batch, side, heads, dim, 2)
        plan = triton_fused._plan_for(q, rpb, ks, (dil, dil), (False, False))
        row = {"level": f"{side}x{side}/{heads} d{dil}", "nat_blocks": n_nat,
               "dinat_blocks": n_dinat, "kernels": "one-block" if plan["box"] else "generic",
               "floor_fwd": floor_f, "floor_bwd": floor_b}  # fmt: skip
        for name, tune in variants:
            if name == "generic" and plan["box"] is None:
                continue
            row[f"{name}_fwd"], row[f"{name}_bwd"] = time_kernels(q, k, v, rpb, grad, window, tune)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def print_levels(rows: list[dict], compare: bool) -> None:
    head = f"{'level':18s} {'kernels':9s} {'fwd':>7s} {'floor':>6s} {'x':>5s}"
    head += f" {'bwd':>7s} {'floor':>6s} {'x':>5s} {'bwd/fwd':>7s}"
    if compare:
        head += f" {'generic fwd':>11s} {'generic bwd':>11s}"
    print("\n" + head)
    for r in rows:
        f, b = r["shipped_fwd"], r["shipped_bwd"]
        line = (f"{r['level']:18s} {r['kernels']:9s} {f:7.4f} {r['floor_fwd']:6.4f} "
                f"{f / r['floor_fwd']:5.1f} {b:7.4f} {r['floor_bwd']:6.4f} "
                f"{b / r['floor_bwd']:5.1f} {b / f:7.2f}")  # fmt: skip
        if compare and "generic_fwd" in r:
            line += f" {r['generic_fwd']:11.4f} {r['generic_bwd']:11.4f}"
        print(line)
    print("(ms per call, GPU time of CUDA-graph replays; x: over the memory floor at 4.8 TB/s)")
    for model, key in (("nat_tiny", "nat_blocks"), ("dinat_tiny", "dinat_blocks")):
        sums = {}
        for part in ("fwd", "bwd", "floor_fwd", "floor_bwd"):
            col = part if part.startswith("floor") else f"shipped_{part}"
            sums[part] = sum(r[key] * r[col] for r in rows)
        total = sums["fwd"] + sums["bwd"]
        line = (f"{model}: NA per training step {total:.3f} ms (forward {sums['fwd']:.3f}, "
                f"backward {sums['bwd']:.3f}, {sums['bwd'] / sums['fwd']:.2f}x); "
                f"floor {sums['floor_fwd'] + sums['floor_bwd']:.3f} ms")  # fmt: skip
        if compare:
            gen = sum(
                r[key]
                * (r.get("generic_fwd", r["shipped_fwd"]) + r.get("generic_bwd", r["shipped_bwd"]))
                for r in rows
            )
            line += f"; generic kernels {gen:.3f} ms"
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write all figures to this file")
    parser.add_argument("--only", default="nat,dinat,1d,3d", help="comma-separated case groups")
    parser.add_argument("--no-flex", dest="flex", action="store_false")
    parser.add_argument("--no-reference", dest="reference", action="store_false")
    parser.add_argument(
        "--unfused", action="store_true", help="also time the unfused ops (Triton, reference)"
    )
    parser.add_argument(
        "--graphs", action="store_true", help="also time fwd+bwd replayed from a CUDA graph"
    )
    parser.add_argument(
        "--levels", action="store_true", help="the kernels per NAT-Tiny/DiNAT-Tiny level vs floor"
    )
    parser.add_argument(
        "--compare-generic", action="store_true", help="with --levels: also the generic kernels"
    )
    opts = parser.parse_args(argv)
    if opts.compare_generic and not opts.levels:
        parser.error("--compare-generic needs --levels")
    if not torch.cuda.is_available():
        raise SystemExit("bench_na.py needs a CUDA device")
    groups = set(opts.only.split(","))
    rows = []
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "deterministic": os.environ.get("NATTEN_EXT_DETERMINISTIC", "0"),
    }
    print(json.dumps(meta), flush=True)
    if opts.levels:
        rows = run_levels(opts)
        print_levels(rows, opts.compare_generic)
        if opts.json:
            tmp = opts.json.with_suffix(".tmp")
            tmp.write_text(json.dumps({"meta": meta, "levels": rows}, indent=1))
            os.replace(tmp, opts.json)
        return
    if "nat" in groups:
        for size, heads in NAT_LEVELS:
            rows.append(run_case(f"nat {size}x{size}/{heads}", 128, (size, size), heads, 32,
                                 (7, 7), (1, 1), True, opts))  # fmt: skip
    if "dinat" in groups:
        for size, heads in NAT_LEVELS:
            d = DINAT_DILATION[size]
            rows.append(run_case(f"dinat {size}x{size}/{heads} d{d}", 128, (size, size), heads,
                                 32, (7, 7), (d, d), True, opts))  # fmt: skip
    if "1d" in groups:
        rows.append(run_case("1d 8192 k255", 8, (8192,), 8, 64, (255,), (1,), False, opts))
    if "3d" in groups:
        rows.append(run_case("3d 16x32x32 k7", 4, (16, 32, 32), 4, 32, (7, 7, 7), (1, 1, 1),
                             False, opts))  # fmt: skip
    if opts.json:
        tmp = opts.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        os.replace(tmp, opts.json)
    labels = ["triton", "reference", "reference_gather", "window", "window_nobias", "sdpa_full",
              "flex"]  # fmt: skip
    if opts.unfused:
        labels += ["unfused_triton", "unfused_reference"]
    print(f"\n{'case':28s}" + "".join(f"{lab:>22s}" for lab in labels))
    for row in rows:
        cells = []
        for lab in labels:
            if f"{lab}_fwd" in row:
                cells.append(
                    f"{row[f'{lab}_fwd']:8.3f} /{row.get(f'{lab}_fwdbwd', float('nan')):9.3f}"
                )
            elif f"{lab}_error" in row:
                cells.append("error")
            else:
                cells.append("-")
        print(f"{row['case']:28s}" + "".join(f"{c:>22s}" for c in cells))
    print("(ms: forward / forward+backward, medians)")
    if opts.graphs:
        print(f"\n{'case':28s}" + "".join(f"{lab:>16s}" for lab in labels))
        for row in rows:
            cells = [row.get(f"{lab}_graph_fwdbwd") for lab in labels]
            print(
                f"{row['case']:28s}"
                + "".join(f"{c:16.3f}" if c is not None else f"{'-':>16s}" for c in cells)
            )
        print("(ms: forward+backward replayed from a CUDA graph, medians)")


if __name__ == "__main__":
    main()

"""Fused neighborhood attention in Triton: forward and backward, 1-D/2-D/3-D, with RPB.

Flash-style: attention weights never reach global memory; the forward keeps a running
(max, sum) per query and saves the natural-log logsumexp; the backward recomputes the weights
tile by tile: a dQ kernel over each query tile's keys (it also writes
``delta = rowsum(dO * O)``), then a dK/dV kernel over each key tile's queries. Memory: O(N*D)
plus the logsumexp; the backward allocates nothing of size N*K. Kernels compile on first use
(Triton JIT), one variant per (kernel size, causal flags, head-dim block, dtype).

Two kernel families serve the calls. 2-D calls whose dilation groups are small enough that a
tile's key box fits one block (groups of up to 8x8 with kernel size up to 8: 7x7 maps, and every
dilated level of DiNAT at 224 px) take the one-block kernels of ``_triton_na2d``: each program
builds its bias-and-mask tile once and reuses it over a run of batch elements (at those levels
on an H200: 3.3-4.1x faster forward and 1.8-2.6x faster backward than the generic kernels,
docs/benchmarks.md). Everything else takes the generic kernels of ``_triton_kernels``.
``_TUNE["box"] = False`` forces the generic ones.

Relative positional bias: read in fp32 whatever its dtype; its gradient is accumulated in fp32.
The one-block kernels hold the bias in float16 for 16-bit inputs (float32 for float32 inputs).

Determinism: dQ, dK and dV never use atomics. The rpb gradient of the one-block kernels, and of
2-D calls on the generic kernels' one-hot path
(a tile's key rows fit a key block: kernel width <= 25, or <= 9 when head_dim > 64) is always
deterministic: each dQ program sums its pairs per bin with two one-hot matrix products and stores
them to its own slice of a workspace, reduced afterwards by ``torch.sum``. Otherwise (1-D, 3-D,
wider 2-D kernels) the rpb gradient uses atomic adds by default (low bits may vary); when
``torch.are_deterministic_algorithms_enabled()`` is true, or the environment variable
``NATTEN_EXT_DETERMINISTIC=1`` is set, they switch to per-program sums reduced in a fixed order
(a slower backward).

float32 inputs use IEEE float32 matrix products (no TF32) so the results meet float32 tolerances;
``NATTEN_EXT_TRITON_TF32=1`` allows TF32 for speed.
"""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl

    from . import _triton_kernels as _k
    from . import _triton_na2d as _k2
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None
    _k = None
    _k2 = None

NAME = "triton"

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_ATOMIC_SPLIT = 16


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _prod3(values) -> int:
    total = 1
    for v in values:
        total *= v
    return total


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available() -> bool:
    """Triton importable and a CUDA device present (or Triton's CPU interpreter switched on)."""
    if triton is None:
        return False
    return torch.cuda.is_available() or _interpreting()


def unsupported_reason(query, key, value, rpb, kernel_size, dilation, is_causal) -> str | None:
    if triton is None:
        return "triton is not installed"
    if query.device.type != "cuda" and not (_interpreting() and query.device.type == "cpu"):
        return f"tensors are on {query.device.type}, the triton backend needs CUDA"
    if query.dtype not in _DTYPES:
        return f"dtype {query.dtype} not supported (float16, bfloat16, float32)"
    if key.dtype != query.dtype or value.dtype != query.dtype:
        return "query, key and value must share one dtype"
    head_dim = query.shape[-1]
    if head_dim % 16 != 0 or not 16 <= head_dim <= 128:
        return f"head_dim {head_dim} not supported (16 to 128 in steps of 16)"
    if len(kernel_size) not in (1, 2, 3):
        return f"{len(kernel_size)}-D neighborhoods not supported (1, 2 or 3)"
    if rpb is not None and rpb.device != query.device:
        return "rpb is on another device than query"
    return None


def deterministic() -> bool:
    """Whether the rpb gradient is summed in a fixed order (no atomics)."""
    env = os.environ.get("NATTEN_EXT_DETERMINISTIC", "0") == "1"
    return env or torch.are_deterministic_algorithms_enabled()


def _pad3(values, fill) -> tuple:
    return (fill,) * (3 - len(values)) + tuple(values)


def _tiles(ndim: int) -> tuple[int, int, int]:
    return {1: (1, 1, 64), 2: (1, 8, 8), 3: (4, 4, 4)}[ndim]


# Overrides for tuning experiments (keys of ``_config``'s result); empty in normal use.
_TUNE: dict = {}


def _config(ndim: int, head_dim: int, sp=None, dil=None) -> dict:
    block_d = _pow2(head_dim)
    # Defaults for every call; 2-D head_dim <= 32 is tuned below (H200, bf16).
    cfg = {
        "tiles": _tiles(ndim),
        "block_n_fwd": 64 if block_d <= 64 and ndim == 1 else 32,  # keys per step (forward)
        "block_n": 64 if block_d <= 64 else 32,  # keys per step (dQ)
        "block_m": 64 if block_d <= 64 else 32,  # queries per step (dK/dV)
        "block_d": block_d,
        "warps_fwd": 4 if block_d <= 64 else 8,
        "warps_dq": 4 if block_d <= 64 else 8,
        "warps_dkdv": 4 if block_d <= 64 else 8,
        "stages": 2,  # software-pipelining stages of the key loops (forward, dQ)
        "stages_dkdv": 1,
        "bias_dot_fwd": False,  # the plain rpb gather measured faster in the forward
        "box": True,  # 2-D calls on small dilation groups: the one-block kernels of _triton_na2d
        "box_stages": 2,
    }
    if ndim == 2 and block_d <= 32:
        # NAT/DiNAT's head_dim 32, chosen from the launch-configuration sweep of
        # scripts/tune_na.py on an H200 (bf16): smaller tiles evaluate fewer (query, key) pairs
        # (8x2 queries: a 14x8 key box for 16; 4x8: 10x16 for 32), and 1-2 warps per program
        # keep more programs resident per SM.
        cfg.update(tiles_fwd=(1, 8, 2), block_n_fwd=16, warps_fwd=1)
        cfg.update(tiles_dq=(1, 4, 8), block_n=64, warps_dq=2, stages_dq=3)
        # dK/dV: 8x4 key tiles, one warp, two stages were the fastest or within 1% at every
        # NAT-Tiny and DiNAT-Tiny level in that sweep
        cfg.update(tiles_dkdv=(1, 8, 4), block_m=32, warps_dkdv=1, stages_dkdv=2)
        if dil is not None and all(d == 1 for d in dil):
            cfg["stages_fwd"] = 3  # 3 stages: 1-5% faster undilated, slower dilated
    cfg.update(_TUNE)
    for name in ("tiles_fwd", "tiles_dq", "tiles_dkdv"):  # per-kernel tiles (default: tiles)
        cfg.setdefault(name, cfg["tiles"])
    return cfg


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and os.environ.get("NATTEN_EXT_TRITON_TF32", "0") != "1":
        return "ieee"
    return "tf32"


def _grid_tiles(spatial, dilation, tiles) -> int:
    total = 1
    for length, dil, t in zip(spatial, dilation, tiles):
        total *= dil * _cdiv(_cdiv(length, dil), t)
    return total


@functools.lru_cache(maxsize=512)
def _max_query_extent(length: int, k: int, dil: int, tile: int, causal: bool) -> int:
    """Largest number of query positions (one axis, group coordinates) a key tile can receive
    from; mirrors ``_query_range`` in the kernels."""
    widest = 1
    for g in range(dil):
        lg = -(-(length - g) // dil)
        for y0 in range(0, lg, tile):
            y1 = min(y0 + tile, lg) - 1
            if causal:
                lo, hi = y0, min(y1 + k, lg)
            else:
                lo = 0 if y0 <= k - 1 else y0 - k + 1 + k // 2
                hi = lg if y1 >= lg - k else y1 + k // 2 + 1
            widest = max(widest, hi - lo)
    return widest


def _bias_plan(ndim, ks, dil, causal, sp, cfg, has_rpb, tiles) -> dict:
    """Constexprs of the 2-D one-hot bias path (``_bias_block``), or the plain-gather fallback."""
    _, t1, t2 = tiles
    plan = {"rp2": t2 + ks[2] - 1, "dot": False, "bu": 16, "qp2": 1, "eq1": 1, "dot_kv": False,
            "bu_kv": 16}  # fmt: skip
    if not has_rpb or ndim != 2:
        return plan
    pitch = _pow2(t2 + ks[2] - 1)
    if t1 * (cfg["block_n"] // pitch) >= 16:
        rows = cfg["block_n"] // pitch
        nblk = _cdiv((t1 + ks[1] - 1) * pitch, cfg["block_n"])
        bu = max(16, _pow2(nblk * rows + t1 - 1))
        plan.update(rp2=pitch, dot=True, bu=bu)
    qp2 = _pow2(_max_query_extent(sp[2], ks[2], dil[2], t2, causal[2]))
    eq1 = _max_query_extent(sp[1], ks[1], dil[1], t1, causal[1])
    if t1 * (cfg["block_m"] // qp2) >= 16:
        bu_kv = max(16, _pow2(t1 + eq1 - 1))
        plan.update(qp2=qp2, eq1=eq1, dot_kv=True, bu_kv=bu_kv)
    return plan


def _bias_precision(dtype: torch.dtype) -> str:
    # one-hot products select rpb values: 3xTF32 keeps them float32-exact for float32 inputs
    return "tf32x3" if dtype == torch.float32 else "tf32"


# --- 2-D calls on small dilation groups: the one-block kernels of ``_triton_na2d`` ------------
_BOX_TILES = ((8, 8), (4, 8), (8, 4), (4, 4))  # query (key) tiles, in order of preference
_BOX_BLOCK = 64  # keys (queries) of the one block a program holds


def _box_layout(rows: int, cols: int) -> tuple[int, int] | None:
    """(rows, row pitch) of a ``rows x cols`` box held as one block, or None if it does not fit."""
    pitch = _pow2(cols)
    return (_pow2(rows), pitch) if _pow2(rows) * pitch <= _BOX_BLOCK else None


def _box_plan(ks, dil, causal, sp, head_dim, has_rpb, dtype, cfg) -> dict | None:
    """Launch constants of the one-block kernels, or None where a tile's key box (or a key
    tile's query box) does not fit one block (``ks``, ``dil``, ``causal``, ``sp``: two axes)."""
    if not cfg["box"] or _pow2(head_dim) > 64:
        return None
    longest = [_cdiv(length, d) for length, d in zip(sp, dil)]  # group 0 is the longest
    for cand in (cfg["box_tiles"],) if "box_tiles" in cfg else _BOX_TILES:
        tiles = [min(t, _pow2(lg)) for t, lg in zip(cand, longest)]
        m = tiles[0] * tiles[1]
        reach = [min(t + k - 1, lg) for t, k, lg in zip(tiles, ks, longest)]
        extent = [_max_query_extent(*args) for args in zip(sp, ks, dil, tiles, causal)]
        fwd, kv = _box_layout(*reach), _box_layout(*extent)
        if fwd is None or kv is None or m < 16:
            continue
        if has_rpb and (tiles[0] * fwd[0] < 16 or tiles[1] * fwd[1] < 16):  # one-hot products
            continue
        common = dict(HEAD_DIM=head_dim, BLOCK_D=_pow2(head_dim), K0=ks[0], K1=ks[1],
                      C0=causal[0], C1=causal[1], T0=tiles[0], T1=tiles[1], HAS_RPB=has_rpb,
                      DOT_PREC=_dot_precision(dtype),
                      BM_DTYPE=tl.float32 if dtype == torch.float32 else tl.float16)  # fmt: skip
        # chained products put every warp on the tile's rows: one warp per 16 rows
        warps = cfg.get("box_warps", max(1, min(4, m // 16)))

        def launch(layout, common=common, warps=warps, **extra):
            return dict(common, RB=layout[0], RP=layout[1], num_warps=warps,
                        num_stages=cfg["box_stages"], **extra)  # fmt: skip

        return {
            "ntiles": _grid_tiles(sp, dil, tiles),
            "fwd": launch(fwd),
            "dq": launch(fwd, BU=max(16, _pow2(fwd[0] + tiles[0] - 1)),
                         BW=max(16, _pow2(fwd[1] + tiles[1] - 1)),
                         BIAS_PREC=_bias_precision(dtype)),
            "dkdv": launch(kv),
        }  # fmt: skip
    return None


def _fits_int32(*tensors: torch.Tensor) -> bool:
    """Whether every element offset of these tensors fits the one-block kernels' 32-bit math."""
    limit = 2**31 - 1
    return all(sum((n - 1) * st for n, st in zip(t.shape, t.stride())) < limit for t in tensors)


@functools.lru_cache(maxsize=64)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _batch_run(batch: int, per_element: int, device: torch.device) -> int:
    """Batch elements per program of the box kernels: as many as keep about four programs per
    multiprocessor busy (each one builds its bias-and-mask tiles once for its whole run)."""
    if "box_nb" in _TUNE:
        return max(1, min(batch, int(_TUNE["box_nb"])))
    sms = _sm_count(device.index or 0) if device.type == "cuda" else 8
    return max(1, min(16, batch * per_element // (4 * sms)))


@functools.lru_cache(maxsize=1024)
def _launch_plan(ndim, ks, dil, causal, sp, head_dim, has_rpb, dtype, det, tune) -> dict:
    """Everything about the launches that depends only on the call's configuration (cached)."""
    cfg = _config(ndim, head_dim, sp, dil)
    common = dict(
        HEAD_DIM=head_dim, BLOCK_D=cfg["block_d"],
        K0=ks[0], K1=ks[1], K2=ks[2], C0=causal[0], C1=causal[1], C2=causal[2],
        HAS_RPB=has_rpb, DOT_PREC=_dot_precision(dtype),
    )  # fmt: skip
    bias_prec = _bias_precision(dtype)

    def with_tiles(tiles):
        return dict(common, T0=tiles[0], T1=tiles[1], T2=tiles[2])

    tf_, tq, tk = cfg["tiles_fwd"], cfg["tiles_dq"], cfg["tiles_dkdv"]
    fwd_cfg = {**cfg, "block_n": cfg["block_n_fwd"]}
    fp = _bias_plan(ndim, ks, dil, causal, sp, fwd_cfg, has_rpb, tf_)
    if not cfg["bias_dot_fwd"]:
        fp.update(rp2=tf_[2] + ks[2] - 1, dot=False)
    fwd = dict(with_tiles(tf_), BLOCK_N=fwd_cfg["block_n"], RP2=fp["rp2"], BIAS_DOT=fp["dot"],
               BU=fp["bu"], BIAS_PREC=bias_prec, num_warps=cfg["warps_fwd"],
               num_stages=cfg.get("stages_fwd", cfg["stages"]))  # fmt: skip

    plan = _bias_plan(ndim, ks, dil, causal, sp, cfg, has_rpb, tq)
    mode, block_bias, bw = 0, 16, 16
    if has_rpb:
        if plan["dot"]:
            mode = 3
            bw = max(16, _pow2(plan["rp2"] + tq[2] - 1))
        elif det:
            mode, block_bias = 2, _pow2(_prod3(2 * k - 1 for k in ks))
        else:
            mode = 1
    dq = dict(with_tiles(tq), BLOCK_N=cfg["block_n"], DRPB_MODE=mode, BLOCK_BIAS=block_bias,
              RP2=plan["rp2"], BU=plan["bu"], BW=bw, BIAS_PREC=bias_prec, BIAS_DOT=plan["dot"],
              num_warps=cfg["warps_dq"],
              num_stages=cfg.get("stages_dq", cfg["stages"]))  # fmt: skip
    kv = _bias_plan(ndim, ks, dil, causal, sp, cfg, has_rpb, tk)
    dkdv = dict(with_tiles(tk), BLOCK_M=cfg["block_m"], BIAS_DOT=kv["dot_kv"], QP2=kv["qp2"],
                EQ1=kv["eq1"], BU=kv["bu_kv"], BIAS_PREC=bias_prec,
                num_warps=cfg["warps_dkdv"], num_stages=cfg["stages_dkdv"])  # fmt: skip
    box = None
    if ndim == 2:
        box = _box_plan(ks[1:], dil[1:], causal[1:], sp[1:], head_dim, has_rpb, dtype, cfg)
    return {"box": box, "ntiles_fwd": _grid_tiles(sp, dil, tf_),
            "ntiles_dq": _grid_tiles(sp, dil, tq), "ntiles_dkdv": _grid_tiles(sp, dil, tk),
            "fwd": fwd, "dq": dq, "dkdv": dkdv,
            "mode": mode, "block_bias": block_bias, "sp": sp, "dil": dil,
            "nbias": _prod3(2 * k - 1 for k in ks)}  # fmt: skip


def _plan_for(query, rpb, kernel_size, dilation, is_causal, det=False) -> dict:
    ndim = len(kernel_size)
    sp = _pad3(query.shape[1 : 1 + ndim], 1)
    return _launch_plan(
        ndim, _pad3(kernel_size, 1), _pad3(dilation, 1), _pad3(is_causal, False), sp,
        query.shape[-1], rpb is not None, query.dtype, det,
        tuple(sorted(_TUNE.items())) if _TUNE else (),
    )  # fmt: skip


def _strides2(x: torch.Tensor) -> tuple[int, ...]:
    """(batch, row, column, heads) element strides of a 2-D heads-last tensor."""
    st = x.stride()
    return (st[0], st[1], st[2], st[3])


def _box_backward(plan, grad_out, query, key, value, out, lse, delta, dq, dk, dv, table, has_rpb,
                  sp, dil, scale):  # fmt: skip
    """The one-block dQ (with delta and the rpb gradient) and dK/dV launches; returns drpb."""
    box = plan["box"]
    batch, heads = query.shape[0], query.shape[-2]
    ntiles = box["ntiles"]
    nb = _batch_run(batch, ntiles * heads, query.device)
    programs = ntiles * heads * _cdiv(batch, nb)
    nbias = plan["nbias"]
    work = (torch.zeros(programs, nbias, dtype=torch.float32, device=query.device) if has_rpb
            else lse)  # fmt: skip
    q_st, k_st, v_st, g_st = (_strides2(t) for t in (query, key, value, grad_out))
    geo = (batch, heads, ntiles, nb, *sp[1:], *dil[1:])
    _launch(
        _k2._na2d_bwd_dq_kernel, (programs,),
        query, key, value, grad_out, out, lse, delta, dq, table, work,
        *q_st, *k_st, *v_st, *g_st, *_strides2(out), *geo, scale * _k.LOG2E, scale, **box["dq"],
    )  # fmt: skip
    _launch(
        _k2._na2d_bwd_dkdv_kernel, (programs,),
        query, key, value, grad_out, lse, delta, dk, dv, table,
        *q_st, *k_st, *v_st, *g_st, *geo, scale * _k.LOG2E, scale, **box["dkdv"],
    )  # fmt: skip
    return work.view(-1, heads, ntiles, nbias).sum((0, 2)) if has_rpb else None


def _strides(x: torch.Tensor, ndim: int) -> tuple[int, ...]:
    """(batch, axis0, axis1, axis2, heads) element strides of a heads-last ``[B, *sp, H, D]``
    tensor; the size-1 padding axes of 1-D/2-D calls get stride 0 (their coordinate is 0)."""
    st = x.stride()
    return (st[0], *(0,) * (3 - ndim), *st[1 : 1 + ndim], st[-2])


def _lse_strides(batch: int, sp: tuple[int, int, int], heads: int) -> tuple[int, ...]:
    """Strides of a contiguous ``[B, *sp, H]`` logsumexp."""
    return (sp[0] * sp[1] * sp[2] * heads, sp[1] * sp[2] * heads, sp[2] * heads, heads, 1)


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _rpb_arg(rpb: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor:
    """The rpb table as the kernels read it (any float dtype, contiguous; a dummy when absent)."""
    if rpb is None:
        return query  # never read: HAS_RPB is off
    return rpb if rpb.is_contiguous() else rpb.contiguous()


def _tracing() -> bool:
    """Traced by torch.compile / make_fx (launches must go through ``wrap_triton``)."""
    return torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0


def _launch(kernel, grid, *args, **kwargs) -> None:
    if _tracing() and hasattr(torch.library, "wrap_triton"):
        torch.library.wrap_triton(kernel)[grid](*args, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


def forward(query, key, value, rpb, kernel_size, dilation, is_causal, scale):
    """Returns ``out`` [B, *spatial, H, D] (query's dtype) and ``lse`` [B, *spatial, H] fp32."""
    ndim = len(kernel_size)
    plan = _plan_for(query, rpb, kernel_size, dilation, is_causal)
    sp, dil = plan["sp"], plan["dil"]
    batch, heads = query.shape[0], query.shape[-2]
    query, key, value = _unit_last(query), _unit_last(key), _unit_last(value)
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    lse = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)
    box = plan["box"]
    if box is not None and _fits_int32(query, key, value, out):
        ntiles = box["ntiles"]
        nb = _batch_run(batch, ntiles * heads, query.device)
        _launch(
            _k2._na2d_fwd_kernel, (ntiles * heads * _cdiv(batch, nb),),
            query, key, value, out, lse, _rpb_arg(rpb, query),
            *_strides2(query), *_strides2(key), *_strides2(value), *_strides2(out),
            batch, heads, ntiles, nb, *sp[1:], *dil[1:], scale * _k.LOG2E, **box["fwd"],
        )  # fmt: skip
        return out, lse
    _launch(
        _k._na_fwd_kernel, (plan["ntiles_fwd"] * batch * heads,),
        query, key, value, out, lse, _rpb_arg(rpb, query),
        *_strides(query, ndim), *_strides(key, ndim), *_strides(value, ndim),
        *_strides(out, ndim), *_lse_strides(batch, sp, heads),
        heads, plan["ntiles_fwd"], *sp, *dil, scale * _k.LOG2E, **plan["fwd"],
    )  # fmt: skip
    return out, lse


def backward(grad_out, query, key, value, rpb, out, lse, kernel_size, dilation, is_causal, scale):
    """Returns ``dq, dk, dv`` (input dtypes) and ``drpb`` (rpb's dtype) or None."""
    ndim = len(kernel_size)
    det = rpb is not None and deterministic()
    plan = _plan_for(query, rpb, kernel_size, dilation, is_causal, det)
    sp, dil = plan["sp"], plan["dil"]
    batch, heads = query.shape[0], query.shape[-2]
    query, key, value = _unit_last(query), _unit_last(key), _unit_last(value)
    grad_out, out, lse = _unit_last(grad_out), _unit_last(out), lse.contiguous()
    lse_st = _lse_strides(batch, sp, heads)
    delta = torch.empty_like(lse)  # written by the dQ kernel, read by the dK/dV kernel
    dq = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    dk = torch.empty(key.shape, dtype=key.dtype, device=key.device)
    dv = torch.empty(value.shape, dtype=value.dtype, device=value.device)
    table = _rpb_arg(rpb, query)
    nbias = plan["nbias"]
    if plan["box"] is not None and _fits_int32(query, key, value, grad_out, out, dq):
        drpb = _box_backward(plan, grad_out, query, key, value, out, lse, delta, dq, dk, dv, table,
                             rpb is not None, sp, dil, scale)  # fmt: skip
        return dq, dk, dv, (None if drpb is None else drpb.reshape(rpb.shape).to(rpb.dtype))
    ntiles, mode, block_bias = plan["ntiles_dq"], plan["mode"], plan["block_bias"]
    ntiles_kv = plan["ntiles_dkdv"]
    device = query.device
    if mode == 1:
        work = torch.zeros(_ATOMIC_SPLIT, heads, nbias, dtype=torch.float32, device=device)
    elif mode == 2:
        work = torch.empty(ntiles, batch * heads, block_bias, dtype=torch.float32, device=device)
    elif mode == 3:
        work = torch.zeros(ntiles, batch * heads, nbias, dtype=torch.float32, device=device)
    else:
        work = lse  # never written: DRPB_MODE 0
    q_st, k_st, v_st, g_st = (_strides(t, ndim) for t in (query, key, value, grad_out))
    # one flat grid axis per kernel: no 65535 limit on batch * heads
    _launch(
        _k._na_bwd_dq_kernel, (ntiles * batch * heads,),
        query, key, value, grad_out, out, lse, delta, dq, table, work,
        *q_st, *k_st, *v_st, *g_st, *_strides(out, ndim), *lse_st,
        heads, ntiles, *sp, *dil, scale * _k.LOG2E, scale, _ATOMIC_SPLIT, **plan["dq"],
    )  # fmt: skip
    _launch(
        _k._na_bwd_dkdv_kernel, (ntiles_kv * batch * heads,),
        query, key, value, grad_out, lse, delta, dk, dv, table,
        *q_st, *k_st, *v_st, *g_st, *lse_st,
        heads, ntiles_kv, *sp, *dil, scale * _k.LOG2E, scale, **plan["dkdv"],
    )  # fmt: skip

    drpb = None
    if mode == 1:
        drpb = work.sum(0)
    elif mode == 2:
        drpb = work.reshape(ntiles * batch, heads, block_bias).sum(0)[:, :nbias]
    elif mode == 3:
        drpb = work.reshape(ntiles * batch, heads, nbias).sum(0)
    if drpb is not None:
        drpb = drpb.reshape(rpb.shape).to(rpb.dtype)
    return dq, dk, dv, drpb

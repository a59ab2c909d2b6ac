"""LayerNorm over the last dimension in Triton, for narrow rows (N = 16..4096) on CUDA.

``FastLayerNorm`` is a drop-in ``nn.LayerNorm`` (same constructor and state_dict) that takes the
Triton path only for 16-bit work on CUDA (bf16/fp16 inputs, or fp16/bf16 autocast, where its
output is directly the autocast dtype the next Linear wants); everything else, plain fp32
included, is exactly ``nn.LayerNorm``. ``NATTEN_EXT_FAST_LN=0`` turns the Triton path off.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from natten_ext.utils.capture import graph_capture_active

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None

__all__ = ["FastLayerNorm", "LayerNorm", "fast_layer_norm"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_HALF_DTYPES = (torch.bfloat16, torch.float16)
_MIN_N, _MAX_N = 16, 4096
_FWD_ELEMENTS = 8192  # elements per forward program (ROWS * BLOCK_N)
_BWD_ELEMENTS = 4096  # elements per backward row block (x, dy and two accumulators live)
_BWD_WAVES = 4  # persistent backward grid: this many programs per SM


if triton is not None:

    @triton.jit
    def _ln_fwd_kernel(
        X, Y, W, B, Mean, Rstd, M, N, eps,
        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
        ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """ROWS rows of y = (x - mean) * rstd * w + b; saves mean and rstd (fp32)."""
        pid = tl.program_id(0)
        rows = pid * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_N)
        row_ok = rows < M
        col_ok = cols < N
        mask = row_ok[:, None] & col_ok[None, :]
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / N
        xc = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / N
        rstd = 1.0 / tl.sqrt(var + tl.cast(eps, tl.float32))
        y = xc * rstd[:, None]
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
            y = y * w[None, :]
        if HAS_BIAS:
            b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
            y = y + b[None, :]
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
        tl.store(Mean + rows, mean, mask=row_ok)
        tl.store(Rstd + rows, rstd, mask=row_ok)

    @triton.jit
    def _ln_bwd_kernel(
        X, DY, DX, W, Mean, Rstd, DW, DB, M, N, iters,
        HAS_WEIGHT: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
        ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """dx for row blocks pid, pid + P, ... (``iters`` of them, the last ones maybe empty);
        this program's dw/db partial sums go to row ``pid`` of DW/DB."""
        pid = tl.program_id(0)
        num_progs = tl.num_programs(0)
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < N
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        acc_dw = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
        acc_db = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
        for it in range(0, iters):
            rows = (pid + it * num_progs) * ROWS + tl.arange(0, ROWS)
            row_ok = rows < M
            mask = row_ok[:, None] & col_ok[None, :]
            offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
            rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
            if HAS_WEIGHT:
                g = dy * w[None, :]
            else:
                g = dy
            c1 = tl.sum(g * xhat, axis=1) / N
            c2 = tl.sum(g, axis=1) / N
            dx = (g - c2[:, None] - xhat * c1[:, None]) * rstd[:, None]
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
            if NEED_DW:
                acc_dw += dy * xhat
            if NEED_DB:
                acc_db += dy
        if NEED_DW:
            tl.store(DW + pid * N + cols, tl.sum(acc_dw, axis=0), mask=col_ok)
        if NEED_DB:
            tl.store(DB + pid * N + cols, tl.sum(acc_db, axis=0), mask=col_ok)


def _block_config(n: int, elements: int) -> tuple[int, int, int]:
    """(ROWS, BLOCK_N, num_warps) so a program handles about ``elements`` values."""
    block_n = triton.next_power_of_2(n)
    rows = max(1, elements // block_n)
    num_warps = 8 if rows * block_n >= 8192 else 4
    return rows, block_n, num_warps


_SM_COUNT: dict[int, int] = {}


def _num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); 3 elsewhere (interpreter tests)."""
    if device.type != "cuda":
        return 3
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def _forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, out_dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` [M, N] contiguous -> (y [M, N] of ``out_dtype``, mean [M], rstd [M])."""
    m, n = x.shape
    y = torch.empty((m, n), dtype=out_dtype, device=x.device)
    mean = torch.empty(m, dtype=torch.float32, device=x.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    if m == 0:
        return y, mean, rstd
    rows, block_n, num_warps = _block_config(n, _FWD_ELEMENTS)
    grid = (triton.cdiv(m, rows),)
    _ln_fwd_kernel[grid](
        x, y, x if weight is None else weight, x if bias is None else bias, mean, rstd,
        m, n, float(eps),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        ROWS=rows, BLOCK_N=block_n, num_warps=num_warps,
    )  # fmt: skip
    return y, mean, rstd


def _backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    need_dw: bool,
    need_db: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(dx in x's dtype, dweight, dbias) with deterministic per-program partial sums."""
    m, n = x.shape
    dx = torch.empty_like(x)
    rows, block_n, num_warps = _block_config(n, _BWD_ELEMENTS)
    num_blocks = triton.cdiv(m, rows)
    progs = max(1, min(num_blocks, _BWD_WAVES * _num_sms(x.device)))
    dw_ws = torch.empty((progs, n) if need_dw else (1,), dtype=torch.float32, device=x.device)
    db_ws = torch.empty((progs, n) if need_db else (1,), dtype=torch.float32, device=x.device)
    if m > 0:
        _ln_bwd_kernel[(progs,)](
            x, dy, dx, x if weight is None else weight, mean, rstd, dw_ws, db_ws,
            m, n, triton.cdiv(num_blocks, progs),
            HAS_WEIGHT=weight is not None, NEED_DW=need_dw, NEED_DB=need_db,
            ROWS=rows, BLOCK_N=block_n, num_warps=num_warps,
        )  # fmt: skip
    else:
        dw_ws.zero_()
        db_ws.zero_()
    dw = db = None
    if need_dw:
        assert weight is not None
        dw = dw_ws.sum(0).to(weight.dtype)
    if need_db:
        db = db_ws.sum(0)
    return dx, dw, db


class _FastLayerNormFn(torch.autograd.Function):
    """Autograd wrapper of the Triton forward / backward kernels over [M, N] rows."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        out_dtype: torch.dtype,
    ) -> Tensor:
        shape = x.shape
        x2 = x.contiguous().view(-1, shape[-1])
        w = None if weight is None else weight.contiguous()
        b = None if bias is None else bias.contiguous()
        y, mean, rstd = _forward(x2, w, b, eps, out_dtype)
        ctx.save_for_backward(x2, w, mean, rstd)
        ctx.has_bias = b is not None
        ctx.bias_dtype = None if b is None else b.dtype
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:
        x2, w, mean, rstd = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        need_dw = need_dw and w is not None
        need_db = need_db and ctx.has_bias
        dy2 = dy.contiguous().view(x2.shape)
        dx, dw, db = _backward(dy2, x2, w, mean, rstd, need_dw, need_db)
        if db is not None:
            db = db.to(ctx.bias_dtype)
        return (dx.view(dy.shape) if need_dx else None), dw, db, None, None


def fast_layer_norm(
    x: Tensor,
    normalized_shape: int | tuple[int, ...] | list[int] | torch.Size,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """LayerNorm of ``x`` over its last dimension by the Triton kernels (any leading shape).

    ``out_dtype`` defaults to ``x.dtype``; statistics are fp32 and the gradient of ``x`` comes
    back in ``x``'s dtype. Runs on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1``.
    """
    if triton is None:
        raise RuntimeError("fast_layer_norm needs triton")
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    if len(normalized_shape) != 1 or x.dim() == 0 or x.shape[-1] != normalized_shape[0]:
        raise ValueError(
            f"fast_layer_norm normalizes the last dim only: got normalized_shape "
            f"{tuple(normalized_shape)} for input of shape {tuple(x.shape)}"
        )
    n = normalized_shape[0]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(p.shape)}")
    return _FastLayerNormFn.apply(x, weight, bias, eps, out_dtype or x.dtype)


def _triton_out_dtype(x: Tensor, normalized_shape: tuple[int, ...]) -> torch.dtype | None:
    """The Triton path's output dtype when it applies to ``x``, else None (use PyTorch)."""
    if triton is None or not x.is_cuda or os.environ.get("NATTEN_EXT_FAST_LN", "1") == "0":
        return None
    if graph_capture_active():
        return None  # inductor fuses LayerNorm itself; traces and dispatch modes see the aten op
    if type(x) is not torch.Tensor:
        return None  # tensor subclasses
    if len(normalized_shape) != 1 or not _MIN_N <= normalized_shape[0] <= _MAX_N:
        return None
    if x.dtype not in _FLOAT_DTYPES or x.dim() == 0 or x.shape[-1] != normalized_shape[0]:
        return None
    if torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        return dtype if dtype in _HALF_DTYPES else None
    return x.dtype if x.dtype in _HALF_DTYPES else None


class FastLayerNorm(torch.nn.LayerNorm):
    """``nn.LayerNorm`` that runs the Triton kernels for 16-bit / autocast work on CUDA.

    Under CUDA autocast (bf16/fp16) the output is the autocast dtype rather than fp32. Plain
    fp32, CPU, TorchScript, FX, torch.compile and dispatch-mode tracing use ``nn.LayerNorm``.
    """

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)
        if isinstance(input, torch.fx.Proxy):
            return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)
        return self._eager_forward(input)

    @torch.jit.unused
    def _eager_forward(self, input: Tensor) -> Tensor:
        """Triton when ``_triton_out_dtype`` allows it, else ``nn.LayerNorm.forward``."""
        out_dtype = _triton_out_dtype(input, tuple(self.normalized_shape))
        if out_dtype is None:
            return super().forward(input)
        return _FastLayerNormFn.apply(input, self.weight, self.bias, self.eps, out_dtype)


LayerNorm = FastLayerNorm  # what the models build their LayerNorm layers with

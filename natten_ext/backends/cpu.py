"""CPU backend: a small C kernel (``csrc/na_cpu.c``), built on first use with the system's C
compiler and cached, called through ctypes; its rows run on PyTorch's OpenMP threads where the
compiler has OpenMP, on a Python thread pool otherwise.

Each query row is one pass over its window: the logits, the softmax and the weighted sum of
values without materialising a tile's scores, so no (query, key) pair outside a window is ever
evaluated (the tiled backend's 4x4 tiles evaluate about twice as many). The backward stores the
probabilities and logit gradients of every (query, slot) pair (O(N*K), like the reference), then
sums each key's gradient over the pairs that reach it (an inverse window table): every output
row is written by one thread in a fixed order, so results are deterministic and independent of
the thread count. Windows are tables built once per configuration, so every rank, dilation and
causal setting runs the same code. float32 and float64 are computed in their own precision,
bfloat16 and float16 in float32.

The library is compiled (about a second, no PyTorch headers) into
``$NATTEN_EXT_CACHE`` (default ``~/.cache/natten_ext``), keyed by the sources, the compiler and
the CPU; it is written to a temporary file and renamed, so concurrent first calls are safe.
Without a C compiler, or with ``NATTEN_EXT_CPU_KERNEL=0``, the automatic choice skips this
backend (the tiled one serves CPU calls); if a build fails, the calls fall back to the tiled
backend with one warning.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..utils.windows import window_table
from . import tiled

NAME = "cpu"
ENV_DISABLE = "NATTEN_EXT_CPU_KERNEL"
ENV_CACHE = "NATTEN_EXT_CACHE"
ENV_OPENMP = "NATTEN_EXT_CPU_OPENMP"  # "0": split rows on Python threads even with OpenMP
_SOURCES = ("na_cpu.c", "na_cpu_body.h")
_ABI_VERSION = 4
_MAX_WINDOW = 4096  # slots (and head_dim) held in stack buffers per row
# gnu11, not c11: strict ISO mode turns off FMA contraction
_FLAGS = ("-O3", "-fPIC", "-shared", "-std=gnu11", "-ffp-contract=fast", "-fno-math-errno")


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc) or shutil.which("gcc") or shutil.which("clang")


# Decided at import (cheap, and traceable by torch.compile: a constant).
_ENABLED = os.environ.get(ENV_DISABLE, "1") != "0" and _compiler() is not None


def is_available() -> bool:
    return _ENABLED


def unsupported_reason(query, key, value, rpb, kernel_size, dilation, is_causal) -> str | None:
    if query.device.type != "cpu":
        return "the cpu backend runs on CPU tensors only"
    if math.prod(kernel_size) > _MAX_WINDOW or query.shape[-1] > _MAX_WINDOW:
        return f"windows and head_dim of at most {_MAX_WINDOW} (the tiled backend serves larger)"
    return None


# ------------------------------------------------------------------------------------- build


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    text += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return text


def _cache_dir() -> Path:
    root = os.environ.get(ENV_CACHE)
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "natten_ext"


def _compile(cc: str, src: Path, target: Path) -> str | None:
    """Build ``target`` (atomically); returns None, or the compiler's complaint."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".tmp")
    os.close(fd)
    error = ""
    try:
        # OpenMP where the compiler has it (see _run); some compilers / CPUs lack -march=native
        for extra in (("-fopenmp", "-march=native"), ("-fopenmp",), ("-march=native",), ()):
            cmd = [cc, *_FLAGS, *extra, "-o", tmp, str(src), "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if proc.returncode == 0:
                os.replace(tmp, target)
                return None
            error = proc.stderr.strip()[-2000:]
        return error or "the compiler failed"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_build_lock = threading.Lock()


@functools.cache
def library() -> ctypes.CDLL | None:
    """The built kernel library (building it on first use), or None where that fails."""
    cc = _compiler()
    if cc is None:
        return None
    src_dir = Path(__file__).with_name("csrc")
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((src_dir / name).read_bytes())
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    for part in (version, " ".join(_FLAGS), _cpu_signature(), str(_ABI_VERSION)):
        digest.update(part.encode())
    target = _cache_dir() / f"na_cpu-{digest.hexdigest()[:16]}.so"
    with _build_lock:
        try:
            error = None if target.exists() else _compile(cc, src_dir / "na_cpu.c", target)
            lib = None if error else ctypes.CDLL(str(target))
        except (OSError, subprocess.SubprocessError) as exc:  # unwritable cache, noexec, timeout
            error, lib = f"{type(exc).__name__}: {exc}", None
    if lib is not None:
        lib.na_cpu_abi_version.restype = ctypes.c_int64
        if lib.na_cpu_abi_version() != _ABI_VERSION:
            error, lib = f"{target} is not this version's library", None
    if lib is None:
        warnings.warn(
            f"natten_ext: building the CPU kernel with {cc} failed, CPU calls use the tiled "
            f"backend instead ({ENV_DISABLE}=0 silences this):\n{error}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    _declare(lib)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    lib.na_cpu_openmp.restype = i64
    lib.openmp = bool(lib.na_cpu_openmp())
    rows = [p, f64, i64, i64, i64]  # strides, scale, first row, end row, threads
    for sfx in ("f32", "f64"):
        getattr(lib, f"na_fwd_{sfx}").argtypes = [p] * 9 + [i64] * 5 + rows
        getattr(lib, f"na_bwd_q_{sfx}").argtypes = [p] * 11 + [i64] * 5 + rows
        getattr(lib, f"na_bwd_kv_{sfx}").argtypes = [p] * 10 + [i64] * 4 + rows
        for kind in ("fwd", "bwd_q", "bwd_kv"):
            getattr(lib, f"na_{kind}_{sfx}").restype = None


# ------------------------------------------------------------------------------------ tables


@functools.lru_cache(maxsize=128)
def _tables(spatial, kernel_size, dilation, is_causal) -> tuple[torch.Tensor, ...]:
    """int32 ``(nbr [N, K] (-1: slot outside a causal window), bins [N, K], order [N], off [N + 1],
    ent_q [pairs], ent_pair [pairs])`` and the bins as int64 (for ``index_add``): the window
    table, the order the kernels visit tokens in (dilation group by group: consecutive queries
    then share their keys), and the inverse table (per key ``j``, entries ``off[j]:off[j + 1]``
    give the queries and flat (query, slot) pairs that reach it, in ascending order)."""
    key, valid, bias = window_table(spatial, kernel_size, dilation, is_causal)
    n = key.shape[0]
    nbr = key.masked_fill(~valid, -1)
    flat = nbr.reshape(-1)
    pairs = torch.nonzero(flat >= 0).squeeze(1)
    keys = flat[pairs]
    by_key = torch.argsort(keys, stable=True)
    off = torch.zeros(n + 1, dtype=torch.long)
    off[1:] = torch.cumsum(torch.bincount(keys, minlength=n), 0)
    if pairs.numel() >= 2**31:
        raise ValueError("neighborhood too large for the cpu backend's int32 tables")
    ent = pairs[by_key]
    window = key.shape[1]
    group = torch.zeros(n, dtype=torch.long)
    token = torch.arange(n)
    for axis, (length, dil) in enumerate(zip(spatial, dilation)):
        stride = math.prod(spatial[axis + 1 :])
        group = group * dil + (token // stride) % length % dil
    visit = torch.argsort(group * n + token)
    return (nbr.int().contiguous(), bias.int().contiguous(), visit.int().contiguous(), off.int(),
            (ent // window).int().contiguous(), ent.int().contiguous(),
            bias.reshape(-1).contiguous())  # fmt: skip


# ----------------------------------------------------------------------------------- running


def _rows_view(t: torch.Tensor, ct: torch.dtype) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``t`` ``[B, *spatial, h, D]`` in the compute dtype with a unit last stride and spatial axes
    that flatten to one token axis, and its (batch, token, head) element strides."""
    t = t.to(ct)
    ndim = t.dim() - 3
    st, sh = t.stride(), t.shape
    flat = t.stride(-1) == 1 and all(
        sh[a] == 1 or st[a] == st[a + 1] * sh[a + 1] for a in range(1, ndim)
    )
    if not flat:
        t = t.contiguous()
        st = t.stride()
    return t, (st[0], st[ndim], st[-2])


_pool: ThreadPoolExecutor | None = None
_pool_key = (0, 0)  # (threads, pid): a forked child does not inherit the parent's threads
# GNU OpenMP hangs in a forked child whose parent ran parallel regions (PyTorch's own operators
# included), so forked children split rows on the Python pool instead.
_forked = False
_OPENMP = os.environ.get(ENV_OPENMP, "1") != "0"


def _note_fork() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_note_fork)


def _uses_openmp(lib: ctypes.CDLL) -> bool:
    return lib.openmp and _OPENMP and not _forked


def _run(lib, fn, rows: int, *args) -> None:
    """``fn(*args, r0, r1, threads)`` over the rows ``[0, rows)`` on ``torch.get_num_threads()``
    threads: one call where the library has OpenMP (its threads are the ones PyTorch's operators
    run on, already awake: a Python pool's hand-off cost up to half of a small call), else one
    call per range on a Python thread pool (ctypes releases the GIL): without OpenMP, in forked
    children, and with ``NATTEN_EXT_CPU_OPENMP=0``."""
    global _pool, _pool_key
    threads = max(1, min(torch.get_num_threads(), rows // 16))
    if threads == 1 or _uses_openmp(lib):
        fn(*args, 0, rows, threads)
        return
    key = (threads, os.getpid())
    if _pool is None or _pool_key != key:
        if _pool is not None and _pool_key[1] == key[1]:
            _pool.shutdown(wait=True)
        _pool, _pool_key = ThreadPoolExecutor(threads, thread_name_prefix="natten_cpu"), key
    bounds = [rows * t // threads for t in range(threads + 1)]
    futures = [_pool.submit(fn, *args, bounds[t], bounds[t + 1], 1) for t in range(1, threads)]
    fn(*args, bounds[0], bounds[1], 1)
    for f in futures:
        f.result()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _strides(*parts: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor([s for part in parts for s in part], dtype=torch.int64)


def _setup(query, key, value, rpb, kernel_size, dilation, is_causal):
    ct = torch.float64 if query.dtype == torch.float64 else torch.float32
    spatial = tuple(query.shape[1:-2])
    (q, sq), (k, sk), (v, sv) = (_rows_view(t, ct) for t in (query, key, value))
    table = None if rpb is None else rpb.to(ct).reshape(rpb.shape[0], -1).contiguous()
    tables = _tables(spatial, tuple(kernel_size), tuple(dilation), tuple(is_causal))
    sfx = "f64" if ct == torch.float64 else "f32"
    return ct, sfx, (q, sq), (k, sk), (v, sv), table, tables


def _heads_last_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return (t.stride(0), t.stride(-2) * t.shape[-2], t.stride(-2))


# On Python threads, undilated maps of at most this many windows' worth of tokens go to the tiled
# backend: there a tile is the whole map, one dense product at BLAS speed (7x7 maps with 7x7
# windows: 2x faster than the row kernel split on Python threads). With OpenMP the kernel is
# faster on every map (7x7/16: 1.2-2.7x faster than the tiled backend), so none is handed off.
# Dilated maps always stay here: the tiled backend gathers each group's rows first.
_DENSE_WINDOWS = 2


def _delegate(lib, query, kernel_size, dilation) -> bool:
    """The tiled backend serves the call: no library, or a small undilated map while the rows are
    split on Python threads."""
    if lib is None:
        return True
    if _uses_openmp(lib):
        return False
    tokens = math.prod(query.shape[1:-2])
    return all(d == 1 for d in dilation) and tokens <= _DENSE_WINDOWS * math.prod(kernel_size)


def _attend(query, key, value, rpb, kernel_size, dilation, is_causal, scale, with_lse):
    lib = library()
    if _delegate(lib, query, kernel_size, dilation):
        args = (query, key, value, rpb, kernel_size, dilation, is_causal, scale)
        return tiled.forward(*args) if with_lse else tiled.inference(*args)
    ct, sfx, (q, sq), (k, sk), (v, sv), table, (nbr, bins, visit, *_) = _setup(
        query, key, value, rpb, kernel_size, dilation, is_causal
    )
    b, h, d = query.shape[0], query.shape[-2], query.shape[-1]
    n, window = nbr.shape
    out = torch.empty(query.shape, dtype=ct)
    lse = torch.empty(query.shape[:-1], dtype=torch.float32) if with_lse else None
    lse_st = (n * h, h, 1)
    st = _strides(sq, sk, sv, _heads_last_strides(out), lse_st)
    _run(lib, getattr(lib, f"na_fwd_{sfx}"), b * h * n, q.data_ptr(), k.data_ptr(), v.data_ptr(),
         _ptr(table), nbr.data_ptr(), bins.data_ptr(), visit.data_ptr(), out.data_ptr(), _ptr(lse),
         h, n, window, d, 0 if table is None else table.shape[1], st.data_ptr(),
         float(scale))  # fmt: skip
    out = out.to(query.dtype)
    return (out, lse) if with_lse else out


def forward(query, key, value, rpb, kernel_size, dilation, is_causal, scale):
    """Fused-API forward: ``(out [B, *sp, h, D] in query's dtype, lse [B, *sp, h] float32)``."""
    return _attend(query, key, value, rpb, kernel_size, dilation, is_causal, scale, True)


def inference(query, key, value, rpb, kernel_size, dilation, is_causal, scale):
    """Forward without the logsumexp (no gradient will be asked for)."""
    return _attend(query, key, value, rpb, kernel_size, dilation, is_causal, scale, False)


def backward(grad_out, query, key, value, rpb, out, lse, kernel_size, dilation, is_causal, scale):
    """Exact gradients ``(dq, dk, dv, drpb)``; recomputes the probabilities (``out`` and ``lse``
    are not needed)."""
    lib = library()
    if _delegate(lib, query, kernel_size, dilation):
        return tiled.backward(grad_out, query, key, value, rpb, out, lse, kernel_size, dilation,
                              is_causal, scale)  # fmt: skip
    ct, sfx, (q, sq), (k, sk), (v, sv), table, tables = _setup(
        query, key, value, rpb, kernel_size, dilation, is_causal
    )
    nbr, bins, visit, off, ent_q, ent_pair, bins64 = tables
    g, sg = _rows_view(grad_out, ct)
    b, h, d = query.shape[0], query.shape[-2], query.shape[-1]
    n, window = nbr.shape
    nb = 0 if table is None else table.shape[1]
    dq = torch.empty(query.shape, dtype=ct)
    probs = torch.empty(b, h, n, window, dtype=ct)
    d_logits = torch.empty_like(probs)
    st = _strides(sq, sk, sv, sg, _heads_last_strides(dq))
    _run(lib, getattr(lib, f"na_bwd_q_{sfx}"), b * h * n, q.data_ptr(), k.data_ptr(), v.data_ptr(),
         _ptr(table), nbr.data_ptr(), bins.data_ptr(), visit.data_ptr(), g.data_ptr(),
         dq.data_ptr(), probs.data_ptr(), d_logits.data_ptr(), h, n, window, d, nb, st.data_ptr(),
         float(scale))  # fmt: skip
    dk = torch.empty(key.shape, dtype=ct)
    dv = torch.empty(value.shape, dtype=ct)
    st = _strides(sq, sg, _heads_last_strides(dk), _heads_last_strides(dv))
    _run(lib, getattr(lib, f"na_bwd_kv_{sfx}"), b * h * n, q.data_ptr(), g.data_ptr(),
         probs.data_ptr(), d_logits.data_ptr(), visit.data_ptr(), off.data_ptr(), ent_q.data_ptr(),
         ent_pair.data_ptr(), dk.data_ptr(), dv.data_ptr(), h, n, window, d, st.data_ptr(),
         float(scale))  # fmt: skip
    drpb = None
    if rpb is not None:
        flat = torch.zeros(h, nb, dtype=ct)
        flat.index_add_(1, bins64, d_logits.sum(0).reshape(h, -1))
        drpb = flat.reshape(rpb.shape).to(rpb.dtype)
    return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype), drpb

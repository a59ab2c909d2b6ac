"""A NaN or infinity in one key or value reaches only the outputs whose windows contain it.

As with NATTEN's per-window kernels: a masked matrix product would spread it over a whole tile
(0 * NaN is NaN, NaN + -inf is NaN), so every backend is checked, the Triton kernels too (on the
GPU, and under Triton's interpreter where there is none).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from interpreter import run_under_interpreter

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import natten_ext  # noqa: E402
from natten_ext.backends import cpu, reference  # noqa: E402
from natten_ext.utils.windows import window_table  # noqa: E402

CASES = [
    # (spatial, kernel, dilation, causal, poisoned token (flat index), rpb)
    ((8, 8), (3, 3), (1, 1), (False, False), 27, True),  # small map: the reference's dense path
    ((12, 10), (5, 3), (2, 1), (False, False), 0, True),  # a corner, dilated
    ((9, 11), (4, 3), (1, 2), (True, False), 40, False),  # causal axis, even kernel
    ((40,), (7,), (3,), (False,), 17, True),
    ((5, 6, 7), (3, 3, 3), (1, 2, 1), (False, False, False), 100, False),
]


def expected_rows(spatial, ks, dil, causal, token) -> torch.Tensor:
    """[N] bool: the queries whose neighbourhood holds ``token``."""
    key, valid, _ = window_table(spatial, ks, dil, causal)
    return ((key == token) & valid).any(1)


def poisoned_outputs(backend, spatial, ks, dil, causal, token, use_rpb, which, device, dtype):
    """[N] bool: the queries whose output went non-finite with ``which`` (key/value) poisoned."""
    gen = torch.Generator().manual_seed(0)
    heads, dim = 2, 16
    shape = (1, *spatial, heads, dim)
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    target = {"key": k, "value": v}[which]
    target.view(1, -1, heads, dim)[0, token, 1, 3] = float("nan")
    # an infinite value always poisons its rows; an infinite key only where its logit is +inf
    target.view(1, -1, heads, dim)[0, token, 0, 5] = float("inf" if which == "value" else "nan")
    rpb = torch.randn(heads, *(2 * x - 1 for x in ks), generator=gen) if use_rpb else None
    args = [t.to(device, dtype) for t in (q, k, v)]
    rpb = None if rpb is None else rpb.to(device)
    fn = {1: natten_ext.na1d, 2: natten_ext.na2d, 3: natten_ext.na3d}[len(spatial)]
    with natten_ext.use_backend(backend):
        out = fn(*args, ks, dil, causal, rpb=rpb)
    bad = ~torch.isfinite(out.float().cpu()).reshape(-1, heads, dim)
    assert bad[:, 1].any(1).equal(bad[:, 0].any(1))  # both heads hit the same rows
    return bad.any(2).any(1)


@pytest.mark.parametrize("which", ["key", "value"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("path", ["cpu", "tiled", "reference-dense", "reference-gather"])
def test_nonfinite_stays_in_its_windows_cpu(path, case, which, monkeypatch):
    backend = path.split("-")[0]
    if path == "cpu":
        if not cpu.is_available():
            pytest.skip("no C compiler: the cpu backend is off")
        monkeypatch.setattr(cpu, "_DENSE_WINDOWS", 0)  # the C kernel on every map
    elif path == "reference-dense":
        monkeypatch.setattr(reference, "_DENSE_FACTOR", 10**9)
    elif path == "reference-gather":
        monkeypatch.setattr(reference, "_DENSE_FACTOR", 0)
    spatial, ks, dil, causal, token, _ = case
    got = poisoned_outputs(backend, *case, which, "cpu", torch.float32)
    assert got.equal(expected_rows(spatial, ks, dil, causal, token))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("which", ["key", "value"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_nonfinite_stays_in_its_windows_triton_gpu(case, which, dtype):
    spatial, ks, dil, causal, token, _ = case
    got = poisoned_outputs("triton", *case, which, "cuda", dtype)
    assert got.equal(expected_rows(spatial, ks, dil, causal, token))


def _interpreter_main() -> None:
    for case in CASES[:3]:
        for which in ("key", "value"):
            got = poisoned_outputs("triton", *case, which, "cpu", torch.float32)
            want = expected_rows(*case[:4], case[4])
            assert got.equal(want), (case, which, got.nonzero().flatten(), want.nonzero().flatten())
    print("INTERPRETER OK")


def test_nonfinite_triton_kernels_under_interpreter():
    run_under_interpreter(__file__)


if __name__ == "__main__" and "--interpret" in sys.argv:
    _interpreter_main()

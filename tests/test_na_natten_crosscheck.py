"""Cross-check against the upstream `natten` package (its Flex backend runs on the CPU), no RPB."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from na_oracle import rel_err

import natten_ext

natten = pytest.importorskip("natten")

FUSED = {1: natten_ext.na1d, 2: natten_ext.na2d, 3: natten_ext.na3d}
UPSTREAM = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}


def _cases(ndim: int, count: int, seed: int):
    rng = random.Random(seed)
    for _ in range(count):
        spatial, ks, dil, causal = [], [], [], []
        for _ in range(ndim):
            length = rng.randint(4, {1: 40, 2: 12, 3: 7}[ndim])
            k = rng.randint(2, min(length, 7))
            spatial.append(length)
            ks.append(k)
            dil.append(rng.randint(1, max(1, length // k)))
            causal.append(rng.random() < 0.3)
        yield tuple(spatial), tuple(ks), tuple(dil), tuple(causal)


def _upstream(ndim, q, k, v, ks, dil, causal):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return UPSTREAM[ndim](q, k, v, kernel_size=ks, dilation=dil, is_causal=causal)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_outputs_match_natten_cpu(ndim):
    # natten's CPU path (Flex attention) has no backward: outputs only here, gradients on CUDA.
    for i, (spatial, ks, dil, causal) in enumerate(_cases(ndim, 5, 17 * ndim)):
        gen = torch.Generator().manual_seed(i)
        q, k, v = (torch.randn(2, *spatial, 2, 16, generator=gen) for _ in range(3))
        ours = FUSED[ndim](q, k, v, ks, dil, causal)
        theirs = _upstream(ndim, q, k, v, ks, dil, causal)
        assert rel_err(ours, theirs) < 1e-5, (spatial, ks, dil, causal)


@pytest.mark.gpu
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_outputs_and_gradients_match_natten_cuda(ndim):
    for i, (spatial, ks, dil, causal) in enumerate(_cases(ndim, 4, 19 * ndim)):
        gen = torch.Generator().manual_seed(i)
        q, k, v = (torch.randn(2, *spatial, 2, 32, generator=gen).cuda() for _ in range(3))
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        ours = FUSED[ndim](*leaves, ks, dil, causal)
        grad = torch.randn_like(ours)
        ours.backward(grad)
        theirs_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        theirs = _upstream(ndim, *theirs_leaves, ks, dil, causal)
        theirs.backward(grad)
        case = (spatial, ks, dil, causal)
        assert rel_err(ours, theirs) < 1e-4, case
        for a, b in zip(leaves, theirs_leaves):
            assert rel_err(a.grad, b.grad) < 1e-4, case


def test_natten_backend_serves_calls_without_rpb():
    q, k, v = (torch.randn(1, 9, 10, 2, 16) for _ in range(3))
    ref = natten_ext.na2d(q, k, v, 3, (2, 3), (False, True))
    with natten_ext.use_backend("natten"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = natten_ext.na2d(q, k, v, 3, (2, 3), (False, True))
    assert rel_err(out, ref) < 1e-5
    with (
        natten_ext.use_backend("natten"),
        pytest.raises(RuntimeError, match=r"'natten' was forced but cannot serve.*positional bias"),
    ):
        natten_ext.na2d(q, k, v, 3, rpb=torch.zeros(2, 5, 5))
    if not torch.cuda.is_available():
        with (
            natten_ext.use_backend("natten"),
            pytest.raises(RuntimeError, match="no backward"),
        ):
            natten_ext.na2d(q.requires_grad_(True), k, v, 3)


@pytest.mark.gpu
def test_natten_backend_trains_on_cuda():
    q, k, v = (torch.randn(2, 12, 11, 2, 32, device="cuda", requires_grad=True) for _ in range(3))
    with natten_ext.use_backend("reference"):
        ref = natten_ext.na2d(q, k, v, 5, (2, 1))
        ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    with natten_ext.use_backend("natten"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = natten_ext.na2d(q, k, v, 5, (2, 1))
        grads = torch.autograd.grad(out.sum(), (q, k, v))
    # natten's CUDA path (Flex attention) is less exact than float32: 8e-4 measured on an H200.
    assert rel_err(out, ref) < 2e-3
    for a, b in zip(grads, ref_grads):
        assert rel_err(a, b) < 2e-3

"""The fused and unfused neighborhood-attention ops against the brute-force oracle."""

from __future__ import annotations

import random

import pytest
import torch
from na_oracle import axis_neighbors, oracle_attention, oracle_weights, rel_err

import natten_ext
from natten_ext.backends import cpu as cpu_backend
from natten_ext.backends import reference
from natten_ext.utils.windows import axis_table

FUSED = {1: natten_ext.na1d, 2: natten_ext.na2d, 3: natten_ext.na3d}
QK = {1: natten_ext.na1d_qk, 2: natten_ext.na2d_qk, 3: natten_ext.na3d_qk}
AV = {1: natten_ext.na1d_av, 2: natten_ext.na2d_av, 3: natten_ext.na3d_av}

CUDA = [pytest.param("cuda", marks=pytest.mark.gpu)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def random_case(rng: random.Random, ndim: int, max_len: int):
    """Random (spatial, kernel, dilation, causal, use_rpb) within the spec's rules."""
    spatial, ks, dil, causal = [], [], [], []
    for _ in range(ndim):
        length = rng.randint(2, max_len)
        k = rng.randint(2, min(length, 7))
        d = rng.randint(1, max(1, length // k))
        spatial.append(length)
        ks.append(k)
        dil.append(d)
        causal.append(rng.random() < 0.3)
    rpb_ok = all(k % 2 for k in ks) and not any(causal)
    return tuple(spatial), tuple(ks), tuple(dil), tuple(causal), rpb_ok and rng.random() < 0.7


def make_inputs(spatial, ks, heads, dim, dtype, device, use_rpb, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *spatial, heads, dim)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    rpb = None
    if use_rpb:
        rpb = torch.randn(heads, *(2 * x - 1 for x in ks), generator=gen).to(device, dtype)
    return q, k, v, rpb


# ----------------------------------------------------------------------------- spec examples


def test_worked_examples_of_the_spec():
    def keys(L, k, d, i):
        return sorted(axis_table(L, k, d, False)[0][i].tolist())

    assert keys(10, 3, 2, 0) == [0, 2, 4]
    assert keys(10, 3, 2, 8) == [4, 6, 8]
    assert keys(10, 3, 2, 5) == [3, 5, 7]
    assert keys(11, 3, 3, 8) == [2, 5, 8]
    assert keys(8, 4, 1, 0) == [0, 1, 2, 3]
    assert keys(8, 4, 1, 3) == [1, 2, 3, 4]
    assert keys(8, 4, 1, 7) == [4, 5, 6, 7]


@pytest.mark.parametrize(
    "L,k,d,causal",
    [
        (10, 3, 2, False),
        (11, 3, 3, True),
        (9, 4, 2, False),
        (13, 5, 1, True),
        (7, 7, 1, False),
        (12, 2, 5, True),
    ],
)
def test_axis_table_matches_oracle(L, k, d, causal):
    key, valid, bias = axis_table(L, k, d, causal)
    for i, nbrs in enumerate(axis_neighbors(L, k, d, causal)):
        got = {int(key[i, j]): int(bias[i, j]) for j in range(k) if valid[i, j]}
        assert got == nbrs


def test_rpb_index_ranges():
    # Interior queries use [rL, rL+k); the first query of a group [k-1, 2k-1); the last [0, k).
    _key, _, bias = axis_table(20, 5, 2, False)
    assert sorted(bias[0].tolist()) == list(range(4, 9))
    assert sorted(bias[19].tolist()) == list(range(0, 5))
    assert sorted(bias[10].tolist()) == list(range(2, 7))


def test_kernel_equal_to_length_is_self_attention():
    q, k, v, _ = make_inputs((5, 6), (5, 6), 2, 8, torch.float64, "cpu", False)
    out = natten_ext.na2d(q, k, v, (5, 6))
    ref = (
        torch.nn.functional.scaled_dot_product_attention(
            *(t.flatten(1, 2).transpose(1, 2) for t in (q, k, v))
        )
        .transpose(1, 2)
        .reshape(q.shape)
    )
    assert rel_err(out, ref) < 1e-12


# ------------------------------------------------------------------- random sweeps vs oracle


def _check_case(ndim, case, dtype, device, seed, heads=2, dim=8):
    spatial, ks, dil, causal, use_rpb = case
    q, k, v, rpb = make_inputs(spatial, ks, heads, dim, dtype, device, use_rpb, seed=seed)
    leaves = [q, k, v] + ([rpb] if rpb is not None else [])
    for t in leaves:
        t.requires_grad_(True)
    out = FUSED[ndim](q, k, v, ks, dil, causal, rpb=rpb)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_leaves = [t.detach().double().cpu().requires_grad_(True) for t in leaves]
    ref_rpb = ref_leaves[3] if rpb is not None else None
    ref = oracle_attention(*ref_leaves[:3], ks, dil, causal, rpb=ref_rpb)
    ref.backward(grad.double().cpu())
    tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out.cpu(), ref) < tol, f"output {case}"
    for name, t, r in zip(["q", "k", "v", "rpb"], leaves, ref_leaves):
        assert t.grad is not None and t.grad.dtype == t.dtype
        assert rel_err(t.grad.cpu(), r.grad) < tol, f"d{name} {case}"


@pytest.fixture(params=["cpu", "tiled", "dense", "gather"])
def reference_path(request, monkeypatch):
    """Force a CPU path: the C kernel (its small-map hand-off on Python threads off), the
    tiled backend, or the reference backend through its dense (small maps) or gather path."""
    if request.param == "cpu":
        if not cpu_backend.is_available():
            pytest.skip("no C compiler: the cpu backend is off")
        monkeypatch.setattr(cpu_backend, "_DENSE_WINDOWS", 0)
    if request.param in ("cpu", "tiled"):
        with natten_ext.use_backend(request.param):
            yield request.param
        return
    monkeypatch.setattr(reference, "_DENSE_FACTOR", 10**9 if request.param == "dense" else 0)
    with natten_ext.use_backend("reference"):
        yield request.param


@pytest.mark.parametrize("device", ["cpu", *CUDA])
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_fused_matches_oracle_random(ndim, dtype, device, reference_path):
    if reference_path == "cpu" and device != "cpu":
        pytest.skip("the cpu backend serves CPU tensors only")
    rng = random.Random(1000 * ndim + hash(str(dtype)) % 997)
    max_len = {1: 24, 2: 11, 3: 6}[ndim]
    for seed in range(6 if ndim < 3 else 3):
        case = random_case(rng, ndim, max_len)
        _check_case(ndim, case, dtype, device, seed)


@pytest.mark.parametrize("device", [*CUDA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_fused_auto_backend_matches_oracle_cuda(ndim, dtype, device):
    rng = random.Random(7 * ndim)
    for seed in range(4):
        case = random_case(rng, ndim, {1: 40, 2: 14, 3: 7}[ndim])
        _check_case(ndim, case, dtype, device, seed, heads=3, dim=32)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_gradcheck_fused(ndim, reference_path):
    spatial = {1: (7,), 2: (5, 4), 3: (3, 4, 3)}[ndim]
    ks = {1: (3,), 2: (3, 3), 3: (3, 3, 3)}[ndim]
    dil = {1: (2,), 2: (1, 1), 3: (1, 1, 1)}[ndim]
    heads = 2 if ndim < 3 else 1
    q, k, v, rpb = make_inputs(spatial, ks, heads, 3, torch.float64, "cpu", True, batch=1)
    args = [t.requires_grad_(True) for t in (q, k, v, rpb)]

    def fn(q, k, v, rpb):
        return FUSED[ndim](q, k, v, ks, dil, rpb=rpb)

    # 3-D has ~450 inputs: the randomised fast mode keeps it to seconds.
    assert torch.autograd.gradcheck(fn, args, fast_mode=ndim == 3)


def test_gradcheck_fused_causal_even_kernel(reference_path):
    q, k, v, _ = make_inputs((6, 5), (4, 2), 1, 3, torch.float64, "cpu", False, batch=1)
    args = [t.requires_grad_(True) for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: natten_ext.na2d(q, k, v, (4, 2), (1, 2), (True, False)), args
    )


# ------------------------------------------------------------------------------ unfused API


@pytest.mark.parametrize("device", ["cpu", *CUDA])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_unfused_qk_av_match_oracle(ndim, device):
    rng = random.Random(31 * ndim)
    for seed in range(3):
        spatial, ks, dil, causal, use_rpb = random_case(rng, ndim, {1: 16, 2: 8, 3: 5}[ndim])
        q, k, v, rpb = make_inputs(spatial, ks, 2, 4, torch.float64, device, use_rpb, seed=seed)
        q, k, v = (t.movedim(-2, 1).contiguous() for t in (q, k, v))  # heads-first
        attn = QK[ndim](q, k, ks, dil, causal, rpb=rpb)
        ref = oracle_weights(
            q.cpu(), k.cpu(), ks, dil, causal, rpb=None if rpb is None else rpb.cpu()
        )
        finite = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(attn.cpu()), finite)
        assert torch.allclose(attn.cpu()[finite], ref[finite])
        probs = attn.softmax(-1)
        out = AV[ndim](probs, v, ks, dil, causal)
        fused = FUSED[ndim](
            *(t.movedim(1, -2) for t in (q, k, v)), ks, dil, causal, rpb=rpb, scale=1.0
        )
        assert rel_err(out.movedim(1, -2).cpu(), fused.cpu()) < 1e-12


def test_gradcheck_unfused():
    q, k, v, rpb = make_inputs((6, 5), (3, 3), 2, 3, torch.float64, "cpu", True, batch=1)
    q, k, v = (t.movedim(-2, 1).contiguous().requires_grad_(True) for t in (q, k, v))
    rpb.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda q, k, rpb: natten_ext.na2d_qk(q, k, 3, (2, 1), rpb=rpb), (q, k, rpb)
    )
    attn = torch.randn(1, 2, 6, 5, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, v: natten_ext.na2d_av(a, v, 3, (2, 1)), (attn, v))


def test_natten014_aliases_argument_order():
    q, k, v, rpb = make_inputs((9, 8), (3, 3), 2, 4, torch.float64, "cpu", True)
    q, k, v = (t.movedim(-2, 1) for t in (q, k, v))
    attn = natten_ext.natten2dqkrpb(q, k, rpb, 3, 2)
    assert torch.equal(attn, natten_ext.na2d_qk(q, k, 3, 2, rpb=rpb))
    assert torch.equal(natten_ext.natten2dqk(q, k, 3, 2), natten_ext.na2d_qk(q, k, 3, 2))
    probs = attn.softmax(-1)
    assert torch.equal(natten_ext.natten2dav(probs, v, 3, 2), natten_ext.na2d_av(probs, v, 3, 2))
    q1, k1, v1 = (t[:, :, 0] for t in (q, k, v))
    r1 = rpb[:, 0]
    a1 = natten_ext.natten1dqkrpb(q1, k1, r1, 3, 2)
    assert torch.equal(a1, natten_ext.na1d_qk(q1, k1, 3, 2, rpb=r1))
    assert torch.equal(natten_ext.natten1dqk(q1, k1, 3, 2), natten_ext.na1d_qk(q1, k1, 3, 2))
    assert torch.equal(
        natten_ext.natten1dav(a1.softmax(-1), v1, 3, 2),
        natten_ext.na1d_av(a1.softmax(-1), v1, 3, 2),
    )


# ----------------------------------------------------------------------- memory and dtypes


def test_large_map_runs_in_n_times_k_memory():
    """128x128, k=13, d=4, 4 heads, head_dim 32: full attention weights would need 4 GiB."""
    import resource

    q, k, v, rpb = make_inputs((128, 128), (13, 13), 4, 32, torch.float32, "cpu", True, batch=1)
    for t in (q, k, v, rpb):
        t.requires_grad_(True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = natten_ext.na2d(q, k, v, 13, 4, rpb=rpb)
    out.sum().backward()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert all(t.grad is not None for t in (q, k, v, rpb))
    # N*K*heads floats = 42 MiB per weights tensor; N^2*heads would be 4096 MiB.
    assert grown_mib < 1500


def test_half_precision_softmax_is_float32():
    # Logits of magnitude ~1e4 overflow a float16 exp/sum if the softmax ran in half precision.
    q, k, v, _ = make_inputs((8, 8), (3, 3), 1, 16, torch.float16, "cpu", False)
    out = natten_ext.na2d(q * 30, k * 30, v, 3)
    assert torch.isfinite(out).all()
    ref = oracle_attention(
        (q * 30).double(), (k * 30).double(), v.double(), (3, 3), (1, 1), (False, False)
    )
    assert rel_err(out, ref) < 1e-2


def test_non_contiguous_inputs():
    q, k, v, rpb = make_inputs((9, 10), (3, 3), 2, 8, torch.float32, "cpu", True)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not qt.is_contiguous()
    assert torch.allclose(
        natten_ext.na2d(qt, kt, vt, 3, 3, rpb=rpb), natten_ext.na2d(q, k, v, 3, 3, rpb=rpb)
    )


def test_eager_path_equals_custom_op_path():
    """Eager calls skip the custom-op layers; under a dispatch mode the registered op runs."""
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v, rpb = make_inputs((9, 8), (3, 3), 2, 8, torch.float64, "cpu", True)
    results = []
    for capture in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, rpb)]
        with FlopCounterMode(display=False) if capture else torch.enable_grad() as counter:
            out = natten_ext.na2d(*leaves[:3], 3, (2, 1), rpb=leaves[3])
            out.backward(torch.ones_like(out))
        if capture:
            counts = counter.get_flop_counts()["Global"]
            assert torch.ops.natten_ext.na_forward in counts
            assert torch.ops.natten_ext.na_backward in counts
        results.append([out.detach(), *(t.grad for t in leaves)])
    for a, b in zip(*results):
        assert torch.equal(a, b)

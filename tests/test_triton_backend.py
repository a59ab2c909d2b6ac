"""The fused Triton backend against a brute-force float64 explicit-mask oracle (spec section 7).

GPU tests (marked ``gpu``) sweep random 1-D/2-D/3-D cases in every dtype, outputs and the four
gradients. On a CPU-only machine a few tiny cases run the kernels themselves under Triton's
interpreter, in a subprocess (``TRITON_INTERPRET`` must be set before triton is imported).
"""

from __future__ import annotations

import math
import os
import random
import sys
from pathlib import Path

import pytest
import torch
from interpreter import run_under_interpreter
from scripts_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


# ---------------------------------------------------------------------------------------------
# Oracle: the spec's formulas evaluated pair by pair, then dense masked softmax in float64.
# ---------------------------------------------------------------------------------------------
def _axis_pairs(length: int, k: int, d: int, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[L, L] neighbour mask and rpb index (query i, key y) along one axis (spec sections 1, 3)."""
    mask = torch.zeros(length, length, dtype=torch.bool)
    index = torch.zeros(length, length, dtype=torch.long)
    for i in range(length):
        g, ip = i % d, i // d
        lg = math.ceil((length - g) / d)
        for y in range(length):
            if y % d != g:
                continue
            yp = y // d
            if causal:
                inside = max(ip - k + 1, 0) <= yp <= ip
            else:
                y0 = min(max(ip - k // 2, 0), lg - k)
                inside = y0 <= yp < y0 + k
            mask[i, y] = inside
            index[i, y] = (k - 1) + (y - i) // d
    return mask, index


def oracle(query, key, value, rpb, kernel_size, dilation, is_causal, scale):
    """Heads-last float64 neighborhood attention with an explicit [N, N] mask: (out, lse)."""
    ndim = len(kernel_size)
    batch, *spatial, heads, dim = query.shape
    mask = torch.ones((), dtype=torch.bool)
    index = torch.zeros((), dtype=torch.long)
    for axis in range(ndim):
        m, p = _axis_pairs(spatial[axis], kernel_size[axis], dilation[axis], is_causal[axis])
        shape = [1] * (2 * ndim)
        shape[axis], shape[ndim + axis] = spatial[axis], spatial[axis]
        mask = mask & m.view(shape)
        index = index * (2 * kernel_size[axis] - 1) + p.view(shape)
    n = math.prod(spatial)
    mask = mask.expand(*spatial, *spatial).reshape(n, n)
    index = index.expand(*spatial, *spatial).reshape(n, n).masked_fill(~mask, 0)
    q, k, v = (
        t.double().reshape(batch, n, heads, dim).transpose(1, 2) for t in (query, key, value)
    )
    logits = scale * q @ k.transpose(-1, -2)
    mask, index = mask.to(q.device), index.to(q.device)
    if rpb is not None:
        logits = logits + rpb.double().reshape(heads, -1)[:, index]
    logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits, -1)
    out = torch.softmax(logits, -1) @ v
    out = out.transpose(1, 2).reshape(batch, *spatial, heads, dim)
    return out, lse.transpose(1, 2).reshape(batch, *spatial, heads)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def random_case(rng: random.Random, ndim: int, max_len: int = 12) -> dict:
    """Random lengths, kernels, dilations, causal flags and rpb with L >= k*d (spec section 7)."""
    spatial, ks, dil, causal = [], [], [], []
    for _ in range(ndim):
        k = rng.randint(2, 5 if ndim == 3 else 7)
        d = rng.randint(1, 3)
        length = rng.randint(k * d, max(k * d, max_len))
        spatial.append(length)
        ks.append(k)
        dil.append(d)
        causal.append(rng.random() < 0.3)
    use_rpb = all(k % 2 == 1 for k in ks) and not any(causal) and rng.random() < 0.7
    return {
        "spatial": tuple(spatial),
        "kernel_size": tuple(ks),
        "dilation": tuple(dil),
        "is_causal": tuple(causal),
        "rpb": use_rpb,
        "batch": rng.randint(1, 2),
        "heads": rng.randint(1, 3),
        "head_dim": rng.choice([16, 32]),
    }


def check_case(case: dict, dtype: torch.dtype, device: str, seed: int) -> dict[str, float]:
    """Run the triton backend on ``case``; return relative errors of out, lse and the 4 grads."""
    from natten_ext.backends import triton_fused

    gen = torch.Generator().manual_seed(seed)
    shape = (case["batch"], *case["spatial"], case["heads"], case["head_dim"])
    q, k, v, g = (torch.randn(shape, generator=gen) for _ in range(4))
    ks = case["kernel_size"]
    rpb = None
    if case["rpb"]:
        rpb = torch.randn(case["heads"], *(2 * x - 1 for x in ks), generator=gen)
    scale = case["head_dim"] ** -0.5
    args = (case["kernel_size"], case["dilation"], case["is_causal"])

    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    rpb64 = rpb.double().requires_grad_(True) if rpb is not None else None
    ref_out, ref_lse = oracle(*leaves, rpb64, *args, scale)
    ref_grads = torch.autograd.grad(ref_out, [*leaves] + ([rpb64] if rpb is not None else []), g)

    qd, kd, vd, gd = (t.to(device=device, dtype=dtype) for t in (q, k, v, g))
    if case.get("noncontiguous"):
        # Same values, strided layouts: heads-first storage viewed heads-last.
        qd, kd, vd, gd = (_strided_copy(t) for t in (qd, kd, vd, gd))
    rpb_d = rpb.to(device) if rpb is not None else None
    reason = triton_fused.unsupported_reason(qd, kd, vd, rpb_d, *args)
    assert reason is None, reason
    out, lse = triton_fused.forward(qd, kd, vd, rpb_d, *args, scale)
    dq, dk, dv, drpb = triton_fused.backward(gd, qd, kd, vd, rpb_d, out, lse, *args, scale)
    errors = {
        "out": _rel(out, ref_out),
        "lse": _rel(lse, ref_lse),
        "dq": _rel(dq, ref_grads[0]),
        "dk": _rel(dk, ref_grads[1]),
        "dv": _rel(dv, ref_grads[2]),
    }
    assert out.dtype == dtype and dq.dtype == dtype and lse.dtype == torch.float32
    if rpb is not None:
        assert drpb is not None and drpb.shape == rpb.shape
        errors["drpb"] = _rel(drpb, ref_grads[3])
    else:
        assert drpb is None
    return errors


def _strided_copy(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous tensor equal to ``t`` (heads-first storage, heads-last view)."""
    heads_first = t.movedim(-2, 1).contiguous()
    return heads_first.movedim(1, -2)


def _assert_close(errors: dict[str, float], dtype: torch.dtype, case: dict) -> None:
    tol = TOLERANCE[dtype]
    bad = {name: err for name, err in errors.items() if not err < tol}
    assert not bad, f"{case} {dtype}: relative errors over {tol}: {bad}"


# ---------------------------------------------------------------------------------------------
# Oracle self-checks (CPU, fast): the spec's worked examples.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "k", "d", "query", "keys"),
    [
        (10, 3, 2, 0, {0, 2, 4}),
        (10, 3, 2, 8, {4, 6, 8}),
        (10, 3, 2, 5, {3, 5, 7}),
        (11, 3, 3, 8, {2, 5, 8}),
        (8, 4, 1, 0, {0, 1, 2, 3}),
        (8, 4, 1, 3, {1, 2, 3, 4}),
        (8, 4, 1, 7, {4, 5, 6, 7}),
    ],
)
def test_oracle_worked_examples(length, k, d, query, keys):
    mask, _ = _axis_pairs(length, k, d, False)
    assert set(torch.nonzero(mask[query]).flatten().tolist()) == keys


def test_oracle_rpb_index_edges():
    _, index = _axis_pairs(9, 3, 1, False)
    mask, _ = _axis_pairs(9, 3, 1, False)
    assert index[0][mask[0]].tolist() == [2, 3, 4]  # first query: [k-1, 2k-1)
    assert index[8][mask[8]].tolist() == [0, 1, 2]  # last query: [0, k)
    assert index[4][mask[4]].tolist() == [1, 2, 3]  # interior: [rL, rL + k)


# ---------------------------------------------------------------------------------------------
# CPU: the kernels under Triton's interpreter (tiny cases, in a subprocess).
# ---------------------------------------------------------------------------------------------
INTERPRETER_CASES = [
    dict(spatial=(13,), kernel_size=(5,), dilation=(2,), is_causal=(False,), rpb=True,
         batch=1, heads=2, head_dim=16),
    dict(spatial=(9,), kernel_size=(4,), dilation=(1,), is_causal=(True,), rpb=False,
         batch=1, heads=1, head_dim=32),
    dict(spatial=(7, 9), kernel_size=(3, 3), dilation=(2, 1), is_causal=(False, False), rpb=True,
         batch=1, heads=1, head_dim=16, noncontiguous=True),
    dict(spatial=(5, 4, 6), kernel_size=(3, 2, 3), dilation=(1, 2, 1),
         is_causal=(False, True, False), rpb=False, batch=1, heads=1, head_dim=16),
]  # fmt: skip


def _interpreter_main() -> None:
    failures = []
    for i, case in enumerate(INTERPRETER_CASES):
        errors = check_case(case, torch.float32, "cpu", seed=i)
        bad = {n: e for n, e in errors.items() if not e < TOLERANCE[torch.float32]}
        print(case, {n: f"{e:.2e}" for n, e in errors.items()}, flush=True)
        if bad:
            failures.append((case, bad))
    if os.environ.get("NATTEN_EXT_DETERMINISTIC") != "1":
        os.environ["NATTEN_EXT_DETERMINISTIC"] = "1"
        errors = check_case(INTERPRETER_CASES[0], torch.float32, "cpu", seed=7)
        print("deterministic", errors, flush=True)
        if not errors["drpb"] < TOLERANCE[torch.float32]:
            failures.append(("deterministic", errors))
    from natten_ext.backends import triton_fused

    # non-default paths: the generic kernels on a 2-D case the one-block kernels would take,
    # and the one-block kernels with batch runs that do not divide the batch
    for name, tune, case in (
        ("generic", dict(box=False, bias_dot_fwd=True, block_m=32), INTERPRETER_CASES[2]),
        ("batch runs", dict(box_nb=2), dict(INTERPRETER_CASES[2], batch=3, head_dim=48)),
    ):
        assert triton_fused._plan_for(
            torch.empty(1, *case["spatial"], 1, case["head_dim"]), None, case["kernel_size"],
            case["dilation"], case["is_causal"],
        )["box"] is not None  # fmt: skip
        triton_fused._TUNE.update(tune)
        errors = check_case(case, torch.float32, "cpu", seed=8)
        triton_fused._TUNE.clear()
        print(name, errors, flush=True)
        if not max(errors.values()) < TOLERANCE[torch.float32]:
            failures.append((name, errors))
    if failures:
        raise SystemExit(f"FAILED: {failures}")
    print("INTERPRETER OK")


def test_kernels_under_triton_interpreter():
    run_under_interpreter(__file__)


# (override key, launch-plan kernel, launch option or constexpr it must reach)
_TUNE_TARGETS = {
    "tiles_fwd": ("fwd", ("T0", "T1", "T2")), "block_n_fwd": ("fwd", "BLOCK_N"),
    "warps_fwd": ("fwd", "num_warps"), "stages_fwd": ("fwd", "num_stages"),
    "tiles_dq": ("dq", ("T0", "T1", "T2")), "block_n": ("dq", "BLOCK_N"),
    "warps_dq": ("dq", "num_warps"), "stages_dq": ("dq", "num_stages"),
    "tiles_dkdv": ("dkdv", ("T0", "T1", "T2")), "block_m": ("dkdv", "BLOCK_M"),
    "warps_dkdv": ("dkdv", "num_warps"), "stages_dkdv": ("dkdv", "num_stages"),
    "box_tiles": ("box", ("T0", "T1")), "box_warps": ("box", "num_warps"),
    "box_stages": ("box", "num_stages"),
}  # fmt: skip


def test_tuning_script_overrides_reach_the_launches(monkeypatch):
    """Every variant scripts/tune_na.py times changes the launch it claims to (no dead keys)."""
    from natten_ext.backends import triton_fused

    tune_na = load_script("tune_na")
    found = tune_na.variants()
    assert [v[0] for v in found[:2]] == ["defaults", "defaults"]
    assert {v[0] for v in found[2:]} == {"fwd", "dq", "dkdv", "box"}
    for side, _, dil in tune_na.CASES.values():
        sp, d = (1, side, side), (1, dil, dil)
        for kernel, _, tune in found[2:]:
            monkeypatch.setattr(triton_fused, "_TUNE", dict(tune))
            tune_key = tuple(sorted(tune.items()))
            args = (2, (1, 7, 7), d, (False,) * 3, sp, 32, True, torch.bfloat16, False, tune_key)
            plan = triton_fused._launch_plan(*args)
            if kernel != "box":
                assert tune["box"] is False and plan["box"] is None
            elif plan["box"] is None:  # a level whose key box does not fit one block
                continue
            for key, value in tune.items():
                if key == "box":
                    continue
                target, field = _TUNE_TARGETS[key]
                assert target == kernel, (key, kernel)
                launches = [plan[target]] if target != "box" else plan["box"].values()
                for got in (g for g in launches if isinstance(g, dict)):
                    got = tuple(got[f] for f in field) if isinstance(field, tuple) else got[field]
                    assert got == value, (key, value, got)


def test_tuning_script_rejects_unknown_cases(capsys):
    with pytest.raises(SystemExit):
        load_script("tune_na").main(["--cases", "nat56,nat99"])
    assert "nat99" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# GPU: random sweeps, every dtype, against the oracle.
# ---------------------------------------------------------------------------------------------
def _sweep(ndim: int, count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [random_case(rng, ndim, max_len={1: 40, 2: 14, 3: 8}[ndim]) for _ in range(count)]


GPU_CASES = [(n, i, c) for n in (1, 2, 3) for i, c in enumerate(_sweep(n, 8, 100 + n))]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("ndim", "index", "case"), GPU_CASES, ids=lambda x: None)
def test_random_sweep_gpu(ndim, index, case, dtype):
    _assert_close(check_case(case, dtype, "cuda", seed=1000 * ndim + index), dtype, case)


GPU_EDGE_CASES = [
    # head dims outside the sweep, even kernels, L == k (self-attention), big 1-D kernel
    dict(spatial=(64,), kernel_size=(64,), dilation=(1,), is_causal=(False,), rpb=False,
         batch=2, heads=2, head_dim=128),
    dict(spatial=(300,), kernel_size=(31,), dilation=(3,), is_causal=(False,), rpb=True,
         batch=1, heads=2, head_dim=48),
    dict(spatial=(200,), kernel_size=(33,), dilation=(2,), is_causal=(True,), rpb=False,
         batch=1, heads=2, head_dim=80),
    dict(spatial=(17, 23), kernel_size=(7, 7), dilation=(2, 3), is_causal=(False, False),
         rpb=True, batch=2, heads=3, head_dim=96, noncontiguous=True),
    dict(spatial=(14, 14), kernel_size=(8, 6), dilation=(1, 2), is_causal=(False, True),
         rpb=False, batch=1, heads=2, head_dim=112),
    dict(spatial=(9, 10, 11), kernel_size=(3, 5, 3), dilation=(3, 2, 1),
         is_causal=(False, False, False), rpb=True, batch=1, heads=2, head_dim=64),
    dict(spatial=(7, 7), kernel_size=(7, 7), dilation=(1, 1), is_causal=(False, False), rpb=True,
         batch=3, heads=4, head_dim=32),
    # 2-D head_dim 32 (triton_fused._config): large and small maps, undilated and dilated
    dict(spatial=(30, 29), kernel_size=(7, 7), dilation=(1, 1), is_causal=(False, False),
         rpb=True, batch=1, heads=2, head_dim=32),
    dict(spatial=(14, 14), kernel_size=(7, 7), dilation=(1, 1), is_causal=(False, False),
         rpb=True, batch=2, heads=3, head_dim=32),
    dict(spatial=(14, 15), kernel_size=(7, 5), dilation=(2, 2), is_causal=(False, False),
         rpb=True, batch=2, heads=3, head_dim=32, noncontiguous=True),
    # the one-block kernels (groups of at most 8x8): a head dim short of its block, causal
    # axes, no rpb, a batch that its runs do not divide, 8x8 groups from dilation 4
    dict(spatial=(8, 7), kernel_size=(5, 7), dilation=(1, 1), is_causal=(False, False),
         rpb=True, batch=5, heads=2, head_dim=48),
    dict(spatial=(16, 14), kernel_size=(3, 4), dilation=(2, 2), is_causal=(True, True),
         rpb=False, batch=3, heads=2, head_dim=32),
    dict(spatial=(32, 32), kernel_size=(7, 7), dilation=(4, 4), is_causal=(False, False),
         rpb=True, batch=17, heads=2, head_dim=32, noncontiguous=True),
    dict(spatial=(6, 22), kernel_size=(5, 7), dilation=(1, 3), is_causal=(False, False),
         rpb=True, batch=2, heads=1, head_dim=16),
]  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", GPU_EDGE_CASES, ids=lambda c: "x".join(map(str, c["spatial"])))
def test_edge_cases_gpu(case, dtype):
    _assert_close(check_case(case, dtype, "cuda", seed=5), dtype, case)


DETERMINISTIC_CASES = [
    dict(spatial=(20, 18), kernel_size=(5, 7), dilation=(2, 1), is_causal=(False, False),
         rpb=True, batch=2, heads=2, head_dim=32),
    dict(spatial=(14, 14), kernel_size=(7, 7), dilation=(2, 2), is_causal=(False, False),
         rpb=True, batch=9, heads=2, head_dim=32),  # the one-block kernels
    dict(spatial=(70,), kernel_size=(9,), dilation=(3,), is_causal=(False,), rpb=True,
         batch=2, heads=2, head_dim=32),
    dict(spatial=(6, 7, 9), kernel_size=(3, 3, 5), dilation=(2, 1, 1),
         is_causal=(False, False, False), rpb=True, batch=2, heads=2, head_dim=16),
]  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case", DETERMINISTIC_CASES, ids=lambda c: "x".join(map(str, c["spatial"]))
)
def test_deterministic_drpb_gpu(case, monkeypatch):
    monkeypatch.setenv("NATTEN_EXT_DETERMINISTIC", "1")
    first = check_case(case, torch.float32, "cuda", seed=3)
    _assert_close(first, torch.float32, case)
    again = check_case(case, torch.float32, "cuda", seed=3)
    assert first == again  # bit-identical errors: the same drpb twice


TUNINGS = [
    {"box": False},  # the generic kernels where the one-block kernels would serve
    {"box_nb": 1, "box_stages": 1},
    {"box_nb": 3, "box_tiles": (4, 8)},
    {"bias_dot_fwd": True},
    {"block_m": 32, "block_n": 32, "stages_dkdv": 2},
    # a dK/dV config other than the default: 8x8 key tiles, 64 queries a step, 4 warps
    {"tiles_dkdv": (1, 8, 8), "block_m": 64, "warps_dkdv": 4, "stages_dkdv": 1},
    {"block_n_fwd": 64, "warps_fwd": 8, "warps_dq": 8, "warps_dkdv": 8},
]


@pytest.mark.gpu
@pytest.mark.parametrize("tune", TUNINGS, ids=lambda t: ",".join(t))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_default_configs_gpu(tune, dtype, monkeypatch):
    """Every tunable kernel path stays right, not only the defaults."""
    from natten_ext.backends import triton_fused

    monkeypatch.setattr(triton_fused, "_TUNE", dict(tune))
    for case in (GPU_EDGE_CASES[3], GPU_EDGE_CASES[6], GPU_EDGE_CASES[12], GPU_CASES[3][2]):
        _assert_close(check_case(case, dtype, "cuda", seed=11), dtype, case)


@pytest.mark.gpu
def test_bf16_with_fp32_rpb_and_poisoned_outputs_gpu():
    """Outputs are fully written (fresh empty buffers each call, values checked) for rpb fp32."""
    from natten_ext.backends import triton_fused

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 15, 15, 2, 32, device="cuda", dtype=torch.bfloat16) for _ in "qkv")
    rpb = torch.randn(2, 13, 13, device="cuda")
    # NaN-filled memory freed to the caching allocator is what the outputs below are carved from.
    poison = torch.full((4 << 20,), float("nan"), device="cuda")
    del poison
    out, lse = triton_fused.forward(q, k, v, rpb, (7, 7), (2, 2), (False, False), 32**-0.5)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    ref, _ = oracle(q, k, v, rpb, (7, 7), (2, 2), (False, False), 32**-0.5)
    assert _rel(out, ref) < 1e-2


@pytest.mark.gpu
def test_through_public_api_compile_and_graphs_gpu():
    """natten_ext.na2d on the triton backend: eager, torch.compile and CUDA-graph replay agree."""
    natten_ext = pytest.importorskip("natten_ext")
    torch.manual_seed(0)
    shape = (2, 14, 14, 2, 32)
    q, k, v = (torch.randn(shape, device="cuda", requires_grad=True) for _ in "qkv")
    rpb = torch.randn(2, 13, 13, device="cuda", requires_grad=True)

    def fn(q, k, v, rpb):
        return natten_ext.na2d(q, k, v, kernel_size=7, dilation=2, rpb=rpb)

    with natten_ext.use_backend("triton"):
        eager = fn(q, k, v, rpb)
        grads = torch.autograd.grad(eager.sum(), (q, k, v, rpb))
        compiled = torch.compile(fn, fullgraph=True)(q, k, v, rpb)
        cgrads = torch.autograd.grad(compiled.sum(), (q, k, v, rpb))
        static = [t.detach().clone() for t in (q, k, v)]
        graph = torch.cuda.CUDAGraph()
        fn(*static, rpb.detach())  # warm-up (compiles) outside capture
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            replay = fn(*static, rpb.detach())
        graph.replay()
        torch.cuda.synchronize()
    assert _rel(compiled, eager) < 1e-5
    assert _rel(replay, eager) < 1e-5
    for a, b in zip(cgrads, grads):
        assert _rel(a, b) < 1e-5


if __name__ == "__main__" and "--interpret" in sys.argv:
    _interpreter_main()


def test_tuning_script_marks_atomic_variants_and_filters_kernels(capsys):
    tune_na = load_script("tune_na")
    assert tune_na.deterministic({}, 14, 1)  # the shipped defaults: one-hot rpb gradient
    small = {"tiles_dq": (1, 2, 8), "block_n": 32, "warps_dq": 1, "stages_dq": 2}
    assert not tune_na.deterministic(small, 14, 1)  # 16-query tiles, 32 keys: atomics
    assert tune_na.deterministic({**small, "block_n": 128}, 14, 1)  # enough key rows per block
    only_dq = tune_na.jobs(["nat14"], ("dq",))
    assert {j[2] for j in only_dq} == {"defaults", "dq"}
    assert len(only_dq) == 2 + sum(v[0] == "dq" for v in tune_na.variants())
    with pytest.raises(SystemExit):
        tune_na.main(["--kernels", "dq,bwd"])
    assert "--kernels" in capsys.readouterr().err

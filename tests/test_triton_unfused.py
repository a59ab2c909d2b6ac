"""The Triton unfused ops (``na*d_qk`` / ``na*d_av``) against the reference ops and the oracle.

GPU tests (marked ``gpu``) sweep 1-D/2-D/3-D cases in float32, float16 and bfloat16, weights,
outputs and every gradient. Without CUDA a few tiny cases run the kernels under Triton's
interpreter in a subprocess (``TRITON_INTERPRET`` must be set before triton is imported).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
from interpreter import run_under_interpreter

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from na_oracle import oracle_weights, rel_err  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def random_case(rng: random.Random, ndim: int, max_len: int) -> dict:
    spatial, ks, dil, causal = [], [], [], []
    for _ in range(ndim):
        k = rng.randint(2, 5 if ndim == 3 else 7)
        d = rng.randint(1, 3)
        spatial.append(rng.randint(k * d, max(k * d, max_len)))
        ks.append(k)
        dil.append(d)
        causal.append(rng.random() < 0.3)
    rpb = all(k % 2 for k in ks) and not any(causal) and rng.random() < 0.7
    return dict(spatial=tuple(spatial), kernel_size=tuple(ks), dilation=tuple(dil),
                is_causal=tuple(causal), rpb=rpb, heads=rng.randint(1, 3),
                head_dim=rng.choice([8, 16, 32, 48]))  # fmt: skip


def check_case(case: dict, dtype: torch.dtype, device: str, seed: int) -> dict[str, float]:
    """Relative errors of the Triton qk/av (weights, output, dq, dk, drpb, dattn, dv) against
    the reference ops in float64, and of the weights against the brute-force oracle."""
    from natten_ext.backends import reference, triton_unfused

    gen = torch.Generator().manual_seed(seed)
    ks, dil, causal = case["kernel_size"], case["dilation"], case["is_causal"]
    shape = (2, case["heads"], *case["spatial"], case["head_dim"])
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    rpb = None
    if case["rpb"]:
        rpb = torch.randn(case["heads"], *(2 * x - 1 for x in ks), generator=gen)
    leaves = {"q": q, "k": k, "v": v, **({"rpb": rpb} if rpb is not None else {})}
    results, masks = {}, {}
    for name, impl, dt, dev in (("test", triton_unfused, dtype, device),
                                ("ref", reference, torch.float64, "cpu")):  # fmt: skip
        xs = {n: t.to(dev, dt).requires_grad_(True) for n, t in leaves.items()}
        attn = impl.qk(xs["q"], xs["k"], xs.get("rpb"), ks, dil, causal)
        probs = attn.float().softmax(-1).to(dt)
        out = impl.av(probs, xs["v"], ks, dil, causal)
        g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
        g_attn = torch.randn(attn.shape, generator=torch.Generator().manual_seed(seed + 2))
        finite = masks[name] = torch.isfinite(attn.detach().cpu())
        grads = torch.autograd.grad(
            [out, attn.masked_fill(~finite.to(attn.device), 0)],
            list(xs.values()),
            [g_out.to(dev, dt), g_attn.to(dev, dt)],
        )
        results[name] = {"attn": attn.detach().cpu().masked_fill(~finite, 0), "out": out, **{
            f"d{n}": g for n, g in zip(xs, grads)}}  # fmt: skip
    oracle = oracle_weights(q.double(), k.double(), ks, dil, causal,
                            rpb=None if rpb is None else rpb.double())  # fmt: skip
    errors = {n: rel_err(results["test"][n].cpu(), results["ref"][n]) for n in results["ref"]}
    finite = torch.isfinite(oracle)
    errors["oracle"] = rel_err(results["test"]["attn"][finite], oracle[finite])
    assert torch.equal(masks["test"], masks["ref"])  # -inf exactly on the invalid causal slots
    return errors


INTERPRETER_CASES = [
    dict(spatial=(13,), kernel_size=(4,), dilation=(2,), is_causal=(True,), rpb=False, heads=2,
         head_dim=8),
    dict(spatial=(6, 7), kernel_size=(3, 3), dilation=(2, 1), is_causal=(False, False), rpb=True,
         heads=1, head_dim=16),
    dict(spatial=(4, 5, 4), kernel_size=(2, 3, 2), dilation=(1, 1, 2),
         is_causal=(False, True, False), rpb=False, heads=1, head_dim=8),
]  # fmt: skip


def _interpreter_main() -> None:
    bad = []
    for i, case in enumerate(INTERPRETER_CASES):
        errors = check_case(case, torch.float32, "cpu", seed=i)
        print(case, {n: f"{e:.1e}" for n, e in errors.items()}, flush=True)
        if not max(errors.values()) < TOL[torch.float32]:
            bad.append((case, errors))
    if bad:
        raise SystemExit(f"FAILED: {bad}")
    print("INTERPRETER OK")


def test_unfused_kernels_under_triton_interpreter():
    run_under_interpreter(__file__)


def test_cpu_calls_take_the_reference():
    import natten_ext
    from natten_ext import functional

    q = torch.randn(1, 2, 6, 6, 8)
    assert functional._unfused_module(q, q).__name__.endswith("reference")
    with natten_ext.use_backend("triton"), pytest.raises(RuntimeError, match="unfused call"):
        natten_ext.na2d_qk(q, q, 3)


GPU_CASES = [
    (n, i, c)
    for n in (1, 2, 3)
    for i, c in enumerate(random_case(random.Random(10 + n), n, {1: 40, 2: 14, 3: 8}[n])
                          for _ in range(6))
]  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("ndim", "index", "case"), GPU_CASES, ids=lambda x: None)
def test_unfused_sweep_gpu(ndim, index, case, dtype):
    errors = check_case(case, dtype, "cuda", seed=100 * ndim + index)
    bad = {n: e for n, e in errors.items() if not e < TOL[dtype]}
    assert not bad, (case, bad)


@pytest.mark.gpu
def test_public_unfused_api_uses_triton_on_cuda():
    import natten_ext
    from natten_ext import functional

    q = torch.randn(2, 4, 14, 14, 32, device="cuda", dtype=torch.bfloat16)
    assert functional._unfused_module(q, q).__name__.endswith("triton_unfused")
    rpb = torch.randn(4, 13, 13, device="cuda")
    attn = natten_ext.natten2dqkrpb(q, q, rpb, 7, 2)
    with natten_ext.use_backend("reference"):
        ref = natten_ext.natten2dqkrpb(q, q, rpb, 7, 2)
    assert rel_err(attn.float(), ref.float()) < 1e-2


if __name__ == "__main__" and "--interpret" in sys.argv:
    _interpreter_main()

"""The cpu backend's build (cached, atomic, a failed build falls back), its switches, and what
the oracle sweeps of test_na_operator.py do not vary: threads, strides, head dims, the hand-off of
small maps to the tiled backend, OpenMP or Python threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scripts_loader import load_script

import natten_ext
from classification.layers import linear as fast_linear
from natten_ext.backends import cpu, tiled

ROOT = Path(__file__).resolve().parents[1]
needs_kernel = pytest.mark.skipif(not cpu.is_available(), reason="no C compiler")


def run_fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter (the library is built or loaded once per process)."""
    full_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


_CALL = """
import warnings, torch, natten_ext
from natten_ext.backends import cpu, tiled
torch.manual_seed(0)
q, k, v = (torch.randn(2, 9, 10, 2, 8) for _ in range(3))
rpb = torch.randn(2, 5, 5)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = natten_ext.na2d(q, k, v, 3, dilation=2, rpb=rpb)
ref = tiled.inference(q, k, v, rpb, (3, 3), (2, 2), (False, False), 8 ** -0.5)
print("backend", natten_ext.select_backend(q, k, v, rpb, (3, 3), (2, 2), (False, False)))
print("library", cpu.library() is not None)
print("max_err", float((out - ref).abs().max()))
print("warnings", [str(w.message)[:60] for w in caught])
"""


def _lines(proc: subprocess.CompletedProcess) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


@needs_kernel
def test_build_is_cached_and_written_atomically(tmp_path):
    first = _lines(run_fresh(_CALL, NATTEN_EXT_CACHE=str(tmp_path)))
    assert first["backend"] == "cpu" and first["library"] == "True"
    assert float(first["max_err"]) < 1e-5
    built = sorted(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temporary file left behind
    stamp = built[0].stat().st_mtime_ns
    second = _lines(run_fresh(_CALL, NATTEN_EXT_CACHE=str(tmp_path)))
    assert second["library"] == "True"
    assert sorted(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == stamp


@needs_kernel
def test_a_failed_build_warns_once_and_uses_the_tiled_backend(tmp_path):
    failing = tmp_path / "cc"
    failing.write_text("#!/bin/sh\necho 'no compiler here' >&2\nexit 1\n")
    failing.chmod(0o755)
    cache = tmp_path / "cache"
    got = _lines(run_fresh(_CALL, NATTEN_EXT_CACHE=str(cache), CC=str(failing)))
    assert got["library"] == "False"
    assert float(got["max_err"]) == 0.0  # the tiled backend itself
    assert "building the CPU kernel" in got["warnings"] and got["warnings"].count("building") == 1
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written


@needs_kernel
def test_an_unwritable_cache_warns_and_uses_the_tiled_backend(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    got = _lines(run_fresh(_CALL, NATTEN_EXT_CACHE=str(blocker / "cache")))
    assert got["library"] == "False" and float(got["max_err"]) == 0.0
    assert "building the CPU kernel" in got["warnings"]


def test_switched_off_by_the_environment(tmp_path):
    got = _lines(run_fresh(_CALL, NATTEN_EXT_CPU_KERNEL="0", NATTEN_EXT_CACHE=str(tmp_path)))
    assert got["backend"] == "tiled"
    assert float(got["max_err"]) == 0.0


def _case(shape, heads, dim, ks, dil, causal, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(2, *shape, 3, heads, dim, generator=gen)  # q, k, v: strided views
    q, k, v = qkv.unbind(-3)
    rpb = torch.randn(heads, *(2 * x - 1 for x in ks), generator=gen)
    grad = torch.randn(2, *shape, dim, heads, generator=gen).transpose(-1, -2)  # strided
    return q, k, v, rpb, grad, (ks, dil, causal, dim**-0.5)


@needs_kernel
@pytest.mark.parametrize("openmp", [True, False], ids=["openmp", "python-threads"])
def test_results_do_not_depend_on_the_thread_count(openmp, monkeypatch):
    monkeypatch.setattr(cpu, "_OPENMP", openmp)
    q, k, v, rpb, grad, window = _case((20, 18), 3, 32, (7, 5), (2, 1), (False, True))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out, lse = cpu.forward(q, k, v, rpb, *window)
            results.append((out, lse, *cpu.backward(grad, q, k, v, rpb, out, lse, *window)))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@needs_kernel
def test_rows_are_split_by_openmp_in_one_call_or_on_python_threads(monkeypatch):
    lib = cpu.library()
    if not lib.openmp:
        pytest.skip("the C compiler has no OpenMP")
    calls = []
    real = lib.na_fwd_f32
    monkeypatch.setattr(lib, "na_fwd_f32", lambda *a: calls.append(a[-3:]) or real(*a))
    q = k = v = torch.randn(1, 12, 12, 2, 16)
    args = (q, k, v, None, (5, 5), (1, 1), (False, False), 0.25)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with_openmp = cpu.inference(*args)
        monkeypatch.setattr(cpu, "_OPENMP", False)
        on_python_threads = cpu.inference(*args)
    finally:
        torch.set_num_threads(before)
    rows = 2 * 144
    assert calls[0] == (0, rows, 2)  # then one call per range, in either order:
    assert sorted(calls[1:]) == [(0, rows // 2, 1), (rows // 2, rows, 1)]
    assert torch.equal(with_openmp, on_python_threads)
    proc = run_fresh("from natten_ext.backends import cpu; print(cpu._OPENMP)",
                     NATTEN_EXT_CPU_OPENMP="0")  # fmt: skip
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


@needs_kernel
@pytest.mark.parametrize("dim", [8, 12, 33, 80])  # vector paths, odd sizes, over 64
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_head_dims_and_strided_inputs_match_the_tiled_backend(ndim, dim):
    shape, ks, dil, causal = {
        1: ((37,), (7,), (3,), (True,)),
        2: ((13, 11), (5, 3), (1, 2), (False, False)),
        3: ((6, 7, 5), (3, 3, 3), (1, 2, 1), (False, True, False)),
    }[ndim]
    q, k, v, rpb, grad, window = _case(shape, 2, dim, ks, dil, causal)
    out, lse = cpu.forward(q, k, v, rpb, *window)
    ref_out, ref_lse = tiled.forward(q, k, v, rpb, *window)
    assert out.is_contiguous() and lse.dtype == torch.float32
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(cpu.inference(q, k, v, rpb, *window), out)
    got = cpu.backward(grad, q, k, v, rpb, out, lse, *window)
    want = tiled.backward(grad, q, k, v, rpb, ref_out, ref_lse, *window)
    for name, a, b in zip(("dq", "dk", "dv", "drpb"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@needs_kernel
@pytest.mark.parametrize("openmp", [True, False], ids=["openmp", "python-threads"])
def test_small_undilated_maps_go_to_the_tiled_backend_on_python_threads(openmp, monkeypatch):
    if openmp and not cpu.library().openmp:
        pytest.skip("the C compiler has no OpenMP")
    monkeypatch.setattr(cpu, "_OPENMP", openmp)
    seen = []
    real = tiled.inference
    monkeypatch.setattr(tiled, "inference", lambda *a: seen.append(a[0].shape) or real(*a))
    for shape, dil in (((7, 7), 1), ((14, 14), 1), ((14, 14), 2)):
        q = k = v = torch.randn(1, *shape, 2, 16)
        with torch.inference_mode(), natten_ext.use_backend("cpu"):
            natten_ext.na2d(q, k, v, 7, dilation=dil)
    # on Python threads 14x14 (4 windows) and dilated maps run the kernel; with OpenMP every map
    assert seen == ([] if openmp else [torch.Size([1, 7, 7, 2, 16])])


@needs_kernel
def test_a_forked_child_gets_its_own_threads():
    code = """
import os, torch
from natten_ext.backends import cpu
torch.set_num_threads(2)
q = k = v = torch.randn(2, 12, 12, 2, 8)
args = (q, k, v, None, (5, 5), (1, 1), (False, False), 0.3)
parent = cpu.inference(*args)
pid = os.fork()
if pid == 0:
    os._exit(0 if torch.equal(cpu.inference(*args), parent) else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""
    proc = run_fresh(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "child 0" in proc.stdout


def test_cpu_benchmark_script_runs_every_case(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--models", "nat_mini,convnext_tiny", "--batches", "1", "--reps", "1",
            "--train-steps", "1", "--backends", "auto,tiled", "--json", str(out)]  # fmt: skip
    assert load_script("bench_cpu").main(argv) == 0
    got = json.loads(out.read_text())
    cases = [(r["model"], r["backend"]) for r in got["inference"]]
    assert cases == [("nat_mini", "auto"), ("nat_mini", "tiled"), ("convnext_tiny", "-")]
    assert all(r["ms"]["1"] > 0 for r in got["inference"])
    assert [t["backend"] for t in got["training"]] == ["auto", "tiled"]


@pytest.mark.skipif(not fast_linear._ONEDNN, reason="oneDNN's linear is not used here")
def test_cpu_benchmark_script_times_each_linear_choice(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--models", "nat_mini,convnext_tiny", "--batches", "1", "--reps", "1",
            "--train-steps", "0", "--backends", "auto", "--linears", "shipped,aten,onednn",
            "--json", str(out)]  # fmt: skip
    assert load_script("bench_cpu").main(argv) == 0
    got = json.loads(out.read_text())["inference"]
    cases = [(r["model"], r["backend"], r["linears"]) for r in got]
    assert cases == [
        ("nat_mini", "auto", "shipped"),
        ("nat_mini", "auto", "aten"),
        ("convnext_tiny", "-", "shipped"),
        ("convnext_tiny", "-", "onednn"),
    ]
    assert all(r["ms"]["1"] > 0 for r in got) and fast_linear._ONEDNN  # the switch is restored


def test_cpu_benchmark_script_times_the_operator_alone(tmp_path):
    out = tmp_path / "ops.json"
    argv = ["--ops", "--batches", "1", "--reps", "1", "--backends", "auto,cpu-pythreads",
            "--json", str(out)]  # fmt: skip
    assert load_script("bench_cpu").main(argv) == 0
    rows = json.loads(out.read_text())["ops"]
    cases = load_script("bench_cpu").OP_CASES
    assert len(rows) == len(cases) * 2 * 2  # cases x backends x (inference, forward+backward)
    assert {r["case"] for r in rows} == set(cases) and all(r["ms"] > 0 for r in rows)


@needs_kernel
def test_every_output_element_is_written(monkeypatch):
    """Outputs and work buffers start as NaN (spec: poison before a kernel runs)."""
    q, k, v, rpb, grad, window = _case((11, 13), 2, 16, (5, 3), (2, 3), (True, False))
    want_out, want_lse = tiled.forward(q, k, v, rpb, *window)
    want = tiled.backward(grad, q, k, v, rpb, want_out, want_lse, *window)
    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    monkeypatch.setattr(torch, "empty_like",
                        lambda *a, **kw: real_empty_like(*a, **kw).fill_(float("nan")))  # fmt: skip
    out, lse = cpu.forward(q, k, v, rpb, *window)
    got = cpu.backward(grad, q, k, v, rpb, out, lse, *window)
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

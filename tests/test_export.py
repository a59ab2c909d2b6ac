"""Deployment: the op's decomposition (against the oracle), torch.export and ONNX (onnxruntime)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from na_oracle import oracle_attention, rel_err

import classification  # noqa: F401
import natten_ext
from natten_ext.export import decompositions, na_forward_decomposed, to_onnx

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "dinat_mini": dict(depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), embed_dim=16),
    "dinat_s_tiny": dict(depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), embed_dim=16),
    "dinat_isotropic_small": dict(depth=2, embed_dim=32, num_heads=2),
    "vitrpb_small": dict(depth=2, embed_dim=32, num_heads=2, img_size=64),
}


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=5, **TINY[name]).eval()


@pytest.mark.parametrize(
    "spatial, ks, dil, causal, with_rpb",
    [
        ((13,), (5,), (2,), (False,), True),
        ((11,), (4,), (3,), (True,), False),
        ((7, 9), (3, 5), (2, 1), (False, False), True),
        ((6, 8), (3, 2), (1, 3), (True, False), False),
        ((4, 3, 5), (3, 3, 3), (1, 1, 1), (False, False, False), True),
    ],
)
def test_decomposition_matches_oracle(spatial, ks, dil, causal, with_rpb):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, *spatial, 3, 8, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(3, *(2 * x - 1 for x in ks), dtype=torch.float64) if with_rpb else None
    flags = [int(c) for c in causal]
    out, lse = na_forward_decomposed(q, k, v, rpb, list(ks), list(dil), flags, 0.3, "unused")
    assert rel_err(out, oracle_attention(q, k, v, ks, dil, causal, rpb=rpb, scale=0.3)) < 1e-12
    _, ref_lse = torch.ops.natten_ext.na_forward(
        q, k, v, rpb, list(ks), list(dil), flags, 0.3, "reference"
    )
    torch.testing.assert_close(lse, ref_lse)
    half, _ = na_forward_decomposed(
        q.half(), k.half(), v.half(), None, list(ks), list(dil), flags, 0.3, ""
    )
    assert half.dtype == torch.float16


def _run_onnx(onnx_program, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(
        onnx_program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("name", sorted(TINY))
def test_torch_export_two_sizes(name):
    model = tiny(name)
    for size in ((64, 64), (96, 80)):
        x = torch.randn(2, 3, *size)
        program = torch.export.export(model, (x,))
        ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
        if name != "vitrpb_small":  # the fused op stays one node for PyTorch runtimes
            assert "natten_ext.na_forward.default" in ops
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x))
        decomposed = program.run_decompositions(decompositions())
        assert not any("natten_ext" in str(n.target) for n in decomposed.graph.nodes)
        with torch.no_grad():
            torch.testing.assert_close(decomposed.module()(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_onnx_runs_in_onnxruntime(name):
    model = tiny(name)
    x = torch.randn(1, 3, 64, 64)
    onnx_program = to_onnx(model, (x,))
    ops = {node.op_type for node in onnx_program.model_proto.graph.node}
    assert "Softmax" in ops or "ReduceLogSumExp" in ops or "Exp" in ops
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_run_onnx(onnx_program, x), expected, rtol=1e-4, atol=1e-4)


def test_onnx_dynamic_batch_and_module():
    attn = natten_ext.NeighborhoodAttention2D(32, 2, 5, dilation=2).eval()
    x = torch.randn(2, 11, 13, 32)
    onnx_program = to_onnx(attn, (x,), dynamic_batch=True)
    for batch in (1, 3):
        xb = torch.randn(batch, 11, 13, 32)
        with torch.no_grad():
            expected = attn(xb).numpy()
        np.testing.assert_allclose(_run_onnx(onnx_program, xb), expected, rtol=1e-4, atol=1e-5)


def test_export_script(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "export.py"), "vitrpb_small"]
    cmd += ["--img-size", "64", "--model-args", '{"depth": 1, "embed_dim": 32, "num_heads": 2}']
    cmd += ["--formats", "torchscript,export,onnx", "--out", str(tmp_path), "--check"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["vitrpb_small.onnx", "vitrpb_small.pt2", "vitrpb_small.torchscript.pt"]
    assert result.stdout.count("max abs diff") == 3
    loaded = torch.export.load(tmp_path / "vitrpb_small.pt2")
    assert loaded.module()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "export.py"), "no_such_model"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode != 0 and "no_such_model" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(timm.list_models(module=["nat", "dinat_s", "isotropic"])))
def test_torch_export_every_model(name):
    """Every registered model exports (built on the meta device: tracing needs only shapes)."""
    model = timm.create_model(name, device="meta").eval()
    for size in ((224, 224), (256, 320)):
        x = torch.randn(1, 3, *size, device="meta")
        program = torch.export.export(model, (x,))
        assert program.module()(x).shape == (1, model.num_classes)


@pytest.mark.parametrize("name", sorted(TINY))
def test_dynamic_batch_export_and_onnx(name):
    """One model of every family: torch.export with a symbolic batch, then the ONNX graph of
    it, each run at two other batch sizes."""
    model = tiny(name)
    x = torch.randn(2, 3, 64, 64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    onnx_program = to_onnx(model, (x,), dynamic_batch=True)
    for batch in (1, 3):
        xb = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            expected = model(xb)
            torch.testing.assert_close(program.module()(xb), expected, rtol=1e-5, atol=1e-5)
        got = _run_onnx(onnx_program, xb)
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_onnx_dynamic_batch_from_a_batch_of_one():
    """torch.export specialises a batch of 1: to_onnx exports from a batch of 2 instead."""
    model = tiny("dinat_s_tiny")
    onnx_program = to_onnx(model, (torch.randn(1, 3, 64, 64),), dynamic_batch=True)
    xb = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(xb).numpy()
    np.testing.assert_allclose(_run_onnx(onnx_program, xb), expected, rtol=1e-4, atol=1e-4)


def _export_script(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "export.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def test_export_script_dynamic_batch_with_the_default_batch_size(tmp_path):
    """The README's example: --dynamic-batch with the default --batch-size 1."""
    tiny_args = json.dumps(TINY["dinat_s_tiny"])
    result = _export_script(
        "dinat_s_tiny", "--img-size", "64", "--model-args", tiny_args,
        "--formats", "export,onnx", "--dynamic-batch", "--check", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("max abs diff") == 2
    program = torch.export.load(tmp_path / "dinat_s_tiny.pt2").module()
    assert program(torch.randn(5, 3, 64, 64)).shape == (5, 1000)


def test_export_script_from_a_checkpoint(tmp_path):
    model = tiny("dinat_mini")
    path = tmp_path / "best.pth"
    torch.save({"model": model.state_dict()}, path)
    out = tmp_path / "out"
    result = _export_script(
        "dinat_mini", "--checkpoint", str(path), "--img-size", "64",
        "--model-args", json.dumps(TINY["dinat_mini"]), "--formats", "export",
        "--out", str(out), "--check",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = torch.export.load(out / "dinat_mini.pt2").module()(x[:1])
        torch.testing.assert_close(got, model(x[:1]))

"""Deployment: the neighborhood-attention op written in standard ATen ops, for ONNX and friends.

``torch.export`` keeps ``natten_ext::na_forward`` as one opaque custom-op node (PyTorch runs it
with the fused kernels). Runtimes that do not know the op (ONNX, ExecuTorch, TensorRT, ...) need it
spelled out; :func:`decompositions` gives the table for ``ExportedProgram.run_decompositions``:

.. code-block:: python

    ep = torch.export.export(model.eval(), (x,))
    ep = ep.run_decompositions(natten_ext.export.decompositions())
    onnx_program = torch.onnx.export(ep, dynamo=True)

The decomposition gathers each query's keys and values through an ``[N, K]`` neighbour table
(computed in the graph from the per-axis tables of ``natten_ext.utils.windows``; the spatial shape
must be static), adds the RPB through a table of the same shape
and takes a softmax over the K slots: Gather, MatMul, Softmax in ONNX; exact, with memory
O(N*K*head_dim) for the gathered keys and values.
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .utils.windows import axis_table

__all__ = [
    "decompositions",
    "dynamic_batch_example",
    "na_forward_decomposed",
    "neighbor_tables",
    "to_onnx",
]


def neighbor_tables(
    spatial: Sequence[int],
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    is_causal: Sequence[bool],
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """``(key, bias)`` tables ``[N, K]``: flattened key positions (``-1`` for an empty slot of a
    causal window) and flattened RPB indices, row-major over the axes; built from the per-axis
    tables with tensor ops only, so under tracing they are computed inside the graph."""
    key = torch.zeros((), dtype=torch.long, device=device)
    bias = torch.zeros((), dtype=torch.long, device=device)
    valid = torch.ones((), dtype=torch.bool, device=device)
    ndim = len(spatial)
    for axis in range(ndim):
        k_ax, v_ax, b_ax = (
            t.to(device) for t in axis_table(
                spatial[axis], kernel_size[axis], dilation[axis], bool(is_causal[axis])
            )
        )  # fmt: skip
        shape = [1] * (2 * ndim)  # query axes first, then window axes
        shape[axis], shape[ndim + axis] = spatial[axis], kernel_size[axis]
        key = key * spatial[axis] + k_ax.reshape(shape)
        bias = bias * (2 * kernel_size[axis] - 1) + b_ax.reshape(shape)
        valid = valid & v_ax.reshape(shape)
    tokens, window = math.prod(spatial), math.prod(kernel_size)
    full = (*spatial, *kernel_size)
    key = torch.where(valid, key, -1).expand(full).reshape(tokens, window)
    return key, bias.expand(full).reshape(tokens, window)


def na_forward_decomposed(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    rpb: Tensor | None,
    kernel_size: list[int],
    dilation: list[int],
    is_causal: list[int],
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """``natten_ext::na_forward`` in standard ops: ``(out, lse)`` for heads-last
    ``[B, *spatial, heads, D]`` inputs; math in float32 (float64 stays float64), like the
    reference backend. ``backend`` is ignored."""
    del backend
    batch, *spatial, heads, dim = query.shape
    causal = tuple(bool(c) for c in is_causal)
    key_idx, bias_idx = neighbor_tables(spatial, kernel_size, dilation, causal, query.device)
    tokens, window = key_idx.shape
    ct = torch.float64 if query.dtype == torch.float64 else torch.float32

    def heads_first(t: Tensor) -> Tensor:  # [B, *sp, h, D] -> [B, h, N, D]
        return t.reshape(batch, tokens, heads, dim).transpose(1, 2).to(ct)

    q, k, v = heads_first(query), heads_first(key), heads_first(value)
    flat_idx = key_idx.clamp(min=0).reshape(-1)
    k_win = k.index_select(2, flat_idx).reshape(batch, heads, tokens, window, dim)
    v_win = v.index_select(2, flat_idx).reshape(batch, heads, tokens, window, dim)
    logits = (k_win @ (q * scale).unsqueeze(-1)).squeeze(-1)  # [B, h, N, K]
    if rpb is not None:
        bias = rpb.reshape(heads, -1).to(ct).index_select(1, bias_idx.reshape(-1))
        logits = logits + bias.reshape(heads, tokens, window)
    if any(causal):  # causal windows near the start have empty slots
        logits = logits.masked_fill(key_idx < 0, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # [B, h, N]
    probs = torch.exp(logits - lse.unsqueeze(-1))
    out = (probs.unsqueeze(-2) @ v_win).squeeze(-2)  # [B, h, N, D]
    out = out.transpose(1, 2).reshape(query.shape).to(query.dtype)
    lse = lse.transpose(1, 2).reshape(query.shape[:-1]).float()
    return out, lse


def decompositions() -> dict:
    """``{natten_ext.na_forward: its decomposition}`` for ``ExportedProgram.run_decompositions``
    (merge it into ``torch.export.default_decompositions()`` to decompose everything else too)."""
    return {torch.ops.natten_ext.na_forward.default: na_forward_decomposed}


def dynamic_batch_example(example: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``example`` with every batch of 1 repeated to 2: ``torch.export`` specialises a dimension
    of size 1 to the constant 1, so a symbolic batch needs an example batch of at least 2."""
    return tuple(torch.cat([t, t]) if t.shape[0] == 1 else t for t in example)


def to_onnx(
    model: torch.nn.Module,
    example: tuple[Tensor, ...],
    path: str | None = None,
    dynamic_batch: bool = False,
    opset_version: int | None = None,
) -> "torch.onnx.ONNXProgram":
    """Export ``model`` (in eval mode) to ONNX with the dynamo exporter, the op decomposed.

    ``dynamic_batch`` makes dim 0 of every input symbolic (spatial sizes stay static: the
    neighbour tables are constants; an example batch of 1 is repeated to 2, see
    :func:`dynamic_batch_example`). Writes ``path`` when given; returns the ONNX program.
    """
    model = model.eval()
    dynamic_shapes = None
    if dynamic_batch:
        example = dynamic_batch_example(example)
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: batch} for _ in example)
    program = torch.export.export(model, tuple(example), dynamic_shapes=dynamic_shapes)
    program = program.run_decompositions(decompositions())
    kwargs = {} if opset_version is None else {"opset_version": opset_version}
    onnx_program = torch.onnx.export(program, dynamo=True, **kwargs)
    if path is not None:
        onnx_program.save(path)
    return onnx_program

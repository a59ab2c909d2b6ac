"""MAC counting for neighborhood attention (spec §6), for fvcore and ``torch.utils.flop_counter``.

Per fused call: QK = B*h*N*D*K (+ B*h*N*K with RPB) and AV = B*h*N*D*K multiply-accumulates, with
K = prod(kernel_size). fvcore counts MACs; ``torch.utils.flop_counter`` counts FLOPs (2 per MAC),
so the registrations below follow each tool's convention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import ops  # noqa: F401  (registers torch.ops.natten_ext.*)


def na_macs(query_shape: Sequence[int], kernel_size: Sequence[int], has_rpb: bool) -> int:
    """MACs of one fused call on heads-last ``query_shape`` ``[B, *spatial, heads, D]``."""
    *rows, head_dim = query_shape
    tokens_heads = math.prod(rows)  # B * N * heads
    window = math.prod(kernel_size)
    macs = 2 * tokens_heads * head_dim * window
    if has_rpb:
        macs += tokens_heads * window
    return macs


# ------------------------------------------------------------------------------ fvcore handles


def _traced_int_list(value: Any) -> list[int]:
    """A list argument of a traced graph: a constant, or a ListConstruct of constants."""
    constant = value.toIValue()
    if constant is not None:
        return list(constant)
    return [int(item.toIValue()) for item in value.node().inputs()]


def _fvcore_na_forward(inputs: list[Any], outputs: list[Any]) -> int:
    from fvcore.nn.jit_handles import get_shape

    query_shape = get_shape(inputs[0])
    has_rpb = inputs[3].type().kind() != "NoneType"
    return na_macs(query_shape, _traced_int_list(inputs[4]), has_rpb)


FVCORE_HANDLES = {"natten_ext::na_forward": _fvcore_na_forward}


def get_flops(model: nn.Module, inputs: Any, *, by_module: bool = False) -> int | dict[str, int]:
    """fvcore multiply-accumulate count of ``model(*inputs)`` including neighborhood attention.

    Returns the total, or the per-module table when ``by_module`` is set. Needs ``fvcore``.
    """
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("get_flops needs fvcore: pip install fvcore") from exc
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, tuple(inputs))
        analysis.set_op_handle(**FVCORE_HANDLES)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        with torch.no_grad():
            return dict(analysis.by_module()) if by_module else int(analysis.total())
    finally:
        model.train(was_training)


# --------------------------------------------------------------- torch.utils.flop_counter formulas


def _register_flop_counter() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.natten_ext.na_forward)
    def _na_forward_flops(
        query_shape, key_shape, value_shape, rpb_shape, kernel_size, *args, out_shape=None, **kwargs
    ) -> int:
        return 2 * na_macs(query_shape, kernel_size, rpb_shape is not None)

    @register_flop_formula(torch.ops.natten_ext.na_backward)
    def _na_backward_flops(
        grad_shape,
        query_shape,
        key_shape,
        value_shape,
        rpb_shape,
        out_shape_,
        lse_shape,
        kernel_size,
        *args,
        out_shape=None,
        **kwargs,
    ) -> int:
        # dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: twice the forward's two products.
        return 4 * na_macs(query_shape, kernel_size, False)

    if hasattr(torch.ops.natten_ext, "na_triton_forward"):  # the triton ops, under compile
        register_flop_formula(torch.ops.natten_ext.na_triton_forward)(_na_forward_flops)
        register_flop_formula(torch.ops.natten_ext.na_triton_backward)(_na_backward_flops)


_register_flop_counter()

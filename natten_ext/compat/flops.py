"""``natten.flops`` of NATTEN 0.14-0.17: fvcore handles for neighborhood attention.

Counts are natten_ext's (na_operator.md §6, multiply-accumulates) for the fused op, which the
compat modules call unless ``use_fused_na(False)`` is set.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..flops import FVCORE_HANDLES

__all__ = ["add_natten_handle", "get_flops"]


def add_natten_handle(flop_ctr: Any) -> Any:
    """Register the neighborhood-attention handles on an fvcore ``FlopCountAnalysis``; return it."""
    return flop_ctr.set_op_handle(**FVCORE_HANDLES)


def get_flops(model: nn.Module, input: Any, disable_warnings: bool = False) -> int:
    """fvcore's total for ``model(input)`` with the handles registered (needs ``fvcore``)."""
    from fvcore.nn import FlopCountAnalysis

    flop_ctr = add_natten_handle(FlopCountAnalysis(model, input))
    if disable_warnings:
        flop_ctr = flop_ctr.unsupported_ops_warnings(False)
    return int(flop_ctr.total())

"""The models' neighborhood attention: ``natten_ext``'s module with the package's Linear layers.

:func:`neighborhood_attention` builds :class:`natten_ext.NeighborhoodAttention2D` (the same class,
keys ``qkv``, ``rpb``, ``proj``) and makes its ``qkv`` and ``proj`` projections
:class:`~classification.layers.linear.FastLinear`, so that the models' float32 CPU inference runs
them on oneDNN; the operator package itself knows only ``nn.Linear``.

The ``natten_ext`` attention modules are registered with timm as FX leaves here (their padding
depends on the input's shape); their forward is TorchScript-compatible.
"""

from typing import Any

from timm.models import register_notrace_module

from natten_ext import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D

from .linear import use_fast_linears

for _cls in (NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D):
    register_notrace_module(_cls)

__all__ = ["neighborhood_attention"]


def neighborhood_attention(
    dim: int, num_heads: int, kernel_size: int, dilation: int = 1, **kwargs: Any
) -> NeighborhoodAttention2D:
    """``natten_ext.NeighborhoodAttention2D(dim, num_heads, kernel_size, dilation=dilation,
    **kwargs)`` with :class:`~classification.layers.linear.FastLinear` projections."""
    return use_fast_linears(
        NeighborhoodAttention2D(dim, num_heads, kernel_size, dilation=dilation, **kwargs)
    )

"""natten_ext: exact neighborhood attention (NATTEN semantics) with relative positional bias.

Fused heads-last ops ``na1d/na2d/na3d``, unfused heads-first ops ``na*d_qk/na*d_av`` (and the
NATTEN 0.14 names), modules ``NeighborhoodAttention1D/2D/3D``, backend selection and FLOP counting.
"""

from . import flops, ops  # noqa: F401  (registers the custom ops and their FLOP formulas)
from .dispatch import ENV_VAR, available_backends, select_backend, use_backend
from .functional import (
    na1d,
    na1d_av,
    na1d_qk,
    na2d,
    na2d_av,
    na2d_qk,
    na3d,
    na3d_av,
    na3d_qk,
    natten1dav,
    natten1dqk,
    natten1dqkrpb,
    natten2dav,
    natten2dqk,
    natten2dqkrpb,
)
from .modules import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D

__version__ = "0.1.0"

__all__ = [
    "ENV_VAR",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "available_backends",
    "na1d",
    "na1d_av",
    "na1d_qk",
    "na2d",
    "na2d_av",
    "na2d_qk",
    "na3d",
    "na3d_av",
    "na3d_qk",
    "natten1dav",
    "natten1dqk",
    "natten1dqkrpb",
    "natten2dav",
    "natten2dqk",
    "natten2dqkrpb",
    "select_backend",
    "use_backend",
]

"""``NeighborhoodAttention1D/2D/3D`` with the constructor signatures of NATTEN 0.14-0.17.

Three signature families (the positional order after ``dim`` changed twice):

- 0.14.0-0.14.4: ``(dim, kernel_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0,
  proj_drop=0.0, dilation=None)``, always with RPB; a ``str`` dilation (2-D) picks
  ``max(min(H, W) // kernel_size, 1)`` per input. ``NeighborhoodAttention`` is the 2-D class.
- 0.14.5-0.15: ``(dim, num_heads, kernel_size, dilation=1, bias=True, qkv_bias=True,
  qk_scale=None, attn_drop=0.0, proj_drop=0.0)``; 3-D (0.15) adds ``kernel_size_d=None`` after
  ``kernel_size`` and ``dilation_d=None`` after ``dilation``.
- 0.17: ``(dim, num_heads, kernel_size, dilation=1, is_causal=False, rel_pos_bias=False,
  qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0, use_experimental_ops=False)``.

Each also takes the other spelling of the RPB switch as a keyword (``rel_pos_bias=`` before 0.17,
``bias=`` in 0.17). Parameters are ``qkv``, ``rpb``, ``proj``: the state-dict keys of NATTEN's
modules and of natten_ext's. Inputs are channels-last ``[B, *spatial, C]``; every family pads
axes shorter than ``kernel_size * dilation`` on the right before ``qkv`` and crops after ``proj``
(0.14/0.15 behaviour; 0.17 raised instead). As in NATTEN, ``qk_scale`` falls back to
``head_dim ** -0.5`` when falsy.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as _ne
from ..utils import checks
from . import context

_FUSED = {1: _ne.na1d, 2: _ne.na2d, 3: _ne.na3d}
_QK = {1: _ne.na1d_qk, 2: _ne.na2d_qk, 3: _ne.na3d_qk}
_AV = {1: _ne.na1d_av, 2: _ne.na2d_av, 3: _ne.na3d_av}


def _rpb_switch(
    primary: bool, default: bool, other: bool | None, primary_name: str, other_name: str
) -> bool:
    """The RPB switch from the release's own spelling and the other release's keyword.

    ``other`` (when given) wins; a ``primary`` away from its default that disagrees raises.
    """
    if other is None:
        return bool(primary)
    if not isinstance(other, bool):
        raise ValueError(f"{other_name} must be a bool, got {other!r}")
    if primary != default and primary != other:
        raise ValueError(f"{primary_name}={primary} contradicts {other_name}={other}; pass one")
    return other


def _int_arg(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class _CompatNeighborhoodAttention(nn.Module):
    """Shared body: projections, optional RPB, padding, fused or unfused attention."""

    ndim: ClassVar[int]

    def _setup(
        self,
        dim: int,
        num_heads: int,
        kernel_size: tuple[int, ...],
        dilation: tuple[int, ...] | None,
        is_causal: tuple[bool, ...],
        rel_pos_bias: bool,
        qkv_bias: bool,
        qk_scale: float | None,
        attn_drop: float,
        proj_drop: float,
    ) -> None:
        _int_arg("dim", dim, 1)
        _int_arg("num_heads", num_heads, 1)
        if dim % num_heads:
            raise ValueError(f"num_heads must divide dim={dim}, got num_heads={num_heads}")
        # check_window_args validates kernel sizes and dilations (None: chosen per input).
        checks.check_window_args(kernel_size, dilation or 1, is_causal, self.ndim)
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self._dim = dim
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if rel_pos_bias:
            if any(k % 2 == 0 for k in kernel_size) or any(is_causal):
                raise NotImplementedError(
                    f"relative positional bias needs odd kernel sizes and no causal axis, got "
                    f"kernel_size={kernel_size}, is_causal={is_causal}"
                )
            self.rpb = nn.Parameter(torch.zeros(num_heads, *(2 * k - 1 for k in kernel_size)))
            nn.init.trunc_normal_(self.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _window(
        self, spatial: tuple[int, ...]
    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[bool, ...]]:
        """(kernel_size, dilation, is_causal) per axis, read from the release's attributes."""
        raise NotImplementedError  # each signature family stores them its own way

    def forward(self, x: Tensor) -> Tensor:
        n = self.ndim
        if x.dim() != n + 2 or x.shape[-1] != self._dim:
            raise ValueError(
                f"{type(self).__name__} expects channels-last input [batch, *{n} spatial axes, "
                f"{self._dim}], got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[1:-1])
        ks, dil, causal = self._window(spatial)
        padding = [max(0, k * d - s) for s, k, d in zip(spatial, ks, dil)]
        if any(padding):
            pad: list[int] = []
            for p in reversed(padding):  # F.pad lists the last axis first
                pad += [0, p]
            x = F.pad(x, [0, 0, *pad])
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))
        q, k, v = qkv.unbind(-3)  # [B, *spatial, heads, head_dim]
        dropout = self.training and self.attn_drop.p > 0
        if context.is_fused_na_enabled() and not dropout:
            out = _FUSED[n](q, k, v, ks, dil, is_causal=causal, rpb=self.rpb, scale=self.scale)
        else:
            perm = (0, n + 1, *range(1, n + 1), n + 2)
            q, k, v = (t.permute(perm) for t in (q, k, v))
            attn = _QK[n](
                q * self.scale, k, kernel_size=ks, dilation=dil, is_causal=causal, rpb=self.rpb
            )
            attn = self.attn_drop(attn.softmax(dim=-1))
            out = _AV[n](attn, v, kernel_size=ks, dilation=dil, is_causal=causal)
            out = out.permute(0, *range(2, n + 2), 1, n + 2)
        out = out.flatten(-2)
        if any(padding):
            out = out[(slice(None), *(slice(0, s) for s in spatial))]
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, num_heads={self.num_heads}, "
            f"kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"rel_pos_bias={self.rpb is not None}"
        )


def _named(cls: type) -> type:
    """Show NATTEN's class name (repr, errors); the qualified name stays unique for pickle."""
    cls.__name__ = cls.__qualname__.rsplit("_v", 1)[0]
    return cls


# --------------------------------------------------------------------------- 0.14.0 - 0.14.4


class _NA014(_CompatNeighborhoodAttention):
    def __init__(
        self,
        dim: int,
        kernel_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        dilation: int | str | None = None,
        *,
        bias: bool | None = None,
        rel_pos_bias: bool | None = None,
    ) -> None:
        super().__init__()
        rpb = _rpb_switch(bias is not False, True, rel_pos_bias, "bias", "rel_pos_bias")
        kernel_size = _int_arg("kernel_size", kernel_size, 2)
        if isinstance(dilation, str):
            if self.ndim != 2:
                raise ValueError("a str dilation (chosen per input) exists only in 2-D")
            self.dilation, self.window_size = None, None
        else:
            self.dilation = _int_arg("dilation", dilation or 1, 1)
            self.window_size = kernel_size * self.dilation
        self.kernel_size = kernel_size
        self._setup(
            dim,
            num_heads,
            (kernel_size,) * self.ndim,
            None if self.dilation is None else (self.dilation,) * self.ndim,
            (False,) * self.ndim,
            rpb,
            qkv_bias,
            qk_scale,
            attn_drop,
            proj_drop,
        )

    def _window(self, spatial):
        dil = self.dilation
        if dil is None:  # 0.14.4's per-input dilation
            dil = max(min(spatial) // self.kernel_size, 1)
        return (self.kernel_size,) * self.ndim, (dil,) * self.ndim, (False,) * self.ndim


@_named
class NeighborhoodAttention1D_v014(_NA014):
    """NATTEN 0.14.0-0.14.4 ``NeighborhoodAttention1D`` on ``[B, L, C]``."""

    ndim = 1


@_named
class NeighborhoodAttention2D_v014(_NA014):
    """NATTEN 0.14.0-0.14.4 ``NeighborhoodAttention2D`` on ``[B, H, W, C]``."""

    ndim = 2


# --------------------------------------------------------------------------- 0.14.5 - 0.15.x


class _NA015(_CompatNeighborhoodAttention):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        dilation: int | None = 1,
        bias: bool = True,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        rel_pos_bias: bool | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size = _int_arg("kernel_size", kernel_size, 2)
        self.dilation = _int_arg("dilation", dilation or 1, 1)
        self.window_size = self.kernel_size * self.dilation
        n = self.ndim
        self._setup(
            dim,
            num_heads,
            (self.kernel_size,) * n,
            (self.dilation,) * n,
            (False,) * n,
            _rpb_switch(bias, True, rel_pos_bias, "bias", "rel_pos_bias"),
            qkv_bias,
            qk_scale,
            attn_drop,
            proj_drop,
        )

    def _window(self, spatial):
        n = self.ndim
        return (self.kernel_size,) * n, (self.dilation,) * n, (False,) * n


@_named
class NeighborhoodAttention1D_v015(_NA015):
    """NATTEN 0.14.5-0.15 ``NeighborhoodAttention1D`` on ``[B, L, C]``."""

    ndim = 1


@_named
class NeighborhoodAttention2D_v015(_NA015):
    """NATTEN 0.14.5-0.15 ``NeighborhoodAttention2D`` on ``[B, H, W, C]``."""

    ndim = 2


@_named
class NeighborhoodAttention3D_v015(_CompatNeighborhoodAttention):
    """NATTEN 0.15 ``NeighborhoodAttention3D`` on ``[B, D, H, W, C]``: ``kernel_size_d`` and
    ``dilation_d`` (default: ``kernel_size``, ``dilation``) along D."""

    ndim = 3

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        kernel_size_d: int | None = None,
        dilation: int | None = 1,
        dilation_d: int | None = None,
        bias: bool = True,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        rel_pos_bias: bool | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size = _int_arg("kernel_size", kernel_size, 2)
        self.kernel_size_d = _int_arg("kernel_size_d", kernel_size_d or kernel_size, 2)
        self.dilation = _int_arg("dilation", dilation or 1, 1)
        self.dilation_d = _int_arg("dilation_d", dilation_d or self.dilation, 1)
        self.window_size = self.kernel_size * self.dilation
        self.window_size_d = self.kernel_size_d * self.dilation_d
        ks, dil, causal = self._window(())
        self._setup(
            dim,
            num_heads,
            ks,
            dil,
            causal,
            _rpb_switch(bias, True, rel_pos_bias, "bias", "rel_pos_bias"),
            qkv_bias,
            qk_scale,
            attn_drop,
            proj_drop,
        )

    def _window(self, spatial):
        ks = (self.kernel_size_d, self.kernel_size, self.kernel_size)
        return ks, (self.dilation_d, self.dilation, self.dilation), (False,) * 3

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, num_heads={self.num_heads}, "
            f"kernel_size_d={self.kernel_size_d}, dilation_d={self.dilation_d}, "
            f"kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"rel_pos_bias={self.rpb is not None}"
        )


# -------------------------------------------------------------------------------------- 0.17


class _NA017(_CompatNeighborhoodAttention):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int | tuple[int, ...],
        dilation: int | tuple[int, ...] = 1,
        is_causal: bool | tuple[bool, ...] = False,
        rel_pos_bias: bool = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_experimental_ops: bool = False,
        *,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        ks, dil, causal = checks.check_window_args(
            kernel_size, 1 if dilation is None else dilation, is_causal, self.ndim
        )
        self.kernel_size, self.dilation, self.is_causal = ks, dil, causal
        self.attn_drop_rate = attn_drop
        # natten_ext's ops already work under torch.compile and the FLOP counters: no switch.
        self.use_experimental_ops = use_experimental_ops
        rpb = _rpb_switch(rel_pos_bias, False, bias, "rel_pos_bias", "bias")
        self._setup(dim, num_heads, ks, dil, causal, rpb, qkv_bias, qk_scale, attn_drop, proj_drop)

    def _window(self, spatial):
        return self.kernel_size, self.dilation, self.is_causal

    def extra_repr(self) -> str:
        return super().extra_repr() + f", is_causal={self.is_causal}"


@_named
class NeighborhoodAttention1D_v017(_NA017):
    """NATTEN 0.17 ``NeighborhoodAttention1D`` on ``[B, L, C]``."""

    ndim = 1


@_named
class NeighborhoodAttention2D_v017(_NA017):
    """NATTEN 0.17 ``NeighborhoodAttention2D`` on ``[B, H, W, C]``."""

    ndim = 2


@_named
class NeighborhoodAttention3D_v017(_NA017):
    """NATTEN 0.17 ``NeighborhoodAttention3D`` on ``[B, D, H, W, C]``."""

    ndim = 3


# The classes each family exports; 0.14.0-0.14.4 had no 3-D module, so the 0.15 one stands in.
FAMILIES: dict[str, dict[str, type[nn.Module]]] = {
    "0.14": {
        "NeighborhoodAttention1D": NeighborhoodAttention1D_v014,
        "NeighborhoodAttention2D": NeighborhoodAttention2D_v014,
        "NeighborhoodAttention3D": NeighborhoodAttention3D_v015,
    },
    "0.15": {
        "NeighborhoodAttention1D": NeighborhoodAttention1D_v015,
        "NeighborhoodAttention2D": NeighborhoodAttention2D_v015,
        "NeighborhoodAttention3D": NeighborhoodAttention3D_v015,
    },
    "0.17": {
        "NeighborhoodAttention1D": NeighborhoodAttention1D_v017,
        "NeighborhoodAttention2D": NeighborhoodAttention2D_v017,
        "NeighborhoodAttention3D": NeighborhoodAttention3D_v017,
    },
}

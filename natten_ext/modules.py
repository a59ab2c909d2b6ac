"""``NeighborhoodAttention1D/2D/3D``: qkv projection, neighborhood attention with RPB, output proj.

State-dict keys are ``qkv.weight, qkv.bias, rpb, proj.weight, proj.bias``, as in the NAT/DiNAT
checkpoints trained with NATTEN 0.14-0.17. Inputs are channels-last ``[B, *spatial, C]``. Axes
shorter than ``kernel_size * dilation`` are zero-padded on the right before the qkv projection and
cropped afterwards (NATTEN 0.14/0.15 behaviour, spec §4), so any input size works.

The modules can be scripted with ``torch.jit.script``: the scripted forward calls the custom op
``torch.ops.natten_ext.na_forward`` directly with backend ``"auto"`` (resolved when it runs), on
arguments the constructor has already validated. On the meta device the op's fake implementation
gives the output shape. For ``torch.fx`` the modules are leaves (their padding depends on the
input's shape); ``natten_ext.export`` decomposes the op into standard ops for ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional
from .utils import checks
from .utils.checks import BoolOrTuple, IntOrTuple

_FUSED = {1: functional.na1d, 2: functional.na2d, 3: functional.na3d}
_QK = {1: functional.na1d_qk, 2: functional.na2d_qk, 3: functional.na3d_qk}
_AV = {1: functional.na1d_av, 2: functional.na2d_av, 3: functional.na3d_av}


class _NeighborhoodAttentionND(nn.Module):
    ndim = 0  # spatial axes, set by the 1-D/2-D/3-D subclasses

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: IntOrTuple,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        rel_pos_bias: bool = True,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        bias: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if bias is not None:  # NATTEN 0.14.5-0.15 spelling
            rel_pos_bias = bias
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(num_heads, int) or num_heads < 1 or dim % num_heads:
            raise ValueError(
                f"num_heads must be a positive divisor of dim={dim}, got {num_heads!r}"
            )
        self.ndim = type(self).ndim  # an instance attribute, which TorchScript can see
        ks, dil, causal = checks.check_window_args(kernel_size, dilation, is_causal, self.ndim)
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop}")
        dd = {"device": device, "dtype": dtype}
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.kernel_size, self.dilation, self.is_causal = ks, dil, causal
        self.scale = checks.check_scale(qk_scale, self.head_dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        if rel_pos_bias:
            if any(k % 2 == 0 for k in ks) or any(causal):
                raise NotImplementedError(
                    f"rel_pos_bias needs odd kernel sizes and no causal axis, got "
                    f"kernel_size={ks}, is_causal={causal}"
                )
            self.rpb = nn.Parameter(torch.empty(num_heads, *(2 * k - 1 for k in ks), **dd))
        else:
            self.register_parameter("rpb", None)
        self.attn_drop_p = attn_drop
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise ``rpb`` (truncated normal, std 0.02); ``qkv``/``proj`` reset themselves."""
        if self.rpb is not None:
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self.ndim + 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"NeighborhoodAttention{self.ndim}D expects channels-last input "
                f"[batch, *{self.ndim} spatial axes, {self.dim}], got shape {list(x.shape)}"
            )
        spatial = x.shape[1:-1]
        pad: list[int] = [0, 0]  # F.pad lists the last axis first: channels, then spatial axes
        padded = False
        for axis in range(self.ndim - 1, -1, -1):
            missing = self.kernel_size[axis] * self.dilation[axis] - spatial[axis]
            pad += [0, max(0, missing)]
            padded = padded or missing > 0
        if padded:
            x = F.pad(x, pad)
        qkv = self.qkv(x).unflatten(-1, [3, self.num_heads, self.head_dim])
        q, k, v = qkv.select(-3, 0), qkv.select(-3, 1), qkv.select(-3, 2)
        # a bare is_scripting() test, so that TorchScript compiles only this branch
        if torch.jit.is_scripting():  # noqa: SIM114
            out = self._attend_op(q, k, v)
        elif x.is_meta:  # shapes only: the op's fake implementation
            out = self._attend_op(q, k, v)
        elif self.training and self.attn_drop_p > 0:
            out = self._attend_unfused(q, k, v)
        else:
            out = _FUSED[self.ndim](
                q, k, v, self.kernel_size, self.dilation, self.is_causal, self.rpb, self.scale
            )
        out = out.flatten(-2)
        if padded:
            for axis in range(self.ndim):
                out = out.narrow(axis + 1, 0, spatial[axis])
        return self.proj_drop(self.proj(out))

    def _attend_op(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The registered op on the module's (validated) window; TorchScript and meta path."""
        if self.training and self.attn_drop_p > 0:
            raise RuntimeError(
                "attention dropout (attn_drop > 0) in training mode needs the eager module "
                "(not scripted, not on the meta device); call .eval() or set attn_drop=0"
            )
        kernel_size: list[int] = []
        dilation: list[int] = []
        causal: list[int] = []
        for axis in range(self.ndim):
            kernel_size.append(self.kernel_size[axis])
            dilation.append(self.dilation[axis])
            causal.append(int(self.is_causal[axis]))
        out, _ = torch.ops.natten_ext.na_forward(
            q, k, v, self.rpb, kernel_size, dilation, causal, self.scale, "auto"
        )
        return out

    @torch.jit.unused
    def _attend_unfused(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Explicit weights, needed only for attention dropout during training."""
        perm = (0, self.ndim + 1, *range(1, self.ndim + 1), self.ndim + 2)
        q, k, v = (t.permute(perm) for t in (q, k, v))
        attn = _QK[self.ndim](
            q * self.scale, k, self.kernel_size, self.dilation, self.is_causal, self.rpb
        )
        attn = self.attn_drop(attn.float().softmax(dim=-1).to(v.dtype))
        out = _AV[self.ndim](attn, v, self.kernel_size, self.dilation, self.is_causal)
        return out.permute(0, *range(2, self.ndim + 2), 1, self.ndim + 2)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"is_causal={self.is_causal}, rel_pos_bias={self.rpb is not None}"
        )


class NeighborhoodAttention1D(_NeighborhoodAttentionND):
    """1-D neighborhood attention on ``[B, L, C]``."""

    ndim = 1


class NeighborhoodAttention2D(_NeighborhoodAttentionND):
    """2-D neighborhood attention on ``[B, H, W, C]``."""

    ndim = 2


class NeighborhoodAttention3D(_NeighborhoodAttentionND):
    """3-D neighborhood attention on ``[B, D, H, W, C]``."""

    ndim = 3

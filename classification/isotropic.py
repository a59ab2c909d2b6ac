"""Isotropic (ViT-like) models: NAT-iso, DiNAT-iso and ViT-rpb.

16x16 patch embedding + LayerNorm (14x14 tokens at 224 px), 12 pre-norm layers, then
LayerNorm -> mean -> Linear. NAT-iso/DiNAT-iso use 7x7 neighborhood attention with dilation 1 on
even layers and the model's dilation (1 / 2) on odd ones; ViT-rpb uses global self-attention with
a relative-position-bias table. Keys: ``patch_embed.{proj,norm}``, ``layers.{j}.*``, ``norm``,
``head`` (ViT-rpb adds the persistent ``layers.{j}.attn.relative_position_index`` buffer).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from timm.layers import trunc_normal_
from timm.models import (
    generate_default_cfgs,
    register_model,
    register_notrace_function,
)
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from torch import Tensor, nn

from .layers import (
    ClassifierMixin,
    LayerNorm,
    Linear,
    NATransformerBlock,
    materialize,
    patch_embedding,
)
from .pretrained import build_zoo_model, zoo_cfg

__all__ = ["GlobalAttentionRPB", "NATIsotropic"]


def relative_position_index(
    grid: int,
    height: int | None = None,
    width: int | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Index into a flattened ``(2g-1) x (2g-1)`` table for every (query, key) token pair of a
    ``height x width`` map: ``(kh - qh + g - 1) * (2g - 1) + (kw - qw + g - 1)`` (key minus
    query), offsets clamped to the table's range when the map is larger than ``grid``."""
    height = grid if height is None else height
    width = grid if width is None else width
    ch, cw = torch.meshgrid(
        [torch.arange(height, device=device), torch.arange(width, device=device)], indexing="ij"
    )
    ch, cw = ch.flatten(), cw.flatten()
    dh = (ch[None, :] - ch[:, None]).clamp(-(grid - 1), grid - 1)
    dw = (cw[None, :] - cw[:, None]).clamp(-(grid - 1), grid - 1)
    return (dh + grid - 1) * (2 * grid - 1) + (dw + grid - 1)


@register_notrace_function  # an FX leaf: which index to use depends on the map's size
def rpb_attention_bias(rpb: Tensor, index: Tensor, height: int, width: int) -> Tensor:
    """The ``[heads, N, N]`` bias of a ``height x width`` map from an rpb table ``[heads, 2g-1,
    2g-1]``; ``index`` is the precomputed index of the ``g x g`` training grid."""
    grid = (rpb.shape[-1] + 1) // 2
    if height != grid or width != grid:
        index = relative_position_index(grid, height, width, device=rpb.device)
    return rpb.flatten(1)[:, index]


class GlobalAttentionRPB(nn.Module):
    """Global multi-head self-attention with a relative-position-bias table (ViT-rpb).

    ``rpb`` is ``(heads, 2g-1, 2g-1)`` for a ``g x g`` training grid, indexed by key minus query;
    ``relative_position_index`` (``g^2 x g^2``) is a persistent buffer, as in the checkpoints.
    Other map sizes work: offsets beyond the table clamp to its border. Input ``[B, H, W, C]``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: int = 14,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads must divide dim={dim}, got {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        self.grid_size = grid_size
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.empty(num_heads, 2 * grid_size - 1, 2 * grid_size - 1))
        self.register_buffer(
            "relative_position_index", torch.empty(grid_size**2, grid_size**2, dtype=torch.long)
        )
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """rpb: truncated normal (std 0.02); the index buffer: recomputed (works on meta)."""
        trunc_normal_(self.rpb, std=0.02)
        index = self.relative_position_index
        with torch.no_grad():
            index.copy_(relative_position_index(self.grid_size, device=index.device))

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x.reshape(b, h * w, c)).reshape(b, h * w, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # 3, B, heads, N, D
        q, k, v = qkv[0], qkv[1], qkv[2]
        bias = rpb_attention_bias(self.rpb, self.relative_position_index, h, w)
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, h, w, c)
        return self.proj_drop(self.proj(x))


class NATIsotropic(ClassifierMixin, nn.Module):
    """Isotropic classifier.

    Args:
        img_size: training resolution (sets ViT-rpb's table grid, ``img_size // patch_size``).
        patch_size, in_chans, num_classes (``0``: no head), embed_dim, depth, num_heads,
        mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, global_pool.
        attention: ``"na"`` (neighborhood attention) or ``"global_rpb"`` (ViT-rpb).
        kernel_size, dilation: NA kernel and the dilation of the odd layers (even layers use 1).
        device, dtype: as for :class:`classification.nat.NAT` (built on meta, then materialised).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attention: str = "na",
        kernel_size: int = 7,
        dilation: int = 1,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        global_pool: str = "avg",
        norm_layer: Callable[..., nn.Module] = LayerNorm,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"NATIsotropic got unexpected arguments: {sorted(kwargs)}")
        if attention not in ("na", "global_rpb"):
            raise ValueError(f"attention must be 'na' or 'global_rpb', got {attention!r}")
        if not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if isinstance(img_size, (tuple, list)):
            if img_size[0] != img_size[1]:
                raise ValueError(f"img_size must be square for the RPB grid, got {img_size}")
            img_size = img_size[0]
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False
        attn_layer = (
            partial(GlobalAttentionRPB, grid_size=img_size // patch_size)
            if attention == "global_rpb"
            else None
        )
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        with torch.device("meta"):  # allocated and initialised by materialize() below
            self.patch_embed = patch_embedding(patch_size, in_chans, embed_dim, norm_layer)
            self.pos_drop = nn.Dropout(drop_rate)
            self.layers = nn.Sequential(
                *(
                    NATransformerBlock(
                        embed_dim,
                        num_heads,
                        kernel_size=kernel_size,
                        dilation=1 if i % 2 == 0 else dilation,
                        mlp_ratio=mlp_ratio,
                        qkv_bias=qkv_bias,
                        qk_scale=qk_scale,
                        drop=drop_rate,
                        attn_drop=attn_drop_rate,
                        drop_path=dpr[i],
                        norm_layer=norm_layer,
                        attn_layer=attn_layer,
                    )
                    for i in range(depth)
                )
            )
            self.norm = norm_layer(embed_dim)
            self.head = Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=patch_size, module=f"layers.{i}")
            for i in range(depth)
        ]
        materialize(self, device, dtype)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^patch_embed", blocks=[(r"^layers\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(layer, x)
            else:
                x = layer(x)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Outputs of the chosen layers (NCHW or NHWC, stride 16); ``norm`` applies the final
        LayerNorm to each of them."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        layers = self.layers if not stop_early else self.layers[: max_index + 1]
        intermediates = []
        x = self.pos_drop(self.patch_embed(x))
        for i, layer in enumerate(layers):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x)
            else:
                x = layer(x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                intermediates.append(
                    y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y
                )
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


def _create_isotropic(variant: str, pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    return build_zoo_model(NATIsotropic, variant, pretrained, (2, 5, 8, 11), **kwargs)


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    arch = dict(pool_size=(14, 14), first_conv="patch_embed.proj", paper_ids="arXiv:2209.15001")
    return zoo_cfg(url, arch, **kwargs)


_URL = "https://shi-labs.com/projects/dinat/checkpoints/isotropic/"
_NAMES = [
    f"{a}_{s}" for a in ("nat_isotropic", "dinat_isotropic", "vitrpb") for s in ("small", "base")
]
default_cfgs = generate_default_cfgs({f"{n}.in1k": _cfg(f"{_URL}{n}_in1k_224.pth") for n in _NAMES})

_SMALL = dict(embed_dim=384, depth=12, num_heads=12, mlp_ratio=4.0, drop_path_rate=0.1)
_BASE = dict(embed_dim=768, depth=12, num_heads=24, mlp_ratio=4.0, drop_path_rate=0.4)


def _make(variant: str, arch: dict[str, Any], pretrained: bool, **kwargs: Any) -> NATIsotropic:
    return _create_isotropic(variant, pretrained, **dict(arch, **kwargs))


@register_model
def nat_isotropic_small(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    return _make("nat_isotropic_small", dict(_SMALL, dilation=1), pretrained, **kwargs)


@register_model
def nat_isotropic_base(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    return _make("nat_isotropic_base", dict(_BASE, dilation=1), pretrained, **kwargs)


@register_model
def dinat_isotropic_small(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    return _make("dinat_isotropic_small", dict(_SMALL, dilation=2), pretrained, **kwargs)


@register_model
def dinat_isotropic_base(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    return _make("dinat_isotropic_base", dict(_BASE, dilation=2), pretrained, **kwargs)


@register_model
def vitrpb_small(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    return _make("vitrpb_small", dict(_SMALL, attention="global_rpb"), pretrained, **kwargs)


@register_model
def vitrpb_base(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    return _make("vitrpb_base", dict(_BASE, attention="global_rpb"), pretrained, **kwargs)

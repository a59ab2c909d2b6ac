"""NAT and DiNAT: hierarchical neighborhood-attention transformers with overlapping convolutions.

Neighborhood Attention Transformer (Hassani et al., CVPR 2023) and Dilated Neighborhood Attention
Transformer (Hassani & Shi, 2022). DiNAT is NAT with per-block dilations; both are the same class.
State-dict keys are exactly those of the original checkpoints (model_zoo.md §4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn

from .dilation import D224, D384
from .layers import (
    Conv2d,
    HierarchicalMixin,
    LayerNorm,
    Linear,
    build_levels,
    check_hierarchical_args,
    materialize,
    pretrained_tag_defaults,
)
from .pretrained import build_zoo_model, zoo_cfg

__all__ = ["NAT", "ConvDownsampler", "ConvTokenizer", "DiNAT"]


class ConvTokenizer(nn.Module):
    """Stem: two 3x3 stride-2 convolutions (``in_chans -> C/2 -> C``), channels-last, LayerNorm."""

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 64,
        norm_layer: Callable[..., nn.Module] = LayerNorm,
    ) -> None:
        super().__init__()
        self.proj = nn.Sequential(  # on the CPU the first one picks the layout the stem runs in
            Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = norm_layer(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """3x3 stride-2 convolution ``dim -> 2 dim`` without bias, then LayerNorm; channels-last."""

    def __init__(self, dim: int, norm_layer: Callable[..., nn.Module] = LayerNorm) -> None:
        super().__init__()
        self.reduction = Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = norm_layer(2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NAT(HierarchicalMixin, nn.Module):
    """NAT / DiNAT classifier (also the trunk of the detection/segmentation backbones).

    Args:
        depths: blocks per level. num_heads: heads per level. embed_dim: C (levels are C..8C).
        kernel_size: neighborhood size (odd). dilations: per-level lists of per-block dilations
            (``None``: all 1, i.e. NAT); see :func:`classification.dilation.dilation_schedule`.
        mlp_ratio: MLP hidden size over dim. layer_scale: initial layer-scale value or ``None``.
        drop_rate: dropout after the stem and inside attention projection / MLP (as upstream).
        attn_drop_rate: attention-weight dropout. drop_path_rate: final stochastic-depth rate.
        in_chans: input channels. num_classes: classes; ``0`` leaves no head (backbones).
        global_pool: ``"avg"`` (mean over tokens) or ``""`` (no pooling).
        device, dtype: where the weights are allocated and their floating dtype (built on the meta
            device, then materialised: see :func:`classification.layers.materialize`).

    Keys: ``patch_embed.proj.{0,1}``, ``patch_embed.norm``, ``levels.{i}.blocks.{j}.*``,
    ``levels.{i}.downsample.{reduction,norm}`` (i < 3), ``norm``, ``head``. A backbone wrapper can
    adopt ``patch_embed`` and ``levels`` and call :meth:`forward_intermediates`
    (``norm=False, intermediates_only=True``): NCHW maps of each level at strides 4/8/16/32, taken
    before the level's downsampler and before any norm, to which it applies its ``norm0..norm3``.
    """

    stage_attr = "levels"

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 6, 5),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        embed_dim: int = 64,
        mlp_ratio: float = 3.0,
        kernel_size: int = 7,
        dilations: Sequence[Sequence[int]] | None = None,
        layer_scale: float | None = None,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        norm_layer: Callable[..., nn.Module] = LayerNorm,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        dilations = check_hierarchical_args(
            "NAT", kwargs, depths, num_heads, global_pool, drop_path_rate, dilations
        )
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.kernel_size = kernel_size
        self.num_levels = len(depths)
        self.embed_dim = embed_dim
        dims = [embed_dim * 2**i for i in range(self.num_levels)]
        self.num_features = self.head_hidden_size = dims[-1]

        with torch.device("meta"):  # allocated and initialised by materialize() below
            self.patch_embed = ConvTokenizer(in_chans, embed_dim, norm_layer)
            self.pos_drop = nn.Dropout(drop_rate)
            self.levels, self.feature_info = build_levels(
                dims,
                depths,
                num_heads,
                kernel_size,
                dilations,
                drop_path_rate,
                downsample=partial(ConvDownsampler, norm_layer=norm_layer),
                module_name="levels",
                stem_stride=4,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                layer_scale=layer_scale,
                norm_layer=norm_layer,
            )
            self.norm = norm_layer(self.num_features)
            self.head = Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        materialize(self, device, dtype)


DiNAT = NAT  # DiNAT is NAT with dilations: one definition.


def _create_nat(variant: str, pretrained: bool = False, **kwargs: Any) -> NAT:
    return build_zoo_model(NAT, variant, pretrained, (0, 1, 2, 3), **kwargs)


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    paper = _NAT_PAPER if "/nat/" in url else _DINAT_PAPER
    arch = dict(pool_size=(7, 7), first_conv="patch_embed.proj.0", paper_ids=paper)
    return zoo_cfg(url, arch, **kwargs)


_NAT = "https://shi-labs.com/projects/nat/checkpoints/CLS/"
_NAT_PAPER, _DINAT_PAPER = "arXiv:2204.07143", "arXiv:2209.15001"
_DINAT = "https://shi-labs.com/projects/dinat/checkpoints/"
_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)

default_cfgs = generate_default_cfgs(
    {
        "nat_mini.in1k": _cfg(_NAT + "nat_mini.pth"),
        "nat_tiny.in1k": _cfg(_NAT + "nat_tiny.pth"),
        "nat_small.in1k": _cfg(_NAT + "nat_small.pth"),
        "nat_base.in1k": _cfg(_NAT + "nat_base.pth"),
        "dinat_mini.in1k": _cfg(_DINAT + "imagenet1k/dinat_mini_in1k_224.pth"),
        "dinat_tiny.in1k": _cfg(_DINAT + "imagenet1k/dinat_tiny_in1k_224.pth"),
        "dinat_small.in1k": _cfg(_DINAT + "imagenet1k/dinat_small_in1k_224.pth"),
        "dinat_base.in1k": _cfg(_DINAT + "imagenet1k/dinat_base_in1k_224.pth"),
        "dinat_large.in22k_ft_in1k": _cfg(_DINAT + "imagenet1k/dinat_large_in22k_in1k_224.pth"),
        "dinat_large.in22k": _cfg(
            _DINAT + "imagenet22k/dinat_large_in22k_224.pth", num_classes=21841
        ),
        "dinat_large_384.in22k_ft_in1k": _cfg(
            _DINAT + "imagenet1k/dinat_large_in22k_in1k_384.pth", **_384
        ),
        "dinat_large_384_11x11.in22k_ft_in1k": _cfg(
            _DINAT + "imagenet1k/dinat_large_in22k_in1k_384_11x11.pth", **_384
        ),
        # the 22K weights with rpb bicubically resized to 11x11, at their 224 training resolution
        "dinat_large_384_11x11.in22k": _cfg(
            _DINAT + "imagenet22k/dinat_large_in22k_224_11x11interp.pth", num_classes=21841
        ),
    }
)

_MINI = dict(depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0)
_TINY = dict(depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0)
_SMALL = dict(depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2.0)
_BASE = dict(depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2.0)
_LARGE = dict(depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2.0)


def _build(variant: str, pretrained: bool, arch: dict[str, Any], **kwargs: Any) -> NAT:
    """Merge the variant's hyper-parameters (those of its pretrained tag first) with the caller's;
    a schedule function in ``dilations`` (D224/D384) is expanded for the final depths."""
    args = dict(arch, **pretrained_tag_defaults(variant, kwargs))
    args.update(kwargs)
    if callable(args.get("dilations")):
        args["dilations"] = args["dilations"](args["depths"])
    return _create_nat(variant, pretrained, **args)


@register_model
def nat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    return _build("nat_mini", pretrained, dict(_MINI, drop_path_rate=0.2), **kwargs)


@register_model
def nat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    return _build("nat_tiny", pretrained, dict(_TINY, drop_path_rate=0.2), **kwargs)


@register_model
def nat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    arch = dict(_SMALL, drop_path_rate=0.3, layer_scale=1e-5)
    return _build("nat_small", pretrained, arch, **kwargs)


@register_model
def nat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    arch = dict(_BASE, drop_path_rate=0.5, layer_scale=1e-5)
    return _build("nat_base", pretrained, arch, **kwargs)


@register_model
def dinat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    arch = dict(_MINI, drop_path_rate=0.2, dilations=D224)
    return _build("dinat_mini", pretrained, arch, **kwargs)


@register_model
def dinat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    arch = dict(_TINY, drop_path_rate=0.2, dilations=D224)
    return _build("dinat_tiny", pretrained, arch, **kwargs)


@register_model
def dinat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    arch = dict(_SMALL, drop_path_rate=0.3, dilations=D224)
    return _build("dinat_small", pretrained, arch, **kwargs)


@register_model
def dinat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    arch = dict(_BASE, drop_path_rate=0.5, dilations=D224, layer_scale=1e-5)
    return _build("dinat_base", pretrained, arch, **kwargs)


@register_model
def dinat_large(pretrained: bool = False, **kwargs: Any) -> NAT:
    arch = dict(_LARGE, drop_path_rate=0.35, dilations=D224)
    return _build("dinat_large", pretrained, arch, **kwargs)


@register_model
def dinat_large_384(pretrained: bool = False, **kwargs: Any) -> NAT:
    arch = dict(_LARGE, drop_path_rate=0.35, dilations=D384)
    return _build("dinat_large_384", pretrained, arch, **kwargs)


@register_model
def dinat_large_384_11x11(pretrained: bool = False, **kwargs: Any) -> NAT:
    arch = dict(_LARGE, drop_path_rate=0.35, dilations=D224, kernel_size=11)
    return _build("dinat_large_384_11x11", pretrained, arch, **kwargs)

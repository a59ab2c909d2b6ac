"""DiNAT_s: the Swin-like variant of DiNAT (4x4 patch embedding, Swin patch merging, no layer
scale), blocks alternating NA and dilated NA. State-dict keys as the original checkpoints
(``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.*``,
``layers.{i}.downsample.{norm,reduction}``,
``norm``, ``head``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from timm.models import generate_default_cfgs, register_model
from timm.models.swin_transformer import PatchMerging
from torch import nn

from .dilation import D224, D384
from .layers import (
    HierarchicalMixin,
    LayerNorm,
    Linear,
    build_levels,
    check_hierarchical_args,
    materialize,
    patch_embedding,
    pretrained_tag_defaults,
)
from .pretrained import build_zoo_model, zoo_cfg

__all__ = ["DiNAT_s"]


class DiNAT_s(HierarchicalMixin, nn.Module):
    """DiNAT_s classifier (also the trunk of its detection/segmentation backbones).

    Args:
        depths, num_heads, embed_dim, mlp_ratio, kernel_size, dilations (per-level lists of
        per-block dilations), drop_rate, attn_drop_rate, drop_path_rate, in_chans, num_classes
        (``0``: no head), global_pool: as :class:`classification.nat.NAT` (no layer scale here).
        patch_size: the patch embedding's stride (4). device, dtype: as for NAT.

    The stem is timm's ``PatchEmbed`` (4x4 conv, padded to a multiple of 4, LayerNorm) and the
    downsampler timm's Swin ``PatchMerging`` (2x2 gather in the order (0,0), (1,0), (0,1), (1,1),
    LN(4C), Linear(4C -> 2C), odd sizes zero-padded), whose keys match the original ones.
    :meth:`forward_intermediates` gives each level's NCHW map (strides 4/8/16/32) before its
    patch merging and before any norm; a backbone wrapper adopts ``patch_embed`` and ``layers``.
    """

    stage_attr = "layers"

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        embed_dim: int = 96,
        mlp_ratio: float = 4.0,
        kernel_size: int = 7,
        dilations: Sequence[Sequence[int]] | None = None,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
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
            "DiNAT_s", kwargs, depths, num_heads, global_pool, drop_path_rate, dilations
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
            self.patch_embed = patch_embedding(patch_size, in_chans, embed_dim, norm_layer)
            self.pos_drop = nn.Dropout(drop_rate)
            self.layers, self.feature_info = build_levels(
                dims,
                depths,
                num_heads,
                kernel_size,
                dilations,
                drop_path_rate,
                downsample=partial(PatchMerging, norm_layer=norm_layer),
                module_name="layers",
                stem_stride=patch_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                norm_layer=norm_layer,
            )
            self.norm = norm_layer(self.num_features)
            self.head = Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        materialize(self, device, dtype)


def _create_dinat_s(variant: str, pretrained: bool = False, **kwargs: Any) -> DiNAT_s:
    return build_zoo_model(DiNAT_s, variant, pretrained, (0, 1, 2, 3), **kwargs)


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    arch = dict(pool_size=(7, 7), first_conv="patch_embed.proj", paper_ids="arXiv:2209.15001")
    return zoo_cfg(url, arch, **kwargs)


_URL = "https://shi-labs.com/projects/dinat/checkpoints/"

default_cfgs = generate_default_cfgs(
    {
        "dinat_s_tiny.in1k": _cfg(_URL + "imagenet1k/dinat_s_tiny_in1k_224.pth"),
        "dinat_s_small.in1k": _cfg(_URL + "imagenet1k/dinat_s_small_in1k_224.pth"),
        "dinat_s_base.in1k": _cfg(_URL + "imagenet1k/dinat_s_base_in1k_224.pth"),
        # the Large models are pre-trained on ImageNet-22K; upstream names the 1K files "in1k"
        "dinat_s_large.in22k_ft_in1k": _cfg(_URL + "imagenet1k/dinat_s_large_in1k_224.pth"),
        "dinat_s_large.in22k": _cfg(
            _URL + "imagenet22k/dinat_s_large_in22k_224.pth", num_classes=21841
        ),
        "dinat_s_large_384.in22k_ft_in1k": _cfg(
            _URL + "imagenet1k/dinat_s_large_in1k_384.pth",
            input_size=(3, 384, 384),
            pool_size=(12, 12),
            crop_pct=1.0,
        ),
    }
)


def _build(
    variant: str,
    pretrained: bool,
    arch: dict[str, Any],
    schedule: Callable[[Sequence[int]], list[list[int]]],
    **kwargs: Any,
) -> DiNAT_s:
    """The variant's hyper-parameters (those of its pretrained tag first), overridable by the
    caller; ``schedule`` (D224/D384) gives the dilations for the final depths unless
    ``dilations`` is passed."""
    args = dict(arch, mlp_ratio=4.0, **pretrained_tag_defaults(variant, kwargs))
    args.update(kwargs)
    args.setdefault("dilations", schedule(args["depths"]))
    return _create_dinat_s(variant, pretrained, **args)


def _arch(depths: Sequence[int], heads: Sequence[int], dim: int, dpr: float) -> dict[str, Any]:
    return dict(depths=depths, num_heads=heads, embed_dim=dim, drop_path_rate=dpr)


_TINY = _arch((2, 2, 6, 2), (3, 6, 12, 24), 96, 0.2)
_SMALL = _arch((2, 2, 18, 2), (3, 6, 12, 24), 96, 0.3)
_BASE = _arch((2, 2, 18, 2), (4, 8, 16, 32), 128, 0.5)
_LARGE = _arch((2, 2, 18, 2), (6, 12, 24, 48), 192, 0.35)


@register_model
def dinat_s_tiny(pretrained: bool = False, **kwargs: Any) -> DiNAT_s:
    return _build("dinat_s_tiny", pretrained, _TINY, D224, **kwargs)


@register_model
def dinat_s_small(pretrained: bool = False, **kwargs: Any) -> DiNAT_s:
    return _build("dinat_s_small", pretrained, _SMALL, D224, **kwargs)


@register_model
def dinat_s_base(pretrained: bool = False, **kwargs: Any) -> DiNAT_s:
    return _build("dinat_s_base", pretrained, _BASE, D224, **kwargs)


@register_model
def dinat_s_large(pretrained: bool = False, **kwargs: Any) -> DiNAT_s:
    return _build("dinat_s_large", pretrained, _LARGE, D224, **kwargs)


@register_model
def dinat_s_large_384(pretrained: bool = False, **kwargs: Any) -> DiNAT_s:
    return _build("dinat_s_large_384", pretrained, _LARGE, D384, **kwargs)

"""The blocks shared by the NAT/DiNAT, DiNAT_s and isotropic classifiers.

- :class:`NATransformerBlock`: the pre-norm transformer block of every family (keys ``norm1``,
  ``attn.{qkv,rpb,proj}``, ``norm2``, ``mlp.{fc1,fc2}``, optional ``gamma1``/``gamma2``).
- :class:`Mlp`: the block's MLP, timm's ``Mlp`` on the package's :data:`~.linear.Linear`.
- :class:`NALevel`: a level of blocks with an optional downsampler run *after* the blocks, and
  :func:`build_levels`, the levels of a hierarchical model.
- :func:`patch_embedding`: the patch-embedding stem of DiNAT_s and the isotropic models.
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.layers import DropPath, PatchEmbed
from timm.models._manipulate import checkpoint
from torch import Tensor, nn

from .attention import neighborhood_attention
from .linear import Linear
from .norm import LayerNorm

__all__ = ["Mlp", "NALevel", "NATransformerBlock", "build_levels", "patch_embedding"]


def patch_embedding(
    patch_size: int, in_chans: int, embed_dim: int, norm_layer: Callable[..., nn.Module]
) -> PatchEmbed:
    """timm's ``PatchEmbed`` (a ``patch_size`` stride convolution, then ``norm_layer``; keys
    ``proj``, ``norm``) for any input size, zero-padded up to a multiple of the patch, with
    channels-last ``[B, H, W, C]`` output."""
    return PatchEmbed(
        img_size=None,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=embed_dim,
        norm_layer=norm_layer,
        output_fmt="NHWC",
        strict_img_size=False,
        dynamic_img_pad=True,
    )


class Mlp(nn.Module):
    """timm's ``Mlp`` (``fc1 -> act -> drop1 -> norm -> fc2 -> drop2``, the same attributes and
    keys) on the package's ``Linear`` (:class:`~classification.layers.linear.FastLinear`), so
    that its float32 CPU inference runs oneDNN's matmul."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class NATransformerBlock(nn.Module):
    """Pre-norm block: ``x + DropPath(g1 * Attn(LN(x)))``, then ``x + DropPath(g2 * MLP(LN(x)))``.

    The attention is :class:`natten_ext.NeighborhoodAttention2D` on the package's Linear layers
    (:func:`~classification.layers.attention.neighborhood_attention`; kernel ``kernel_size``,
    ``dilation``, RPB on) unless ``attn_layer`` builds another module with the same signature
    (``attn_layer(dim, num_heads=..., qkv_bias=..., qk_scale=..., attn_drop=..., proj_drop=...)``).
    ``gamma1``/``gamma2`` (layer scale) exist only when ``layer_scale`` is given. Input and output
    are channels-last ``[B, H, W, C]``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        dilation: int = 1,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = LayerNorm,
        attn_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        attn_kwargs: dict[str, Any] = dict(
            qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop
        )
        if attn_layer is None:
            self.attn = neighborhood_attention(
                dim, num_heads, kernel_size, dilation=dilation, **attn_kwargs
            )
        else:
            self.attn = attn_layer(dim, num_heads=num_heads, **attn_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        if layer_scale is not None:
            if not isinstance(layer_scale, (int, float)) or layer_scale <= 0:
                raise ValueError(
                    f"layer_scale must be a positive number or None, got {layer_scale}"
                )
            self.layer_scale = float(layer_scale)
            self.gamma1 = nn.Parameter(torch.empty(dim))
            self.gamma2 = nn.Parameter(torch.empty(dim))
        else:
            self.layer_scale = None
            self.gamma1 = self.gamma2 = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fill the layer-scale vectors with ``layer_scale`` (submodules reset themselves)."""
        if self.gamma1 is not None and self.gamma2 is not None and self.layer_scale is not None:
            nn.init.constant_(self.gamma1, self.layer_scale)
            nn.init.constant_(self.gamma2, self.layer_scale)

    def forward(self, x: Tensor) -> Tensor:
        y = self.attn(self.norm1(x))
        if self.gamma1 is not None:
            y = self.gamma1 * y
        x = x + self.drop_path(y)
        y = self.mlp(self.norm2(x))
        if self.gamma2 is not None:
            y = self.gamma2 * y
        return x + self.drop_path(y)


class NALevel(nn.Module):
    """``blocks`` (a ModuleList of :class:`NATransformerBlock`) then an optional ``downsample``.

    :meth:`forward_blocks` returns the level's output *before* its downsampler, which is what the
    detection/segmentation backbones take as the level's feature map.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        kernel_size: int,
        dilations: Sequence[int],
        drop_path: Sequence[float],
        downsample: Callable[[int], nn.Module] | None = None,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            NATransformerBlock(
                dim,
                num_heads,
                kernel_size=kernel_size,
                dilation=dilations[i],
                drop_path=drop_path[i],
                **block_kwargs,
            )
            for i in range(depth)
        )
        self.downsample = downsample(dim) if downsample is not None else None

    def forward_blocks(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


def build_levels(
    dims: Sequence[int],
    depths: Sequence[int],
    num_heads: Sequence[int],
    kernel_size: int,
    dilations: Sequence[Sequence[int]],
    drop_path_rate: float,
    downsample: Callable[[int], nn.Module],
    module_name: str,
    stem_stride: int,
    **block_kwargs: Any,
) -> tuple[nn.ModuleList, list[dict[str, Any]]]:
    """The levels of a hierarchical model (all but the last end in ``downsample``) and their
    timm ``feature_info``; stochastic depth rises linearly over all blocks."""
    dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
    levels, feature_info = nn.ModuleList(), []
    for i, depth in enumerate(depths):
        start = sum(depths[:i])
        levels.append(
            NALevel(
                dims[i],
                depth,
                num_heads[i],
                kernel_size,
                dilations[i],
                dpr[start : start + depth],
                downsample=downsample if i < len(depths) - 1 else None,
                **block_kwargs,
            )
        )
        # the level's last block: its output is the level's feature map (before downsampling),
        # for the FX and hook feature extractors
        feature_info.append(
            dict(
                num_chs=dims[i],
                reduction=stem_stride * 2**i,
                module=f"{module_name}.{i}.blocks.{depth - 1}",
            )
        )
    return levels, feature_info

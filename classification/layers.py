"""Building blocks shared by the NAT/DiNAT, DiNAT_s and isotropic classifiers.

- :class:`NATransformerBlock`: the pre-norm transformer block of every family (keys ``norm1``,
  ``attn.{qkv,rpb,proj}``, ``norm2``, ``mlp.{fc1,fc2}``, optional ``gamma1``/``gamma2``).
- :class:`Mlp`: the block's MLP, timm's ``Mlp`` on ``FastLinear`` layers (oneDNN's matmul for
  float32 CPU inference).
- :class:`NALevel`: a level of blocks with an optional downsampler run *after* the blocks.
- :class:`ClassifierMixin` and :class:`HierarchicalMixin`: the timm model API (head, weight decay,
  intermediates, pruning, gradient checkpointing, initialisation) written once for the three
  families.

Every model is built on the meta device and then materialised by :func:`materialize` on the
requested ``device`` (default: the current default device) and initialised there by the model's
``init_weights()``, so ``timm.create_model(name, device="cuda", dtype=torch.bfloat16)`` allocates
the weights once, where they are used, and ``device="meta"`` allocates nothing. The
``natten_ext`` attention modules are registered with timm as FX leaves here (their padding depends
on the input's shape); their forward is TorchScript-compatible.
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.layers import DropPath, trunc_normal_
from timm.models import register_notrace_module, resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from torch import Tensor, nn

from natten_ext import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from natten_ext.fast_linear import FastLinear

from .fast_layernorm import FastLayerNorm

for _cls in (NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D):
    register_notrace_module(_cls)

__all__ = [
    "ClassifierMixin",
    "HierarchicalMixin",
    "Mlp",
    "NALevel",
    "NATransformerBlock",
    "check_dilations",
    "init_module_weights",
    "materialize",
    "pretrained_tag_defaults",
]

# The ImageNet-22K pre-training runs of the Large models used drop path 0.2 (the original `in22k`
# model definitions); their 1K fine-tunes (the registered defaults) use 0.35.
_TAG_DEFAULTS: dict[str, dict[str, Any]] = {"in22k": {"drop_path_rate": 0.2}}


def init_module_weights(module: nn.Module) -> None:
    """Spec init: Linear trunc_normal(std 0.02) with zero bias, LayerNorm weight 1 / bias 0.

    Convolutions keep PyTorch's default init, as in the original code; ``rpb`` tables are
    initialised by the attention modules themselves (trunc_normal, std 0.02).
    """
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def materialize(
    model: nn.Module,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Allocate a model built on the meta device and initialise it with ``model.init_weights()``.

    ``device`` defaults to the current default device (``torch.get_default_device()``, which a
    ``with torch.device(...)`` block sets); on ``"meta"`` nothing is allocated. Floating
    parameters and buffers are then cast to ``dtype`` when it is given.
    """
    target = torch.device(device) if device is not None else torch.get_default_device()
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if target.type != "meta":
        model.to_empty(device=target)
        model.init_weights()
    if dtype is not None:
        model.to(dtype=dtype)


def pretrained_tag_defaults(variant: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters that depend on the pretrained tag ``kwargs`` asks for (e.g.
    ``timm.create_model("dinat_large.in22k")``); arguments the caller passes still win."""
    tag = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg")).tag
    return dict(_TAG_DEFAULTS.get(tag or "", {}))


def check_dilations(
    dilations: Sequence[Sequence[int]] | None, depths: Sequence[int]
) -> list[list[int]]:
    """Validate a per-level list of per-block dilations (``None`` means all ones)."""
    if dilations is None:
        return [[1] * d for d in depths]
    dilations = [list(level) for level in dilations]
    if len(dilations) != len(depths):
        raise ValueError(
            f"dilations must have one list per level ({len(depths)} levels), got {len(dilations)}"
        )
    for i, (level, depth) in enumerate(zip(dilations, depths)):
        if len(level) != depth:
            raise ValueError(
                f"dilations[{i}] must have one entry per block ({depth}), got {len(level)}: {level}"
            )
        for d in level:
            if not isinstance(d, int) or isinstance(d, bool) or d < 1:
                raise ValueError(f"dilations[{i}] entries must be ints >= 1, got {level}")
    return dilations


def check_hierarchical_args(
    model_name: str,
    unexpected: dict[str, Any],
    depths: Sequence[int],
    num_heads: Sequence[int],
    global_pool: str,
    drop_path_rate: float,
    dilations: Sequence[Sequence[int]] | None,
) -> list[list[int]]:
    """Constructor checks shared by the hierarchical models; returns the normalised dilations."""
    if unexpected:
        raise TypeError(f"{model_name} got unexpected arguments: {sorted(unexpected)}")
    if len(num_heads) != len(depths):
        raise ValueError(f"num_heads needs one entry per level ({len(depths)}), got {num_heads}")
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    return check_dilations(dilations, depths)


class Mlp(nn.Module):
    """timm's ``Mlp`` (``fc1 -> act -> drop1 -> norm -> fc2 -> drop2``, the same attributes and
    keys) on :class:`~natten_ext.fast_linear.FastLinear` layers, so that its float32 CPU
    inference runs oneDNN's matmul."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc1 = FastLinear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = FastLinear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class NATransformerBlock(nn.Module):
    """Pre-norm block: ``x + DropPath(g1 * Attn(LN(x)))``, then ``x + DropPath(g2 * MLP(LN(x)))``.

    The attention is :class:`natten_ext.NeighborhoodAttention2D` (kernel ``kernel_size``,
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
        norm_layer: Callable[..., nn.Module] = FastLayerNorm,
        attn_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        attn_kwargs: dict[str, Any] = dict(
            qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop
        )
        if attn_layer is None:
            self.attn = NeighborhoodAttention2D(
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


class ClassifierMixin:
    """Head, optimizer and initialisation API shared by every family.

    Expects ``self.head`` (Linear or Identity), ``self.num_features``, ``self.num_classes``,
    ``self.global_pool`` (``"avg"`` or ``""``) and ``forward_features`` returning ``[B, H, W, C]``
    (hence ``output_fmt = "NHWC"``, as timm's channels-last models declare).
    """

    output_fmt = "NHWC"

    @torch.jit.ignore
    def init_weights(self) -> None:
        """(Re)initialise every parameter and computed buffer, e.g. after ``to_empty()``.

        Each submodule's own ``reset_parameters()`` runs first (PyTorch's defaults for
        convolutions, the rpb tables and ViT-rpb's index buffer, layer scale), then Linear and
        LayerNorm get the spec init (:func:`init_module_weights`).
        """
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self.apply(init_module_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of the RPB tables (they take no weight decay; norms/biases are 1-D anyway)."""
        return {name for name, _ in self.named_parameters() if name.endswith("rpb")}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"rpb"}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head by a freshly initialised ``Linear(num_features, num_classes)`` on the
        model's device and dtype, in the model's training mode (``0`` leaves no head)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = next(self.parameters())
        if num_classes > 0:
            head = FastLinear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            init_module_weights(head)
        else:
            head = nn.Identity()
        self.head = head.train(self.training)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Mean over tokens (when ``global_pool == "avg"``) then the linear head."""
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class HierarchicalMixin(ClassifierMixin):
    """timm API of the four-level models (NAT/DiNAT keep their levels in ``levels``, DiNAT_s in
    ``layers``; ``stage_attr`` names the attribute so the state-dict keys stay the original ones).

    Expects ``patch_embed``, ``pos_drop``, the ModuleList of :class:`NALevel`, ``norm`` and
    ``feature_info``. (No class-level annotations here: TorchScript would read them as the types
    of module attributes.)
    """

    __jit_unused_properties__ = ["stages"]

    @property
    def stages(self) -> nn.ModuleList:
        return getattr(self, self.stage_attr)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        s = self.stage_attr
        return dict(
            stem=r"^patch_embed",
            blocks=rf"^{s}\.(\d+)"
            if coarse
            else [
                (rf"^{s}\.(\d+)\.blocks\.(\d+)", None),
                (rf"^{s}\.(\d+)\.downsample", (99998,)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def set_dilations(self, dilations: Sequence[Sequence[int]]) -> None:
        """Change every block's dilation in place (weights are unaffected), e.g. to
        :func:`classification.dilation.dilation_schedule` for a new input resolution."""
        depths = [len(stage.blocks) for stage in self.stages]
        dilations = check_dilations(dilations, depths)
        for stage, level in zip(self.stages, dilations):
            for blk, d in zip(stage.blocks, level):
                blk.attn.dilation = (d, d)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pos_drop(self.patch_embed(x))
        # The two attribute names spelled out: TorchScript resolves hasattr with a literal name
        # when it compiles (it cannot follow getattr(self, self.stage_attr)).
        if hasattr(self, "levels"):
            for stage in self.levels:
                x = stage(x)
        else:
            for stage in self.layers:
                x = stage(x)
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
        """Per-level outputs (NCHW, strides 4/8/16/32), each taken *before* the level's
        downsampler and before any norm (``norm=True`` applies the final norm to the last one).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = (
            self.stages
            if torch.jit.is_scripting() or not stop_early
            else self.stages[: max_index + 1]
        )
        intermediates = []
        x = self.pos_drop(self.patch_embed(x))
        for i, stage in enumerate(stages):
            x = stage.forward_blocks(x)
            if i in take_indices:
                y = self.norm(x) if norm and i == last else x
                intermediates.append(
                    y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y
                )
            if stage.downsample is not None and (i < len(stages) - 1 or not stop_early):
                x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.norm(x)  # the final norm is sized for the last level only
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the levels after the last wanted one (and its downsampler), the norm and head."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        setattr(self, self.stage_attr, self.stages[: max_index + 1])
        if prune_end:
            self.stages[max_index].downsample = None
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

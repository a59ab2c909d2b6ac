"""The timm model API written once for the three families, and the helpers their constructors
share.

- :class:`ClassifierMixin` and :class:`HierarchicalMixin`: head, weight decay, intermediates,
  pruning, gradient checkpointing, initialisation.
- :func:`materialize`: every model is built on the meta device and then materialised on the
  requested ``device`` (default: the current default device) and initialised there by the
  model's ``init_weights()``, so ``timm.create_model(name, device="cuda", dtype=torch.bfloat16)``
  allocates the weights once, where they are used, and ``device="meta"`` allocates nothing.
- :func:`init_module_weights`, :func:`pretrained_tag_defaults`, :func:`check_dilations`,
  :func:`check_hierarchical_args`.
"""

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import trunc_normal_
from timm.models import resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from .linear import Linear

__all__ = [
    "ClassifierMixin",
    "HierarchicalMixin",
    "check_dilations",
    "check_hierarchical_args",
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
            head = Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
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

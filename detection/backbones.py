"""NAT / DiNAT / DiNAT_s backbones for mmdet and mmseg, built from the classification models.

Each backbone builds its classifier from :mod:`classification` (``num_classes=0``) and adopts its
stem (``patch_embed``) and levels (``levels`` for NAT/DiNAT, ``layers`` for DiNAT_s) at top level,
so state-dict keys are ``patch_embed.*``, ``levels.{i}.*`` -- ``backbone.patch_embed.*`` and so on
inside a detector, as in the published detection/segmentation checkpoints. It adds a LayerNorm
``norm{i}`` per output level and returns NCHW maps at strides 4/8/16/32, each taken after the
level's blocks and before its downsampler.

``init_cfg=dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads a classification checkpoint
in the original (or Hugging Face) format: its final ``norm`` and ``head`` are left out, the output
norms keep their initialisation, rpb tables are resized when kernel sizes differ, and
``prefix='backbone.'`` takes the backbone out of a detector/segmentor checkpoint. A file that
matches none of the backbone's tensors, or lacks stage weights, is an error (``strict=False`` in
the init_cfg loads what fits). URLs are downloaded to torch's hub cache and read, like local
files, with ``weights_only=True``. A file that cannot be read raises
:class:`classification.checkpoint.CheckpointFileError` naming it.

The classes are registered in mmdet's and mmseg's ``MODELS`` by :mod:`detection.models` and
:mod:`segmentation.models`; this module itself needs neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmengine.logging import MMLogger, print_log
from mmengine.model import BaseModule
from torch import Tensor, nn

from classification.checkpoint import (
    CheckpointFileError,
    check_fit,
    describe_error,
    fit_state_dict,
    hf_to_original,
    is_hf_layout,
    load_checkpoint_file,
    mismatch,
    unwrap_state_dict,
)
from classification.dinat_s import DiNAT_s
from classification.nat import NAT
from detection.mmcv_compat import load_url_weights_only

__all__ = [
    "BACKBONES",
    "DiNATBackbone",
    "DiNATSBackbone",
    "NATBackbone",
    "load_classification_weights",
    "register_backbones",
]


class _HierarchicalBackbone(BaseModule):
    """Shared body of the three backbones; subclasses name the trunk class and stage attribute.

    Args:
        out_indices: levels (0-3) whose maps are returned, in increasing order.
        frozen_stages: -1 freezes nothing; 0 the stem; k >= 1 the stem and levels 0..k-1 (with
            their downsamplers and output norms). Frozen parts get ``requires_grad=False`` and stay
            in eval mode.
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=..., prefix=None)``
            loads classification weights (see the module docstring).
        **trunk_kwargs: architecture of the classification model (``embed_dim``, ``depths``,
            ``num_heads``, ``mlp_ratio``, ``kernel_size``, ``dilations``, ``drop_path_rate``, ...).
    """

    trunk_cls: type[nn.Module]
    stage_attr: str

    def __init__(
        self,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        init_cfg: dict[str, Any] | None = None,
        **trunk_kwargs: Any,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        for key in ("num_classes", "global_pool"):
            if key in trunk_kwargs:
                raise TypeError(f"{type(self).__name__} takes no {key!r} (backbones have no head)")
        trunk = self.trunk_cls(num_classes=0, global_pool="", **trunk_kwargs)
        stages: nn.ModuleList = getattr(trunk, self.stage_attr)
        num_levels = len(stages)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(not 0 <= i < num_levels for i in out_indices):
            raise ValueError(
                f"out_indices must be non-empty, in [0, {num_levels - 1}], got {out_indices}"
            )
        if list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f"out_indices must be increasing without repeats, got {out_indices}")
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= num_levels:
            raise ValueError(
                f"frozen_stages must be an int in [-1, {num_levels}], got {frozen_stages!r}"
            )
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.patch_embed = trunk.patch_embed
        self.pos_drop = trunk.pos_drop
        setattr(self, self.stage_attr, stages)
        self.num_features = [trunk.embed_dim * 2**i for i in range(num_levels)]
        for i in out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self._freeze_stages()

    @property
    def stages(self) -> nn.ModuleList:
        return getattr(self, self.stage_attr)

    def _freeze_stages(self) -> None:
        frozen: list[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        for i in range(self.frozen_stages):
            frozen.append(self.stages[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f"norm{i}"))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> _HierarchicalBackbone:
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.pos_drop(self.patch_embed(x))  # channels-last [B, H/4, W/4, C]
        outs = []
        last = self.out_indices[-1]
        for i, stage in enumerate(self.stages[: last + 1]):
            x = stage.forward_blocks(x)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(x)
                outs.append(out.permute(0, 3, 1, 2).contiguous())
            if i < last:
                x = stage.downsample(x)
        return tuple(outs)

    def init_weights(self) -> None:
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get("type") == "Pretrained":
            load_classification_weights(
                self, cfg["checkpoint"], prefix=cfg.get("prefix"), strict=cfg.get("strict", True)
            )
            self._is_init = True
        else:
            super().init_weights()


def _read_checkpoint(checkpoint: str) -> dict[str, Tensor]:
    if not checkpoint.startswith(("http://", "https://")):
        return load_checkpoint_file(checkpoint)
    try:
        return unwrap_state_dict(load_url_weights_only(checkpoint, map_location="cpu"))
    except Exception as err:  # a failed download, a truncated or unsafe file, no tensors...
        raise CheckpointFileError(
            f"init_cfg checkpoint {checkpoint} cannot be downloaded or read ({describe_error(err)})"
        ) from err


def load_classification_weights(
    backbone: _HierarchicalBackbone,
    checkpoint: str,
    prefix: str | None = None,
    strict: bool = True,
) -> tuple[list[str], list[str]]:
    """Load a classification checkpoint (path or URL) into ``backbone``.

    ``prefix`` (e.g. ``"backbone."``) selects and strips the keys of a detector/segmentor
    checkpoint. The classifier's final ``norm`` and ``head`` are left out and the backbone's
    output norms keep their initialisation when the file has none: both are expected. A file
    that matches none of the backbone's tensors is an error; so is one that lacks any other of
    them (stage weights) or holds tensors the backbone does not have, unless ``strict=False``,
    which loads the tensors that fit and warns about the rest. Returns (missing, unexpected).
    """
    name = type(backbone).__name__
    state = _read_checkpoint(str(checkpoint))
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"checkpoint {checkpoint} has no key starting with prefix {prefix!r}")
    if is_hf_layout(state):
        state = hf_to_original(state)
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "norm."))}
    own = backbone.state_dict()
    if not any(k in own for k in state):
        shown = ", ".join(list(state)[:3])
        raise CheckpointFileError(
            f"init_cfg checkpoint {checkpoint} matches none of {name}'s tensors (it holds "
            f"{len(state)}, e.g. {shown}): expected a NAT/DiNAT/DiNAT_s classification "
            f"checkpoint, or a detector/segmentor one with prefix='backbone.'"
        )
    state = fit_state_dict(state, backbone)
    norms = tuple(f"norm{i}." for i in backbone.out_indices)
    fresh = [k for k in own if k.startswith(norms) and k not in state]
    state.update({k: own[k] for k in fresh})  # output norms keep their initialisation
    before = mismatch(backbone, state)
    state = check_fit(
        state,
        backbone,
        strict,
        f"init_cfg {checkpoint}",
        hint="set strict=False in init_cfg to load the tensors that fit",
    )
    backbone.load_state_dict(state, strict=False)
    kept = sorted({k.split(".")[0] for k in fresh})
    print_log(
        f"loaded {len(state) - len(fresh)} tensors from {checkpoint} into {name}"
        + (f" (output norms {', '.join(kept)} as initialised)" if kept else ""),
        logger=MMLogger.get_current_instance(),
    )
    return before[0], before[1]


class NATBackbone(_HierarchicalBackbone):
    """NAT backbone (dilation 1 everywhere unless ``dilations`` is given); see the module
    docstring and :class:`classification.nat.NAT` for the architecture arguments."""

    trunk_cls = NAT
    stage_attr = "levels"


class DiNATBackbone(NATBackbone):
    """DiNAT backbone: NAT with the per-level, per-block ``dilations`` of the config (required)."""

    def __init__(self, *, dilations: Sequence[Sequence[int]], **kwargs: Any) -> None:
        if dilations is None:
            raise ValueError("DiNATBackbone needs dilations (per-level lists of per-block values)")
        super().__init__(dilations=dilations, **kwargs)


class DiNATSBackbone(_HierarchicalBackbone):
    """DiNAT_s backbone (Swin-like stem and patch merging); see :class:`classification.DiNAT_s`."""

    trunk_cls = DiNAT_s
    stage_attr = "layers"


BACKBONES = (NATBackbone, DiNATBackbone, DiNATSBackbone)


def register_backbones(registry: Any) -> None:
    """Register :data:`BACKBONES` in an OpenMMLab ``MODELS`` registry (mmdet's or mmseg's),
    replacing earlier registrations of the same names."""
    for cls in BACKBONES:
        registry.register_module(module=cls, force=True)

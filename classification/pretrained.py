"""timm model creation with the zoo's handling of pretrained weights.

:func:`build_zoo_model` is ``timm.models.build_model_with_cfg`` plus what every zoo constructor
needs around it: a local file (``pretrained_cfg_overlay=dict(file=...)``) is read with clear
errors and its head's class count becomes the pretrained cfg's; the checkpoint filter checks
that the weights fit the model (``pretrained_strict=False`` loads only the tensors that fit);
a download that fails raises :class:`WeightsDownloadError` in one line naming the file and the
cache folder where it can be placed instead.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg
from torch import nn

from .checkpoint import (
    checkpoint_filter_fn,
    describe_error,
    forget_overlay_state_dict,
    read_file_overlay,
)

__all__ = ["WeightsDownloadError", "build_zoo_model", "zoo_cfg"]

ORIGIN_URL = "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer"


def zoo_cfg(url: str, arch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A zoo model's pretrained cfg: what every family shares (ImageNet-1k classes at 224 px,
    bicubic resizing, crop 0.875, ImageNet mean and std, head ``head``, MIT licence, the
    original repository), then the family's ``arch`` entries (``pool_size``, ``first_conv``,
    ``paper_ids``), then the weights' own ``kwargs``."""
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "classifier": "head",
        "license": "mit",
        "origin_url": ORIGIN_URL,
        **arch,
        **kwargs,
    }


class WeightsDownloadError(OSError):
    """Pretrained weights could not be downloaded; the message names the file, where it was
    looked for and the cache folder where it can be placed by hand."""


def _pretrained_source(variant: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
    """timm's (kind, location) of the weights: ``url``, ``hf-hub``, ``file``, ``state_dict``."""
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    )
    return _resolve_pretrained_source(cfg.to_dict())


def _download_error(
    variant: str, kind: str, where: Any, cache_dir: Any, err: BaseException
) -> WeightsDownloadError:
    if kind == "hf-hub":
        from huggingface_hub.constants import HF_HUB_CACHE

        repo = where[0] if isinstance(where, tuple) else where
        place = f"the Hugging Face cache ({cache_dir or HF_HUB_CACHE})"
        what = f"Hugging Face repository {repo}"
        name = where[1] if isinstance(where, tuple) else "its weights"
    else:
        folder = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
        place = f"{folder}{os.sep}"
        what = where
        name = os.path.basename(urlparse(where).path)
    return WeightsDownloadError(
        f"cannot download the pretrained weights of {variant} from {what} "
        f"({describe_error(err)}); without network access, place {name} in {place} or load a "
        f"local file instead"
    )


def build_zoo_model(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    default_out_indices: tuple[int, ...],
    **kwargs: Any,
) -> Any:
    """``build_model_with_cfg`` for a zoo model (``default_out_indices``: the feature levels
    unless ``out_indices`` is given).

    ``pretrained_strict=False`` (a timm keyword) loads the tensors of a checkpoint that fit the
    model and warns about the rest; by default anything missing or extra is an error.
    """
    out_indices = kwargs.pop("out_indices", default_out_indices)
    strict = bool(kwargs.pop("pretrained_strict", True))
    weights_file = read_file_overlay(pretrained, kwargs)  # clear errors for a bad file
    kind, where = _pretrained_source(variant, kwargs) if pretrained else ("", None)
    source = weights_file or (where if kind == "url" else None)
    try:
        model = build_model_with_cfg(
            model_cls,
            variant,
            pretrained,
            pretrained_strict=strict,
            pretrained_filter_fn=partial(checkpoint_filter_fn, strict=strict, source=source),
            feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
            **kwargs,
        )
    except OSError as err:
        if kind not in ("url", "hf-hub"):
            raise
        raise _download_error(variant, kind, where, kwargs.get("cache_dir"), err) from err
    forget_overlay_state_dict(model, weights_file)
    return model

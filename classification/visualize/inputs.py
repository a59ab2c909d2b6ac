"""What the pictures are made of: a zoo model (random, published or checkpoint weights), an
image exactly as the model sees it, the model's levels and blocks, and checked arguments.

A level is one entry of the model's ``forward_intermediates``: the four levels of NAT, DiNAT
and DiNAT_s (blocks ``levels.{i}.blocks`` / ``layers.{i}.blocks``), or one layer of the
isotropic models (a level of one block).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import resolve_data_config
from torch import Tensor, nn

from ..isotropic import NATIsotropic
from ..layers import HierarchicalMixin
from .figure import VisualizeError

__all__ = [
    "InputImage",
    "LoadedModel",
    "attention_module",
    "check_file",
    "check_index",
    "index_range",
    "level_blocks",
    "load_image",
    "load_model",
    "parse_point",
    "point_to_cell",
]

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode with the input settings it was trained for."""

    model: nn.Module
    name: str
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


def load_model(
    name: str | None,
    checkpoint: str | None = None,
    pretrained: bool = False,
    model_kwargs: str | None = None,
    img_size: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LoadedModel:
    """Build ``name`` (random weights drawn after ``torch.manual_seed(seed)`` unless
    ``pretrained`` or ``checkpoint``) as nat-validate does: any checkpoint format the zoo loads;
    a nat-train checkpoint also gives the model name, its kwargs and its input size, mean and
    std. ``model_kwargs`` is a JSON object."""
    from ..validate import build_for_validation

    kwargs = {}
    if model_kwargs:
        try:
            kwargs = json.loads(model_kwargs)
        except json.JSONDecodeError as err:
            raise VisualizeError(f"--model-kwargs is not JSON ({err.msg}): {model_kwargs}") from err
        if not isinstance(kwargs, dict):
            raise VisualizeError(f"--model-kwargs must be a JSON object, got {model_kwargs}")
    # a num_classes of the kwargs is the head size (a checkpoint's head of that size is kept);
    # the rest are the model's own hyper-parameters, checked as nat-validate checks them
    num_classes = kwargs.pop("num_classes", None)
    options = argparse.Namespace(
        model=name,
        checkpoint=checkpoint,
        pretrained=pretrained,
        model_kwargs=json.dumps(kwargs) if kwargs else None,
        ema=False,
        checkpoint_num_classes=None,
    )
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
            torch.manual_seed(seed)
            model, name, hints = build_for_validation(options, num_classes)
    except TypeError as err:  # unexpected constructor arguments
        raise VisualizeError(f"--model-kwargs: {err}") from err
    model = model.to(device).eval()
    data_cfg = resolve_data_config({}, model=model)
    size = img_size or hints.get("img_size") or data_cfg["input_size"][-1]
    mean = tuple(float(v) for v in hints.get("mean", data_cfg["mean"]))
    std = tuple(float(v) for v in hints.get("std", data_cfg["std"]))
    interpolation = hints.get("interpolation") or data_cfg["interpolation"]
    if interpolation not in _RESAMPLE:
        interpolation = "bicubic"
    return LoadedModel(model, name, int(size), mean, std, interpolation)  # type: ignore[arg-type]


@dataclass(frozen=True)
class InputImage:
    """An image as the model sees it: ``tensor`` ``[1, 3, S, S]`` (normalised) and ``pixels``,
    the same ``[S, S, 3]`` uint8 RGB crop before normalisation."""

    tensor: Tensor
    pixels: np.ndarray


def load_image(
    path: str | Path,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: str = "bicubic",
    option: str = "--image",
) -> InputImage:
    """Read ``path``, resize its shorter side to ``size``, centre-crop ``size`` x ``size`` and
    normalise with ``mean`` / ``std`` (the tensor is computed from the uint8 crop shown)."""
    path = check_file(path, option)
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise VisualizeError(f"{option}: cannot read {path} as an image ({err})") from err
    w, h = image.size
    ratio = size / min(w, h)
    resized = image.resize(
        (max(size, round(w * ratio)), max(size, round(h * ratio))), _RESAMPLE[interpolation]
    )
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    pixels = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return InputImage(normalise(pixels, mean, std), pixels.copy())


def check_file(path: str | Path, option: str) -> Path:
    """``path`` as a Path if it is a file, else a VisualizeError naming ``option``."""
    path = Path(path)
    if not path.is_file():
        raise VisualizeError(f"{option}: file not found: {path}")
    return path


def normalise(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``[1, 3, H, W]`` float32 tensor of uint8 RGB ``pixels``, ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def parse_point(text: str, option: str) -> tuple[float, float]:
    """``"X,Y"``: fractions of the image width and height, each in [0, 1]."""
    parts = text.split(",")
    try:
        x, y = (float(p) for p in parts)
    except ValueError:
        x = y = float("nan")
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise VisualizeError(
            f"{option} must be X,Y: two fractions of the width and height in [0, 1] "
            f"(e.g. 0.4,0.6), got {text!r}"
        )
    return x, y


def point_to_cell(point: tuple[float, float], map_size: tuple[int, int]) -> tuple[int, int]:
    """The (row, col) of the ``map_size`` grid cell that holds the point ``(x, y)``."""
    x, y = point
    h, w = map_size
    return min(int(y * h), h - 1), min(int(x * w), w - 1)


def index_range(count: int) -> str:
    return "0" if count == 1 else f"0-{count - 1}"


def check_index(option: str, value: int, count: int, what: str) -> int:
    """``value`` if it is in ``[0, count)``, else a VisualizeError naming the accepted range."""
    if not 0 <= value < count:
        raise VisualizeError(f"{option} {value} is out of range: {what} {index_range(count)}")
    return value


def level_blocks(model: nn.Module) -> list[list[nn.Module]]:
    """The blocks of each level (see the module docstring)."""
    if isinstance(model, HierarchicalMixin):
        return [list(stage.blocks) for stage in model.stages]
    if isinstance(model, NATIsotropic):
        return [[layer] for layer in model.layers]
    raise VisualizeError(
        f"{type(model).__name__} is not a model of this zoo (NAT, DiNAT, DiNAT_s, isotropic)"
    )


def attention_module(model: nn.Module, name: str, level: int, block: int) -> nn.Module:
    """The attention module of ``block`` in ``level``, checked to be neighborhood attention."""
    from natten_ext import NeighborhoodAttention2D

    levels = level_blocks(model)
    check_index("--level", level, len(levels), f"{name} has levels")
    blocks = levels[level]
    check_index("--block", block, len(blocks), f"level {level} of {name} has blocks")
    attn = blocks[block].attn
    if not isinstance(attn, NeighborhoodAttention2D):
        raise VisualizeError(
            f"level {level} block {block} of {name} uses {type(attn).__name__}, "
            "not neighborhood attention"
        )
    return attn

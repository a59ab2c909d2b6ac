"""Model construction for training and validation through timm's registry (the zoo registers
its models on `import classification`)."""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch

from ..checkpoint import CheckpointFileError, CheckpointMismatchError, describe_error

__all__ = ["build_model", "count_parameters", "register_zoo"]


def register_zoo() -> None:
    """Import the zoo so its models are in timm's registry (no-op if it cannot be imported)."""
    with contextlib.suppress(ImportError):  # the zoo is part of this package
        importlib.import_module("classification")


def pretrained_overlay(init_checkpoint: str, init_num_classes: int | None) -> dict[str, Any]:
    """A timm pretrained_cfg overlay that points the model's own loader (and its checkpoint
    filter: key conversion, rpb resizing) at a file or URL; the head is dropped when the class
    count differs from init_num_classes."""
    key = "url" if "://" in init_checkpoint else "file"
    if key == "file" and not Path(init_checkpoint).is_file():
        raise FileNotFoundError(f"model.init_checkpoint: file not found: {init_checkpoint}")
    overlay: dict[str, Any] = {key: init_checkpoint}
    if init_num_classes is not None:
        overlay["num_classes"] = init_num_classes
    return overlay


def build_model(cfg: Mapping[str, Any], num_classes: int) -> torch.nn.Module:
    """timm.create_model from the `model` section (kwargs reach the model constructor)."""
    register_zoo()
    spec = cfg["model"]
    name = spec["name"]
    if not timm.is_model(name):
        raise ValueError(
            f"model.name: unknown model {name!r}; zoo models: "
            f"{', '.join(timm.list_models(['nat_*', 'dinat*', 'vitrpb*'])) or 'none registered'}"
        )
    kwargs: dict[str, Any] = dict(spec["kwargs"])
    pretrained = bool(spec["pretrained"])
    if spec["init_checkpoint"]:
        pretrained = True
        kwargs["pretrained_cfg_overlay"] = pretrained_overlay(
            spec["init_checkpoint"], spec["init_num_classes"]
        )
        kwargs["pretrained_strict"] = spec["init_strict"]
    try:
        return timm.create_model(
            name,
            pretrained=pretrained,
            num_classes=num_classes,
            drop_path_rate=spec["drop_path_rate"],
            **kwargs,
        )
    except CheckpointMismatchError as err:
        raise CheckpointFileError(
            f"model.init_checkpoint: {err.problem}; set model.init_strict=false to load the "
            f"tensors that fit"
        ) from err
    except CheckpointFileError as err:
        raise CheckpointFileError(f"model.init_checkpoint: {err}") from err
    except (TypeError, ValueError) as err:  # the constructor refused model.kwargs
        raise ValueError(
            f"model.kwargs: {name} cannot be built with {dict(spec['kwargs'])} "
            f"({describe_error(err)}); it accepts {', '.join(constructor_arguments(name))}"
        ) from err


def constructor_arguments(name: str) -> list[str]:
    """The keyword arguments the class of timm model `name` takes (built on the meta device,
    so nothing is allocated), less those the training config sets itself."""
    try:
        with torch.device("meta"):
            cls = type(timm.create_model(name))
    except Exception:  # only for a message: never let it hide the original error
        return ["(see the model's documentation)"]
    taken = {"self", "num_classes", "drop_path_rate", "pretrained"}
    return [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in taken
    ]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

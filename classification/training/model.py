"""Model construction for training and validation through timm's registry (the zoo registers
its models on `import classification`)."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch

from ..checkpoint import CheckpointFileError, CheckpointMismatchError, describe_error
from .config import short_repr

__all__ = [
    "build_model",
    "check_model_kwargs",
    "constructor_arguments",
    "count_parameters",
    "register_zoo",
]


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


def build_model(
    cfg: Mapping[str, Any], num_classes: int, load_weights: bool = True
) -> torch.nn.Module:
    """timm.create_model from the `model` section, after :func:`check_model_kwargs` (kwargs reach
    the model constructor); `load_weights` False leaves out model.pretrained / init_checkpoint
    (a resumed run takes its weights from its checkpoint)."""
    register_zoo()
    spec = cfg["model"]
    name = spec["name"]
    if not timm.is_model(name):
        raise ValueError(
            f"model.name: unknown model {name!r}; zoo models: "
            f"{', '.join(timm.list_models(['nat_*', 'dinat*', 'vitrpb*'])) or 'none registered'}"
        )
    kwargs: dict[str, Any] = dict(spec["kwargs"])
    check_model_kwargs(
        name,
        kwargs,
        cfg["data"]["img_size"],
        num_classes=num_classes,
        drop_path_rate=spec["drop_path_rate"],
    )
    pretrained = bool(spec["pretrained"]) and load_weights
    if spec["init_checkpoint"] and load_weights:
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
    except RuntimeError as err:  # load_state_dict: the weights do not fit the model
        if not pretrained:
            raise
        source = (
            f"model.init_checkpoint {spec['init_checkpoint']}"
            if spec["init_checkpoint"]
            else f"model.pretrained: the published weights of {name}"
        )
        raise ValueError(
            f"{source} cannot be loaded into the model the config builds: {_mismatch(err)}"
        ) from err


def _mismatch(err: RuntimeError) -> str:
    """The first problem load_state_dict lists, in one line, and how many there are."""
    lines = [line.strip() for line in str(err).splitlines()]
    problems = [
        line
        for line in lines
        if line.startswith(("size mismatch", "Missing key", "Unexpected key"))
    ]
    if not problems:
        return describe_error(err)
    first = problems[0] if len(problems[0]) <= 300 else problems[0][:297] + "..."
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{first}{more}"


# constructor arguments that are not the model's hyper-parameters: set by the training config,
# or not plain values (layers, device, dtype)
_NOT_HYPERPARAMETERS = {
    "self",
    "num_classes",
    "drop_path_rate",
    "pretrained",
    "norm_layer",
    "act_layer",
    "device",
    "dtype",
}
_MAX_PARAMETERS = 10_000_000_000


@functools.lru_cache(maxsize=64)
def _default_meta_model(name: str) -> torch.nn.Module | None:
    """Model `name` with its default arguments on the meta device (None if it cannot be built)."""
    try:
        with torch.device("meta"):
            return timm.create_model(name)
    except Exception:  # only for messages and checks: never let it hide the caller's error
        return None


def constructor_arguments(name: str) -> list[str]:
    """The model's own hyper-parameters: the keyword arguments of its class's constructor (built
    on the meta device, so nothing is allocated), less those the training config sets itself and
    those that are not plain values. timm's create_model options (checkpoint_path,
    pretrained_cfg_overlay, features_only, ...) are not among them."""
    model = _default_meta_model(name)
    if model is None:
        return ["(see the model's documentation)"]
    return [
        p.name
        for p in inspect.signature(type(model).__init__).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in _NOT_HYPERPARAMETERS
    ]


def _first_level_tokens(name: str, kwargs: Mapping[str, Any], img_size: int) -> int:
    """The side of the first level's token map: the image over the stem's reduction (its
    patch_size where the model takes one)."""
    if "patch_size" in kwargs:
        return img_size // int(kwargs["patch_size"])
    model = _default_meta_model(name)
    info = getattr(model, "feature_info", None) or [{}]
    return img_size // int(info[0].get("reduction", 1))


def _positive_ints(value: Any) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return bool(values) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values
    )


def _finite(value: Any, low: float, high: float = math.inf, closed: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and (low <= value if closed else low < value) and value <= high


def _check_values(kwargs: Mapping[str, Any], where: str) -> None:
    """Ranges of the hyper-parameters the zoo's models share, before any is built."""
    for key, value in kwargs.items():
        name = f"{where}.{key}={short_repr(value)}"
        if key in ("embed_dim", "depth", "patch_size", "kernel_size"):
            if not _positive_ints(value) or isinstance(value, (list, tuple)):
                raise ValueError(f"{name} must be an int >= 1")
        elif key in ("depths", "num_heads"):
            if not _positive_ints(value):
                raise ValueError(f"{name} must be ints >= 1 (one per level)")
        elif key in ("dilation", "dilations"):
            flat = value
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
                flat = [d for level in value for d in level]
            if value is not None and not _positive_ints(flat):
                raise ValueError(f"{name} must be ints >= 1")
        elif key == "mlp_ratio":
            if not _finite(value, 0.0):
                raise ValueError(f"{name} must be a finite number > 0")
        elif key in ("drop_rate", "attn_drop_rate"):
            if not _finite(value, 0.0, 1.0, closed=True) or value == 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        elif key in ("layer_scale", "qk_scale"):
            if value is not None and not _finite(value, 0.0):
                raise ValueError(f"{name} must be null or a finite number > 0")
        elif key == "img_size" and not _finite(value, 1, 4096, closed=True):
            raise ValueError(f"{name} must be in [1, 4096]")
        elif key == "in_chans" and value != 3:
            raise ValueError(
                f"{name}: the data pipeline feeds RGB images (3 channels); in_chans must be 3"
            )


def check_model_kwargs(
    name: str,
    kwargs: Mapping[str, Any],
    img_size: int | None,
    where: str = "model.kwargs",
    **fixed: Any,
) -> None:
    """Refuse, with one line naming the argument, model kwargs that are not the model's own
    hyper-parameters (:func:`constructor_arguments`), values out of range, a kernel_size that
    does not fit the first level's token map at `img_size`, and any other combination the model
    cannot be built or run with: the model is built and run on the meta device (nothing is
    allocated). `fixed` are the arguments the caller adds (num_classes, drop_path_rate);
    `img_size` None leaves out the checks against the input."""
    allowed = constructor_arguments(name)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ValueError(
            f"{where}: {unknown[0]!r} is not a constructor argument of {name} (the model's own "
            f"hyper-parameters only); it accepts {', '.join(allowed)}"
        )
    _check_values(kwargs, where)
    kernel = kwargs.get("kernel_size")
    if kernel is not None and img_size is not None:
        tokens = _first_level_tokens(name, kwargs, img_size)
        if kernel % 2 == 0 or not 3 <= kernel <= tokens:
            raise ValueError(
                f"{where}.kernel_size={kernel} must be odd, in [3, {tokens}] (the first level's "
                f"{tokens}x{tokens} token map at data.img_size={img_size})"
            )
    try:
        with torch.device("meta"):
            model = timm.create_model(name, **fixed, **kwargs)
    except Exception as err:  # the constructor refused the combination
        raise ValueError(
            f"{where}: {name} cannot be built with {short_repr(dict(kwargs))} "
            f"({describe_error(err)}); it accepts {', '.join(allowed)}"
        ) from None
    parameters = sum(p.numel() for p in model.parameters())
    if parameters > _MAX_PARAMETERS:
        raise ValueError(
            f"{where}: {name} with {short_repr(dict(kwargs))} has {parameters / 1e9:.0f}G "
            f"parameters (at most {_MAX_PARAMETERS / 1e9:.0f}G)"
        )
    if img_size is None:
        return
    try:
        with torch.device("meta"), torch.no_grad():
            model.eval()(torch.empty(1, 3, img_size, img_size))
    except Exception as err:  # a shape the model cannot run
        raise ValueError(
            f"{where}: {name} with {short_repr(dict(kwargs))} cannot run on "
            f"{img_size}x{img_size} images, data.img_size ({describe_error(err)})"
        ) from None


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

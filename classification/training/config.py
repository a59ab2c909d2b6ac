"""Training configuration: a typed default tree, YAML files with `_base_` inheritance, and
`a.b=c` command-line overrides. Every key must exist in :data:`DEFAULTS`; unknown keys are
an error that names the key (``model.kwargs`` is the one free-form mapping)."""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULTS",
    "ConfigError",
    "apply_overrides",
    "config_to_yaml",
    "load_config",
    "validate_config",
]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# The default tree doubles as the schema: a key not in it is unknown, and a value must have the
# type of its default (ints are accepted for floats). Keys whose default is None take the type
# named in _NULLABLE_TYPES.
DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "nat_tiny",
        "pretrained": False,  # start from the zoo's published weights
        "init_checkpoint": None,  # file or URL to start from (fine-tunes); head dropped on mismatch
        "init_num_classes": None,  # classes of init_checkpoint's head (e.g. 21841 for IN-22K)
        # false: load the tensors of init_checkpoint that fit and warn about the rest (by default
        # anything the model needs and the file lacks, but a head, is an error)
        "init_strict": True,
        "num_classes": None,  # None: the number of class folders in the training split
        "drop_path_rate": 0.2,
        "kwargs": {},  # free-form: passed to the model constructor (embed_dim, depths, ...)
    },
    "data": {
        "path": None,  # dataset root with train/ and val/ (or "synthetic"); --data sets it
        "train_split": "train",
        "val_split": "val",
        "img_size": 224,
        "crop_pct": 0.875,  # evaluation centre crop
        "interpolation": "bicubic",  # evaluation resize
        "train_interpolation": "random",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "batch_size": 128,  # per process (GPU)
        "val_batch_size": None,  # None: 2 x batch_size
        "workers": "auto",  # data loader processes per training process; auto: see resolve_workers
        "pin_memory": True,
        "synthetic_train_size": 12800,  # samples per epoch with --data synthetic
        "synthetic_val_size": 1024,
    },
    "aug": {
        "scale": [0.08, 1.0],
        "ratio": [0.75, 1.3333333333333333],
        "hflip": 0.5,
        "vflip": 0.0,
        "color_jitter": 0.4,
        "auto_augment": "rand-m9-mstd0.5-inc1",  # timm policy string; None disables
        "reprob": 0.25,
        "remode": "pixel",
        "recount": 1,
        "mixup": 0.8,
        "cutmix": 1.0,
        "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5,
        "mixup_mode": "batch",
        "smoothing": 0.1,
    },
    "optim": {
        "opt": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "eps": 1e-8,
        "betas": [0.9, 0.999],
        "momentum": 0.9,
        # Parameters without weight decay: every 1-D parameter (norms, biases, layer scale), the
        # model's no_weight_decay() names and any parameter whose name contains one of these
        # keywords.
        "no_decay_keywords": [],
        # true: the rpb tables decay like any other weight, as the published models were trained
        # (the original code's no_weight_decay_keywords() was never read by timm's optimizer
        # factory); false: every rpb table is exempt, as the original code meant.
        "rpb_weight_decay": True,
        "clip_grad": 5.0,  # None disables
        "clip_mode": "norm",
        "accum_steps": 1,
        # torch's fused (single-kernel) Adam/AdamW: true | false | auto (on CUDA for adam/adamw)
        "fused": "auto",
    },
    "sched": {
        "name": "cosine",  # cosine | linear (to min_lr) | constant | poly | step | multistep | tanh
        # epochs before the cooldown: a run trains epochs + cooldown_epochs, as timm counts them
        "epochs": 300,
        "warmup_epochs": 20,
        "warmup_lr": 1e-6,
        "min_lr": 5e-6,
        "cooldown_epochs": 10,
        "decay_epochs": 100,  # step / multistep schedules
        "decay_rate": 0.1,  # step / multistep factor; the power for poly
    },
    "train": {
        "amp": "bf16",  # bf16 | fp16 | none
        # torch.compile the model: true | false | auto (on CUDA only, where it trains faster;
        # docs/benchmarks.md). The first steps then include compilation (about a minute).
        "compile": "auto",
        "compile_backend": "inductor",  # torch.compile backend (e.g. aot_eager, cudagraphs)
        # inductor mode; auto: reduce-overhead (CUDA graphs) for one process without gradient
        # accumulation, else default; or default / max-autotune-no-cudagraphs / ...
        "compile_mode": "auto",
        "channels_last": False,
        "ema": False,
        "ema_decay": 0.9998,
        "seed": 42,
        "device": "auto",  # auto | cpu | cuda
        "max_steps": None,  # stop (with a checkpoint) after this many optimizer steps
        "eval_every": 1,  # validate every N epochs (and after the last)
    },
    "checkpoint": {
        "keep": 3,  # periodic checkpoints retained (best.pth is kept apart)
        "every_steps": 0,  # also checkpoint every N optimizer steps (0: only at epoch ends)
    },
    "run": {
        "output": "runs",
        "name": None,  # None: the config file's stem
        "dir": None,  # explicit run directory (overrides output/name)
    },
    "logging": {
        "log_interval": 50,  # optimizer steps between step-log rows
        "progress": True,  # tqdm progress bar on rank 0
        "wandb": False,
        "wandb_project": "natzoo",
        "wandb_mode": "offline",
    },
}

_FREE_FORM = {("model", "kwargs")}
_NULLABLE_TYPES: dict[tuple[str, ...], tuple[type, ...]] = {
    ("model", "init_checkpoint"): (str,),
    ("model", "init_num_classes"): (int,),
    ("model", "num_classes"): (int,),
    ("data", "path"): (str,),
    ("data", "val_batch_size"): (int,),
    ("aug", "auto_augment"): (str,),
    ("optim", "clip_grad"): (float, int),
    ("train", "max_steps"): (int,),
    ("run", "name"): (str,),
    ("run", "dir"): (str,),
}
_BOOL_OR_AUTO = {("train", "compile"), ("optim", "fused")}
_INT_OR_AUTO = {("data", "workers")}
_CHOICES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("train", "amp"): ("bf16", "fp16", "none"),
    ("train", "device"): ("auto", "cpu", "cuda"),
    ("train", "compile_mode"): (
        "auto",
        "default",
        "reduce-overhead",
        "max-autotune",
        "max-autotune-no-cudagraphs",
    ),
    ("sched", "name"): ("cosine", "linear", "constant", "poly", "step", "multistep", "tanh"),
    ("optim", "clip_mode"): ("norm", "value", "agc"),
    ("aug", "remode"): ("pixel", "rand", "const"),
    ("aug", "mixup_mode"): ("batch", "pair", "elem"),
    ("data", "interpolation"): ("bilinear", "bicubic", "nearest"),
    ("data", "train_interpolation"): ("bilinear", "bicubic", "nearest", "random"),
    ("logging", "wandb_mode"): ("offline", "online", "disabled"),
}
# (minimum, maximum, minimum inclusive?) for numeric keys; None means unbounded.
_RANGES: dict[tuple[str, ...], tuple[float | None, float | None, bool]] = {
    ("model", "drop_path_rate"): (0.0, 1.0, True),
    ("model", "num_classes"): (1, None, True),
    ("data", "img_size"): (1, None, True),
    ("data", "crop_pct"): (0.0, 1.0, False),
    ("data", "batch_size"): (1, None, True),
    ("data", "val_batch_size"): (1, None, True),
    ("data", "synthetic_train_size"): (1, None, True),
    ("data", "synthetic_val_size"): (1, None, True),
    ("aug", "hflip"): (0.0, 1.0, True),
    ("aug", "vflip"): (0.0, 1.0, True),
    ("aug", "reprob"): (0.0, 1.0, True),
    ("aug", "mixup"): (0.0, None, True),
    ("aug", "cutmix"): (0.0, None, True),
    ("aug", "mixup_prob"): (0.0, 1.0, True),
    ("aug", "mixup_switch_prob"): (0.0, 1.0, True),
    ("aug", "smoothing"): (0.0, 1.0, True),
    ("optim", "lr"): (0.0, None, False),
    ("optim", "weight_decay"): (0.0, None, True),
    ("optim", "eps"): (0.0, None, False),
    ("optim", "clip_grad"): (0.0, None, False),
    ("optim", "accum_steps"): (1, None, True),
    ("sched", "epochs"): (1, None, True),
    ("sched", "warmup_epochs"): (0, None, True),
    ("sched", "warmup_lr"): (0.0, None, True),
    ("sched", "min_lr"): (0.0, None, True),
    ("sched", "cooldown_epochs"): (0, None, True),
    ("sched", "decay_epochs"): (0.0, None, False),
    ("sched", "decay_rate"): (0.0, None, False),
    ("train", "ema_decay"): (0.0, 1.0, False),
    ("train", "max_steps"): (1, None, True),
    ("train", "eval_every"): (1, None, True),
    ("checkpoint", "keep"): (1, None, True),
    ("checkpoint", "every_steps"): (0, None, True),
    ("logging", "log_interval"): (1, None, True),
}


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


def _dotted(path: Iterable[str]) -> str:
    return ".".join(path)


def _unknown_key_error(path: tuple[str, ...], node: Mapping[str, Any], where: str) -> ConfigError:
    close = difflib.get_close_matches(path[-1], list(node), n=3)
    hint = f"; did you mean {', '.join(_dotted((*path[:-1], c)) for c in close)}?" if close else ""
    valid = ", ".join(sorted(node))
    return ConfigError(
        f"unknown config key '{_dotted(path)}' in {where}{hint} (valid keys here: {valid})"
    )


def _merge(
    base: dict[str, Any],
    update: Mapping[str, Any],
    schema: Mapping[str, Any],
    where: str,
    prefix: tuple[str, ...] = (),
) -> None:
    """Merge `update` into `base` in place, checking every key against `schema`."""
    for key, value in update.items():
        path = (*prefix, str(key))
        if key not in schema:
            raise _unknown_key_error(path, schema, where)
        if path in _FREE_FORM:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{_dotted(path)}' in {where} must be a mapping")
            merged = dict(base.get(key) or {})
            merged.update(copy.deepcopy(dict(value)))
            base[key] = merged
        elif isinstance(schema[key], Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"config key '{_dotted(path)}' in {where} is a section: give a mapping, "
                    f"not {value!r}"
                )
            _merge(base[key], value, schema[key], where, path)
        else:
            base[key] = copy.deepcopy(value)


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """Read one YAML file and, recursively, its `_base_` files (merged in order, then itself)."""
    if path in chain:
        raise ConfigError(f"config inheritance loop: {' -> '.join(map(str, (*chain, path)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"cannot parse config file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    tree = copy.deepcopy(DEFAULTS)
    for base in bases:
        base_path = (path.parent / base).resolve()
        base_tree = _read_yaml(base_path, (*chain, path))
        _merge(tree, base_tree, DEFAULTS, str(base_path))
    _merge(tree, data, DEFAULTS, str(path))
    return tree


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides (values parsed as YAML) to `cfg` in place and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, text = item.split("=", 1)
        parts = tuple(p for p in key.strip().split(".") if p)
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        value = _parse_value(text)
        node: dict[str, Any] = cfg
        schema: Mapping[str, Any] = DEFAULTS
        for depth, part in enumerate(parts[:-1]):
            here = parts[: depth + 1]
            if here in _FREE_FORM:
                node = node.setdefault(part, {})
                schema = None  # type: ignore[assignment]
                continue
            if schema is None:
                node = node.setdefault(part, {})
                continue
            if part not in schema or not isinstance(schema[part], Mapping):
                raise _unknown_key_error(here, schema, f"override {item!r}")
            node, schema = node[part], schema[part]
        last = parts[-1]
        if schema is not None:
            if last not in schema:
                raise _unknown_key_error(parts, schema, f"override {item!r}")
            if isinstance(schema[last], Mapping) and parts not in _FREE_FORM:
                raise ConfigError(f"override {item!r}: '{key}' is a section, set one of its keys")
        node[last] = value
    return cfg


def _check_value(path: tuple[str, ...], value: Any, default: Any) -> None:
    name = _dotted(path)
    if value is None:
        if default is None or path in _NULLABLE_TYPES:
            return
        raise ConfigError(f"config key '{name}' may not be null (default {default!r})")
    if path in _NULLABLE_TYPES:
        types = _NULLABLE_TYPES[path]
    elif path in _BOOL_OR_AUTO:
        if not (isinstance(value, bool) or value == "auto"):
            raise ConfigError(f"config key '{name}' must be true, false or auto, got {value!r}")
        return
    elif path in _INT_OR_AUTO:
        if value == "auto":
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"config key '{name}' must be an int >= 0 or auto, got {value!r}")
        return
    elif isinstance(default, bool):
        types = (bool,)
    elif isinstance(default, float):
        types = (float, int)
    elif isinstance(default, int):
        types = (int,)
    elif isinstance(default, str):
        types = (str,)
    elif isinstance(default, list):
        types = (list,)
    else:
        types = (object,)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        wanted = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"config key '{name}' must be {wanted}, got {value!r}")
    if path in _CHOICES and value not in _CHOICES[path]:
        raise ConfigError(f"config key '{name}' must be one of {_CHOICES[path]}, got {value!r}")
    if path in _RANGES:
        low, high, low_inclusive = _RANGES[path]
        too_low = low is not None and (value < low if low_inclusive else value <= low)
        if too_low or (high is not None and value > high):
            bound = "[" if low_inclusive else "("
            raise ConfigError(
                f"config key '{name}' = {value!r} is out of range {bound}{low}, "
                f"{'inf' if high is None else high}]"
            )


def _coerce_float(path: tuple[str, ...], value: Any, default: Any) -> Any:
    """YAML 1.1 reads `5e-4` (no dot) as a string: accept it where a float is expected."""
    wants_float = isinstance(default, float) or float in _NULLABLE_TYPES.get(path, ())
    if wants_float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(default, list) and all(isinstance(v, float) for v in default):
        out = []
        for v in value if isinstance(value, list) else []:
            try:
                out.append(float(v) if isinstance(v, str) else v)
            except ValueError:
                out.append(v)
        return out if isinstance(value, list) else value
    return value


def validate_config(cfg: dict[str, Any]) -> None:
    """Check types, choices, ranges and cross-key constraints; raise ConfigError naming the key."""

    def walk(node: Mapping[str, Any], schema: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for key, default in schema.items():
            path = (*prefix, key)
            if key not in node:
                raise ConfigError(f"config key '{_dotted(path)}' is missing")
            if path in _FREE_FORM:
                if not isinstance(node[key], Mapping):
                    raise ConfigError(f"config key '{_dotted(path)}' must be a mapping")
            elif isinstance(default, Mapping):
                walk(node[key], default, path)
            else:
                node[key] = _coerce_float(path, node[key], default)
                _check_value(path, node[key], default)
        for key in node:
            if key not in schema:
                raise _unknown_key_error((*prefix, key), schema, "the configuration")

    walk(cfg, DEFAULTS, ())
    for key in ("mean", "std"):
        values = cfg["data"][key]
        if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
            raise ConfigError(f"config key 'data.{key}' must be a list of 3 numbers, got {values}")
    for key in ("scale", "ratio"):
        values = cfg["aug"][key]
        if len(values) != 2 or not 0 < values[0] <= values[1]:
            raise ConfigError(f"config key 'aug.{key}' must be [low, high] with 0 < low <= high")
    betas = cfg["optim"]["betas"]
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"config key 'optim.betas' must be two numbers in [0, 1), got {betas}")
    if cfg["optim"]["rpb_weight_decay"] and any(
        "rpb" in k for k in cfg["optim"]["no_decay_keywords"]
    ):
        raise ConfigError(
            "config key 'optim.no_decay_keywords' names rpb while 'optim.rpb_weight_decay' is "
            "true; set optim.rpb_weight_decay=false to exempt the rpb tables from weight decay"
        )
    sched = cfg["sched"]
    if sched["warmup_epochs"] >= sched["epochs"]:
        raise ConfigError(
            f"config key 'sched.warmup_epochs' = {sched['warmup_epochs']} must be below "
            f"'sched.epochs' = {sched['epochs']} (the epochs before the "
            f"{sched['cooldown_epochs']} cooldown ones), or the lr never reaches optim.lr"
        )
    mixing = cfg["aug"]["mixup"] > 0 or cfg["aug"]["cutmix"] > 0
    if mixing and cfg["data"]["batch_size"] % 2:
        raise ConfigError(
            "config key 'data.batch_size' must be even when mixup/cutmix is on "
            f"(got {cfg['data']['batch_size']}; set aug.mixup=0 aug.cutmix=0 or an even batch)"
        )


def load_config(path: str | os.PathLike[str] | None, overrides: Iterable[str] = ()) -> dict:
    """Load a config file (or the defaults when `path` is None), apply overrides, validate."""
    cfg = copy.deepcopy(DEFAULTS) if path is None else _read_yaml(Path(path).resolve(), ())
    apply_overrides(cfg, overrides)
    validate_config(cfg)
    return cfg


def config_to_yaml(cfg: Mapping[str, Any]) -> str:
    """The resolved configuration as YAML (keys in schema order)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)

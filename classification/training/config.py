"""Training configuration: a typed default tree, YAML files with `_base_` inheritance, and
`a.b=c` command-line overrides. Every key must exist in :data:`DEFAULTS`; unknown keys are
an error that names the key (``model.kwargs`` is the one free-form mapping).

Untrusted input is bounded: each `_base_` file is read once, chains deeper than
:data:`MAX_BASE_DEPTH` and loops are refused, duplicate YAML keys are errors, a configuration may
hold at most :data:`MAX_VALUES` values (YAML aliases count each time they are used), and every
float must be finite."""

from __future__ import annotations

import copy
import difflib
import math
import os
import reprlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULTS",
    "MAX_BASE_DEPTH",
    "MAX_VALUES",
    "RESUME_MAY_CHANGE",
    "ConfigError",
    "apply_overrides",
    "config_to_yaml",
    "fill_defaults",
    "load_config",
    "resume_conflicts",
    "short_repr",
    "validate_config",
]

MAX_BASE_DEPTH = 16  # `_base_` inheritance levels
MAX_VALUES = 10_000  # scalars and containers in one configuration (a published one holds ~150)

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
        "follow_symlinks": False,  # enter symlinked folders of the dataset (never looping ones)
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
_INT_OR_AUTO = {("data", "workers"): (0, 64)}  # with their range
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
    ("model", "num_classes"): (1, 1_000_000, True),
    ("model", "init_num_classes"): (1, 1_000_000, True),
    ("data", "img_size"): (1, 4096, True),
    ("data", "crop_pct"): (0.0, 1.0, False),
    ("data", "batch_size"): (1, 16384, True),
    ("data", "val_batch_size"): (1, 16384, True),
    ("data", "synthetic_train_size"): (1, 10_000_000, True),
    ("data", "synthetic_val_size"): (1, 10_000_000, True),
    ("aug", "hflip"): (0.0, 1.0, True),
    ("aug", "vflip"): (0.0, 1.0, True),
    ("aug", "reprob"): (0.0, 1.0, True),
    ("aug", "mixup"): (0.0, None, True),
    ("aug", "cutmix"): (0.0, None, True),
    ("aug", "mixup_prob"): (0.0, 1.0, True),
    ("aug", "mixup_switch_prob"): (0.0, 1.0, True),
    ("aug", "smoothing"): (0.0, 1.0, True),
    ("aug", "recount"): (1, 100, True),
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


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def short_repr(value: Any) -> str:
    """repr() cut to a few items per container and a few levels (for error messages)."""
    return _REPR.repr(value)


def _dotted(path: Iterable[str]) -> str:
    return ".".join(path)


def _too_large(value: Any, limit: int = MAX_VALUES) -> bool:
    """Whether `value` holds more than `limit` values, counting a shared object at every place
    it appears (as any walk over it would); stops counting at the limit."""
    stack, count = [value], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
    return False


def _largest_key(node: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> str:
    """The dotted key under which most of an over-large `node` lies (for the message)."""
    for key, value in node.items():
        path = (*prefix, str(key))
        if _too_large(value, MAX_VALUES // 2):
            if isinstance(value, Mapping) and path != ("model", "kwargs"):
                return _largest_key(value, path)
            return _dotted(path)
    return _dotted(prefix) or "the top level"


def _check_size(node: Any, where: str) -> None:
    if _too_large(node):
        key = _largest_key(node) if isinstance(node, Mapping) else "the value"
        raise ConfigError(
            f"{where} holds more than {MAX_VALUES} values (under {key}; YAML aliases "
            f"count at every use): a configuration is a few hundred values at most"
        )


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may override keys
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if duplicate:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
    data: dict[Any, Any] = {}
    yield data
    data.update(loader.construct_mapping(node))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(err: yaml.YAMLError, text: str) -> str:
    """A YAML error in one line: the problem and its line and column in `text`."""
    problem = getattr(err, "problem", None) or getattr(err, "reason", None) or type(err).__name__
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        line, column = mark.line + 1, mark.column + 1
    else:  # a reader error (a character YAML does not allow) knows its offset
        before = text[: getattr(err, "position", 0) or 0]
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
    return f"{' '.join(str(problem).split())} (line {line}, column {column})"


def _parse_yaml(text: str, where: str) -> Any:
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse {where}: {_yaml_error(err, text)}") from err
    _check_size(data, where)
    return data


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


def _read_yaml(
    path: Path, chain: tuple[Path, ...], done: dict[Path, dict[str, Any]]
) -> dict[str, Any]:
    """Read one YAML file and, recursively, its `_base_` files (merged in order, then itself);
    `done` holds the trees of the files already read (each file is read once)."""
    if path in chain:
        raise ConfigError(f"config inheritance loop: {' -> '.join(map(str, (*chain, path)))}")
    if len(chain) >= MAX_BASE_DEPTH:
        raise ConfigError(
            f"config inheritance from {chain[0]} is deeper than {MAX_BASE_DEPTH} _base_ levels "
            f"(at {path})"
        )
    if path in done:
        return copy.deepcopy(done[path])
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path} is not a UTF-8 text file (byte 0x{raw[err.start]:02x} at "
            f"offset {err.start})"
        ) from None
    data = _parse_yaml(text, f"config file {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(
            f"config file {path}: _base_ must be a file name or a list of file names, "
            f"got {short_repr(bases)}"
        )
    tree = copy.deepcopy(DEFAULTS)
    for base in bases:
        base_path = (path.parent / base).resolve()
        base_tree = _read_yaml(base_path, (*chain, path), done)
        _merge(tree, base_tree, DEFAULTS, str(base_path))
    _merge(tree, data, DEFAULTS, str(path))
    done[path] = copy.deepcopy(tree)
    return tree


def _parse_value(text: str, where: str) -> Any:
    try:
        value = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError:
        return text
    _check_size(value, where)
    return value


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides (values parsed as YAML) to `cfg` in place and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, text = item.split("=", 1)
        parts = tuple(p for p in key.strip().split(".") if p)
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        value = _parse_value(text, f"override {key.strip()!r}")
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
            raise ConfigError(
                f"config key '{name}' must be true, false or auto, got {short_repr(value)}"
            )
        return
    elif path in _INT_OR_AUTO:
        if value == "auto":
            return
        low, high = _INT_OR_AUTO[path]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(
                f"config key '{name}' must be auto or an int in [{low}, {high}], "
                f"got {short_repr(value)}"
            )
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
        raise ConfigError(f"config key '{name}' must be {wanted}, got {short_repr(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{name}' must be a finite number, got {value!r}")
    if path in _CHOICES and value not in _CHOICES[path]:
        raise ConfigError(
            f"config key '{name}' must be one of {_CHOICES[path]}, got {short_repr(value)}"
        )
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


def _numbers(values: Any, count: int) -> bool:
    """Whether `values` is a list of `count` finite numbers (not booleans)."""
    return (
        isinstance(values, list)
        and len(values) == count
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )
    )


def validate_config(cfg: dict[str, Any]) -> None:
    """Check types, choices, ranges and cross-key constraints; raise ConfigError naming the key."""
    _check_size(cfg, "the configuration")

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
        if not _numbers(values, 3) or (key == "std" and not all(v > 0 for v in values)):
            wanted = "3 finite numbers" + (", each > 0" if key == "std" else "")
            raise ConfigError(
                f"config key 'data.{key}' must be a list of {wanted}, got {short_repr(values)}"
            )
    for key in ("scale", "ratio"):
        values = cfg["aug"][key]
        if not _numbers(values, 2) or not 0 < values[0] <= values[1]:
            raise ConfigError(
                f"config key 'aug.{key}' must be [low, high] with 0 < low <= high (finite "
                f"numbers), got {short_repr(values)}"
            )
    betas = cfg["optim"]["betas"]
    if not _numbers(betas, 2) or not all(0 <= b < 1 for b in betas):
        raise ConfigError(
            f"config key 'optim.betas' must be two numbers in [0, 1), got {short_repr(betas)}"
        )
    keywords = cfg["optim"]["no_decay_keywords"]
    if not all(isinstance(k, str) and k for k in keywords):
        raise ConfigError(
            f"config key 'optim.no_decay_keywords' must be a list of non-empty strings, "
            f"got {short_repr(keywords)}"
        )
    if cfg["optim"]["rpb_weight_decay"] and any("rpb" in k for k in keywords):
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


def fill_defaults(cfg: dict[str, Any], defaults: Mapping[str, Any] = DEFAULTS) -> dict[str, Any]:
    """Give the keys `cfg` lacks (added to the schema since it was written) their defaults, in
    place; returns `cfg`."""
    for key, default in defaults.items():
        if key not in cfg:
            cfg[key] = copy.deepcopy(default)
        elif isinstance(default, Mapping) and isinstance(cfg[key], dict):
            fill_defaults(cfg[key], default)
    return cfg


def load_config(path: str | os.PathLike[str] | None, overrides: Iterable[str] = ()) -> dict:
    """Load a config file (or the defaults when `path` is None), apply overrides, validate."""
    cfg = copy.deepcopy(DEFAULTS) if path is None else _read_yaml(Path(path).resolve(), (), {})
    apply_overrides(cfg, overrides)
    validate_config(cfg)
    return cfg


# What a resumed run may set otherwise than its checkpoint's config (a section name covers its
# keys): where and how it runs, what it logs, when it checkpoints, evaluates and stops, the
# weights a fresh run would start from (a resumed run takes its checkpoint's), and the lr
# schedule's peak, length and floor (the schedule is rebuilt from them and continues at the
# checkpoint's step). Anything else would silently change the experiment.
RESUME_MAY_CHANGE = (
    "run",
    "logging",
    "checkpoint",
    "data.path",
    "data.workers",
    "data.pin_memory",
    "data.val_batch_size",
    "data.follow_symlinks",
    "train.device",
    "train.amp",
    "train.compile",
    "train.compile_backend",
    "train.compile_mode",
    "train.channels_last",
    "train.max_steps",
    "train.eval_every",
    "model.pretrained",
    "model.init_checkpoint",
    "model.init_num_classes",
    "model.init_strict",
    "optim.lr",
    "sched.epochs",
    "sched.min_lr",
)


def _leaves(node: Any, prefix: tuple[str, ...] = ()) -> Iterable[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _leaves(value, (*prefix, str(key)))
    else:
        yield _dotted(prefix), node


def resume_conflicts(stored: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[str]:
    """The keys (as 'key stored -> new') whose values differ between a checkpoint's config and
    `cfg`, less those in RESUME_MAY_CHANGE; both configs validated, with every schema key."""
    old, new = dict(_leaves(stored)), dict(_leaves(cfg))
    conflicts = []
    for key in [*new, *(k for k in old if k not in new)]:
        if any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE):
            continue
        before, after = old.get(key, "unset"), new.get(key, "unset")
        if before != after:
            conflicts.append(f"{key} {short_repr(before)} -> {short_repr(after)}")
    return conflicts


def config_to_yaml(cfg: Mapping[str, Any]) -> str:
    """The resolved configuration as YAML (keys in schema order)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)

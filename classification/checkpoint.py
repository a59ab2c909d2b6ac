"""Model weights files: reading, converting and fitting published checkpoints (the original
authors' state dicts, the Hugging Face ``transformers`` port) to the zoo's models. The training
state nat-train writes to resume a run is :mod:`classification.training.state`.

- :func:`checkpoint_filter_fn` is timm's ``pretrained_filter_fn`` for every family: it unwraps
  training checkpoints, converts the HF layout, resizes ``rpb`` tables bicubically to the model's
  kernel size, drops a classifier head of another size (with a warning naming both sizes),
  refreshes the ``relative_position_index`` buffer of a ViT-rpb built for another resolution and
  checks the result against the model (:func:`check_fit`: missing, unknown or other-shape
  tensors are an error, counted in one line, unless ``strict=False``).
- :func:`hf_to_original` / :func:`original_to_hf` convert between the key layouts
  (HF ``NatModel``/``DinatModel``: separate query/key/value, ``layer_scale_parameters`` (2, dim)).
- :func:`load_checkpoint_file` (``weights_only=True``) and :func:`save_state_dict` (atomic) read
  and write ``.pth``/``.bin`` (torch) and ``.safetensors`` files; a file that cannot be read
  raises :class:`CheckpointFileError` naming it.
- :func:`read_file_overlay` makes timm's ``pretrained_cfg_overlay=dict(file=...)`` read the file
  through :func:`load_checkpoint_file`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .atomic import atomic_write

__all__ = [
    "CheckpointFileError",
    "CheckpointMismatchError",
    "check_fit",
    "checkpoint_filter_fn",
    "describe_error",
    "describe_mismatch",
    "fit_state_dict",
    "forget_overlay_state_dict",
    "hf_to_original",
    "is_hf_layout",
    "load_checkpoint_file",
    "load_error_reason",
    "load_pretrained_file",
    "mismatch",
    "original_to_hf",
    "read_checkpoint",
    "read_file_overlay",
    "resize_rpb",
    "save_state_dict",
    "unwrap_state_dict",
    "weights_only_refusal",
]

_logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensor dict inside a training checkpoint (EMA first, as timm), ``module.`` stripped."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a mapping, got {type(checkpoint).__name__}")
    for key in _WRAPPER_KEYS:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            checkpoint = inner
            break
    out = {}
    for k, v in checkpoint.items():
        if isinstance(v, Tensor):
            out[k[7:] if k.startswith("module.") else k] = v
    if not out:
        raise ValueError("checkpoint holds no tensors")
    return out


# ------------------------------------------------------------------------------------ HF layout

_HF_PREFIX = re.compile(
    r"^(nat\.|dinat\.)?(embeddings\.|encoder\.|layernorm\.|hidden_states_norms)"
)

# (original suffix inside a block, HF suffix inside a layer); qkv and layer scale are special.
_BLOCK_PAIRS = [
    ("norm1", "layernorm_before"),
    ("attn.rpb", "attention.self.rpb"),
    ("attn.proj", "attention.output.dense"),
    ("norm2", "layernorm_after"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
]
_TOP_PAIRS = [
    ("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
    ("patch_embed.norm.", "embeddings.norm."),
    ("norm.", "layernorm."),
]


def is_hf_layout(state_dict: Mapping[str, Any]) -> bool:
    """Whether the keys follow the HF ``transformers`` NAT/DiNAT layout."""
    return any(_HF_PREFIX.match(k) for k in state_dict)


def hf_to_original(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert HF ``NatForImageClassification``/``DinatForImageClassification`` (or the bare
    model/backbone) keys to the original layout; query/key/value are fused into ``attn.qkv``."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        k = re.sub(r"^(nat|dinat)\.", "", key)
        if k.startswith("classifier."):
            out["head." + k[len("classifier.") :]] = value
            continue
        m = re.match(r"^hidden_states_norms\.stage(\d+)\.(.*)$", k)
        if m:
            out[f"norm{int(m.group(1)) - 1}.{m.group(2)}"] = value
            continue
        m = re.match(r"^encoder\.levels\.(\d+)\.(.*)$", k)
        if m:
            level, rest = m.groups()
            if rest.startswith("downsample."):
                out[f"levels.{level}.{rest}"] = value
                continue
            m = re.match(r"^layers\.(\d+)\.(.*)$", rest)
            if not m:
                raise KeyError(f"unrecognised HF key {key!r}")
            block, rest = m.groups()
            prefix = f"levels.{level}.blocks.{block}."
            m = re.match(r"^attention\.self\.(query|key|value)\.(weight|bias)$", rest)
            if m:
                qkv.setdefault(prefix + "attn.qkv." + m.group(2), {})[m.group(1)] = value
                continue
            if rest == "layer_scale_parameters":
                out[prefix + "gamma1"], out[prefix + "gamma2"] = value[0].clone(), value[1].clone()
                continue
            for orig, hf in _BLOCK_PAIRS:
                if rest == hf or rest.startswith(hf + "."):
                    out[prefix + orig + rest[len(hf) :]] = value
                    break
            else:
                raise KeyError(f"unrecognised HF key {key!r}")
            continue
        for orig, hf in _TOP_PAIRS:
            if k.startswith(hf):
                out[orig + k[len(hf) :]] = value
                break
        else:
            raise KeyError(f"unrecognised HF key {key!r}")
    for name, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise KeyError(
                f"{name}: HF checkpoint lacks one of query/key/value, has {sorted(parts)}"
            )
        out[name] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def original_to_hf(state_dict: Mapping[str, Tensor], prefix: str = "dinat") -> dict[str, Tensor]:
    """Convert original NAT/DiNAT keys to the HF layout under ``prefix`` (``"nat"``/``"dinat"``
    for the classification models, ``""`` for a bare model)."""
    if prefix not in ("nat", "dinat", ""):
        raise ValueError(f"prefix must be 'nat', 'dinat' or '', got {prefix!r}")
    p = prefix + "." if prefix else ""
    out: dict[str, Tensor] = {}
    gammas: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            out["classifier." + key[5:]] = value
            continue
        m = re.match(r"^norm(\d)\.(.*)$", key)
        if m:
            out[f"hidden_states_norms.stage{int(m.group(1)) + 1}.{m.group(2)}"] = value
            continue
        m = re.match(r"^levels\.(\d+)\.(.*)$", key)
        if m:
            level, rest = m.groups()
            if rest.startswith("downsample."):
                out[f"{p}encoder.levels.{level}.{rest}"] = value
                continue
            m = re.match(r"^blocks\.(\d+)\.(.*)$", rest)
            if not m:
                raise KeyError(f"unrecognised key {key!r}")
            block, rest = m.groups()
            hp = f"{p}encoder.levels.{level}.layers.{block}."
            m = re.match(r"^attn\.qkv\.(weight|bias)$", rest)
            if m:
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[f"{hp}attention.self.{name}.{m.group(1)}"] = part.contiguous()
                continue
            if rest in ("gamma1", "gamma2"):
                gammas.setdefault(hp + "layer_scale_parameters", {})[rest] = value
                continue
            for orig, hf in _BLOCK_PAIRS:
                if rest == orig or rest.startswith(orig + "."):
                    out[hp + hf + rest[len(orig) :]] = value
                    break
            else:
                raise KeyError(f"unrecognised key {key!r}")
            continue
        for orig, hf in _TOP_PAIRS:
            if key.startswith(orig):
                out[p + hf + key[len(orig) :]] = value
                break
        else:
            raise KeyError(f"key {key!r} has no HF equivalent (HF ports cover NAT/DiNAT only)")
    for name, g in gammas.items():
        if set(g) != {"gamma1", "gamma2"}:
            raise KeyError(f"{name}: needs both gamma1 and gamma2, has {sorted(g)}")
        out[name] = torch.stack([g["gamma1"], g["gamma2"]])
    return out


# ---------------------------------------------------------------------------------- adaptation


def resize_rpb(rpb: Tensor, kernel_size: int | tuple[int, int]) -> Tensor:
    """Bicubically resize an RPB table ``(heads, 2k-1, 2k-1)`` to another kernel size."""
    if rpb.dim() != 3:
        raise ValueError(f"rpb must be (heads, 2k-1, 2k-1), got shape {tuple(rpb.shape)}")
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    size = (2 * kh - 1, 2 * kw - 1)
    if tuple(rpb.shape[1:]) == size:
        return rpb
    out = F.interpolate(rpb[None].float(), size=size, mode="bicubic", align_corners=False)
    return out[0].to(rpb.dtype)


def _fit_to_model(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    out = {}
    for k, v in state_dict.items():
        if k.endswith("rpb") and k in params and v.shape != params[k].shape:
            target = params[k].shape
            if v.dim() != 3 or v.shape[0] != target[0]:
                raise ValueError(
                    f"{k}: cannot resize rpb of shape {tuple(v.shape)} to {tuple(target)}"
                )
            _logger.info(f"Resizing {k} bicubically from {tuple(v.shape)} to {tuple(target)}")
            v = resize_rpb(v, ((target[1] + 1) // 2, (target[2] + 1) // 2))
        elif k.endswith("relative_position_index") and k in buffers and v.shape != buffers[k].shape:
            v = buffers[k].clone()  # built for another resolution: the model's own index is right
        out[k] = v
    return out


def _fit_head(state_dict: dict[str, Tensor], model: nn.Module) -> None:
    """Keep a head that fits the model; otherwise say why (WARNING) and give the model's own
    freshly initialised head instead, so that a strict load still matches every key."""
    params = dict(model.named_parameters())
    head = params.get("head.weight")
    theirs = state_dict.get("head.weight")
    if theirs is not None and head is not None and theirs.shape == head.shape:
        # timm drops a head whenever its pretrained cfg's class count differs from the model's:
        # the weights' own count is the one that matters
        cfg = getattr(model, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            cfg["num_classes"] = head.shape[0]
        return
    if theirs is None and head is None:
        return
    if theirs is None:
        _logger.warning(
            f"The checkpoint has no classifier head: the model's head ({head.shape[0]} classes) "
            f"keeps its fresh initialisation."
        )
    else:
        widths = head is not None and head.shape[1] != theirs.shape[1]
        want = "no head (num_classes=0)" if head is None else _head_size(head, widths)
        _logger.warning(
            f"Dropping the checkpoint's classifier head ({_head_size(theirs, widths)}): the "
            f"model has {want}; the model's head keeps its fresh initialisation."
        )
    state_dict.pop("head.weight", None)
    state_dict.pop("head.bias", None)
    if head is not None:
        state_dict["head.weight"] = head.detach()
        if "head.bias" in params:
            state_dict["head.bias"] = params["head.bias"].detach()


def _head_size(weight: Tensor, features: bool) -> str:
    return f"{weight.shape[0]} classes" + (f" of {weight.shape[1]} features" if features else "")


def mismatch(
    model: nn.Module, state_dict: Mapping[str, Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, other-shape) keys of ``state_dict`` against the model's own state
    dict, each in the model's (or the file's) order."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, shapes


def describe_mismatch(
    missing: list[str], unexpected: list[str], shapes: list[str], total: int, first: int = 3
) -> str:
    """One line: how many keys are missing / unexpected / of other shapes, and the first few."""

    def part(items: list[str], what: str) -> str:
        shown = ", ".join(items[:first]) + (", ..." if len(items) > first else "")
        return f"{len(items)} {what} (first: {shown})"

    parts = []
    if missing:
        parts.append(part(missing, f"of the model's {total} tensors are missing from it"))
    if unexpected:
        parts.append(part(unexpected, "tensors are not in the model"))
    if shapes:
        parts.append(part(shapes, "tensors have other shapes, checkpoint vs model"))
    return "; ".join(parts)


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    name = cfg.get("architecture") if isinstance(cfg, dict) else None
    return name or type(model).__name__


def check_fit(
    state_dict: dict[str, Tensor],
    model: nn.Module,
    strict: bool = True,
    source: str | None = None,
    hint: str = "pretrained_strict=False (timm.create_model) loads the tensors that fit",
) -> dict[str, Tensor]:
    """``state_dict`` if it fits ``model`` exactly; else raise :class:`CheckpointMismatchError`
    (one line: counts and first keys), or with ``strict=False`` log that line as a warning and
    return only the tensors that fit."""
    missing, unexpected, shapes = mismatch(model, state_dict)
    if not (missing or unexpected or shapes):
        return state_dict
    own = model.state_dict()
    what = f"checkpoint {source}" if source else "the checkpoint"
    summary = describe_mismatch(missing, unexpected, shapes, len(own))
    if strict:
        raise CheckpointMismatchError(f"{what} does not fit {_model_name(model)}: {summary}", hint)
    _logger.warning(f"Loading {what} into {_model_name(model)} non-strictly: {summary}")
    return {k: v for k, v in state_dict.items() if k in own and v.shape == own[k].shape}


def checkpoint_filter_fn(
    state_dict: Mapping[str, Any],
    model: nn.Module,
    strict: bool = True,
    source: str | None = None,
) -> dict[str, Tensor]:
    """timm ``pretrained_filter_fn``: any supported checkpoint -> the model's original keys.

    The result fits the model exactly (a head of another size is replaced by the model's own,
    with a warning); anything else the model expects and the file lacks, or the file has and
    the model lacks, raises :class:`CheckpointMismatchError` naming ``source``, unless
    ``strict=False``, which keeps the tensors that fit.
    """
    return check_fit(fit_state_dict(state_dict, model), model, strict, source)


def fit_state_dict(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """The first steps of :func:`checkpoint_filter_fn`, without the final check: unwrap,
    convert the HF layout, resize rpb tables, refresh index buffers, fit the head."""
    sd = unwrap_state_dict(state_dict)
    if is_hf_layout(sd):
        _logger.info("Converting a Hugging Face transformers NAT/DiNAT state dict")
        sd = hf_to_original(sd)
    sd = _fit_to_model(sd, model)
    _fit_head(sd, model)
    return sd


# -------------------------------------------------------------------------------------- files


class CheckpointFileError(ValueError):
    """A weights file exists but cannot be used (empty, truncated, not a checkpoint, or holding
    objects that weights-only loading refuses); the message names the file."""


class CheckpointMismatchError(CheckpointFileError):
    """A checkpoint's tensors do not fit the model: keys missing from it or unknown to the model,
    or tensors of other shapes; the message counts them and names the first few. ``problem`` is
    the message without the hint on how to load it anyway."""

    def __init__(self, problem: str, hint: str) -> None:
        super().__init__(f"{problem}; {hint}")
        self.problem = problem


def describe_error(err: BaseException) -> str:
    """`Type: first line of the message` (just the type when the message is empty)."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    line = lines[0] if len(lines[0]) <= 200 else lines[0][:197] + "..."
    return f"{type(err).__name__}: {line}"


def weights_only_refusal(err: BaseException) -> str | None:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line (None when `err` is not
    such a refusal). The blocked global is named; torch's advice to load the file unsafely is
    never repeated."""
    text = str(err)
    if "weights only load failed" not in text.lower():
        return None
    found = re.search(r"\bGLOBAL ([\w.]+)", text, re.IGNORECASE)
    if found or "unsupported global" in text.lower():
        what = f" ({found.group(1)})" if found else ""
        return (
            f"it holds pickled objects{what} other than tensors and plain containers, which "
            f"weights-only loading refuses (it never runs code from a file)"
        )
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    detail_text = f": {detail.group(1).strip()[:120]}" if detail else ""
    return f"it is not a torch checkpoint (truncated or corrupt?{detail_text})"


def load_error_reason(err: BaseException, kind: str = "torch checkpoint") -> str:
    """Why a weights file could not be read, in one line (see :func:`weights_only_refusal`)."""
    refusal = weights_only_refusal(err)
    if refusal is not None:
        return refusal
    return f"it is not a complete {kind}: truncated or corrupt? ({describe_error(err)})"


def _read_error(path: Path, err: Exception) -> CheckpointFileError:
    kind = "safetensors file" if path.suffix == ".safetensors" else "torch checkpoint"
    reason = load_error_reason(err, kind)
    return CheckpointFileError(f"checkpoint file {path} cannot be read: {reason}")


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """The object in a ``.safetensors`` or torch file, read with ``weights_only=True``; raise
    FileNotFoundError or CheckpointFileError (naming the file and the reason) when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointFileError(f"checkpoint file {path} cannot be read: it is empty (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, another file type...
        raise _read_error(path, err) from err


def load_checkpoint_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict in a ``.safetensors`` or torch file (see :func:`read_checkpoint`),
    unwrapped from a training checkpoint's ``model``/``state_dict``/EMA entry."""
    checkpoint = read_checkpoint(path)
    try:
        return unwrap_state_dict(checkpoint)
    except (TypeError, ValueError) as err:
        raise CheckpointFileError(
            f"checkpoint file {path} holds no state dict: {err} (expected a mapping of tensor "
            f"names to tensors, possibly under 'model', 'state_dict' or 'state_dict_ema')"
        ) from err


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | os.PathLike[str]) -> None:
    """Write atomically (temp file then ``os.replace``); ``.safetensors`` or torch by suffix."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        atomic_write(path, lambda f: f.write(save(tensors)))
    else:
        atomic_write(path, lambda f: torch.save(tensors, f))


def read_file_overlay(pretrained: bool, kwargs: dict[str, Any]) -> str | None:
    """For the zoo's model constructors: when weights come from a local file (timm's
    ``pretrained_cfg_overlay=dict(file=...)``), read it here, with clear errors, and hand timm
    the state dict instead, with its head's class count as the pretrained cfg's ``num_classes``
    unless the overlay gives one; returns the file (None when there is nothing to read)."""
    overlay = kwargs.get("pretrained_cfg_overlay")
    if not pretrained or not isinstance(overlay, Mapping) or not overlay.get("file"):
        return None
    if overlay.get("state_dict") is not None:
        return None
    file = str(overlay["file"])
    state_dict = load_checkpoint_file(file)
    head = state_dict.get("head.weight", state_dict.get("classifier.weight"))
    kwargs["pretrained_cfg_overlay"] = {
        **({"num_classes": head.shape[0]} if head is not None and head.dim() == 2 else {}),
        **overlay,
        "file": None,
        "state_dict": state_dict,
    }
    return file


def forget_overlay_state_dict(model: nn.Module, file: str | None) -> None:
    """Drop the state dict :func:`read_file_overlay` put in the model's pretrained_cfg (it would
    keep a second copy of the weights alive) and record the file it came from."""
    cfg = getattr(model, "pretrained_cfg", None)
    if file is not None and isinstance(cfg, dict):
        cfg["state_dict"] = None
        cfg["file"] = file


def load_pretrained_file(
    model: nn.Module, path: str | os.PathLike[str], strict: bool = True
) -> Any:
    """Load any supported checkpoint file into ``model`` (through :func:`checkpoint_filter_fn`,
    which raises :class:`CheckpointMismatchError` when it does not fit); ``strict=False`` loads
    the tensors that fit."""
    state_dict = checkpoint_filter_fn(load_checkpoint_file(path), model, strict, str(path))
    return model.load_state_dict(state_dict, strict)

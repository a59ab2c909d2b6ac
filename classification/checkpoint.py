"""Checkpoint formats: the original authors' state dicts and the Hugging Face ``transformers`` port.

- :func:`checkpoint_filter_fn` is timm's ``pretrained_filter_fn`` for every family: it unwraps
  training checkpoints, converts the HF layout, resizes ``rpb`` tables bicubically to the model's
  kernel size, drops a classifier head of another class count (with a log line) and refreshes the
  ``relative_position_index`` buffer of a ViT-rpb built for another resolution.
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
    "checkpoint_filter_fn",
    "describe_error",
    "forget_overlay_state_dict",
    "hf_to_original",
    "is_hf_layout",
    "load_checkpoint_file",
    "load_error_reason",
    "load_pretrained_file",
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
    head = params.get("head.weight")
    if "head.weight" in out and (head is None or out["head.weight"].shape != head.shape):
        have = out["head.weight"].shape[0]
        want = 0 if head is None else head.shape[0]
        _logger.warning(
            f"Dropping the checkpoint's classifier head ({have} classes): the model has "
            f"{want} classes; the head keeps its fresh initialisation."
        )
        out.pop("head.weight")
        out.pop("head.bias", None)
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """timm ``pretrained_filter_fn``: any supported checkpoint -> the model's original keys."""
    sd = unwrap_state_dict(state_dict)
    if is_hf_layout(sd):
        _logger.info("Converting a Hugging Face transformers NAT/DiNAT state dict")
        sd = hf_to_original(sd)
    return _fit_to_model(sd, model)


# -------------------------------------------------------------------------------------- files


class CheckpointFileError(ValueError):
    """A weights file exists but cannot be used (empty, truncated, not a checkpoint, or holding
    objects that weights-only loading refuses); the message names the file."""


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
    the state dict instead; returns the file (None when there is nothing to read)."""
    overlay = kwargs.get("pretrained_cfg_overlay")
    if not pretrained or not isinstance(overlay, Mapping) or not overlay.get("file"):
        return None
    if overlay.get("state_dict") is not None:
        return None
    file = str(overlay["file"])
    kwargs["pretrained_cfg_overlay"] = {
        **overlay,
        "file": None,
        "state_dict": load_checkpoint_file(file),
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
    """Load any supported checkpoint file into ``model`` (through :func:`checkpoint_filter_fn`).

    For backbones whose keys are a subset of the classifier's, pass ``strict=False``.
    """
    return model.load_state_dict(checkpoint_filter_fn(load_checkpoint_file(path), model), strict)

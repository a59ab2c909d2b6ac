"""Run mmdet 3.x / mmseg 1.x on current torch with mmcv-lite instead of a compiled mmcv.

mmcv-lite is mmcv without its compiled ``mmcv._ext`` module; ``import mmcv.ops`` (reached by
``mmdet.models`` and ``mmseg.models``) fails without it. :func:`install_ext_standin` registers a
small stand-in for that module, only when no compiled one can be found, which implements the three
kernels the published NAT/DiNAT detectors and segmentors call -- ``nms``, ``roi_align_forward``
and ``roi_align_backward`` -- on top of ``torchvision.ops`` (CPU and CUDA). Every other kernel name
resolves, so mmcv's import-time checks pass, but raises ``NotImplementedError`` naming the op when
called.

:func:`allow_mmengine_checkpoints` lets ``torch.load``'s default ``weights_only=True`` unpickler
accept the few extra types mmengine's own Runner checkpoints contain (see its docstring),
:func:`load_url_weights_only` replaces mmengine's ``http(s)://`` checkpoint loader, which reads
downloads with ``weights_only=False``, and :func:`load_local_weights_only` its local-file loader,
so that a file that cannot be read (empty, truncated, holding code) raises
:class:`classification.checkpoint.CheckpointFileError` naming it and why.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import pickle
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
import torchvision

STANDIN_NAME = "mmcv._ext"
STANDIN_OPS = ("nms", "roi_align_forward", "roi_align_backward")


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0):
    """mmcv's ``nms`` kernel: indices kept, by decreasing score; offset 1 is the legacy
    convention where a box [x1, x2] covers x2 - x1 + 1 pixels."""
    if offset not in (0, 1):
        raise ValueError(f"nms: offset must be 0 or 1, got {offset}")
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.float()
    if offset:
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:4] + offset], dim=1)
    return torchvision.ops.nms(boxes, scores.float(), float(iou_threshold))


def _check_avg(op: str, pool_mode: int) -> None:
    if pool_mode != 1:
        raise NotImplementedError(
            f"{op} with pool_mode='max' is not provided by the mmcv._ext stand-in (torchvision "
            "implements average RoIAlign only); install a compiled mmcv 2.x for it"
        )


def _roi_align_forward(
    input: torch.Tensor,
    rois: torch.Tensor,
    output: torch.Tensor,
    argmax_y: torch.Tensor,
    argmax_x: torch.Tensor,
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    pool_mode: int,
    aligned: bool,
) -> None:
    """mmcv's ``roi_align_forward``: fills ``output`` in place (average mode)."""
    _check_avg("roi_align_forward", pool_mode)
    if rois.shape[0] == 0:
        return
    dtype = torch.promote_types(input.dtype, rois.dtype)
    result = torch.ops.torchvision.roi_align(
        input.to(dtype).contiguous(),
        rois.to(dtype).contiguous(),
        float(spatial_scale),
        int(aligned_height),
        int(aligned_width),
        int(sampling_ratio),
        bool(aligned),
    )
    output.copy_(result)


def _roi_align_backward(
    grad_output: torch.Tensor,
    rois: torch.Tensor,
    argmax_y: torch.Tensor,
    argmax_x: torch.Tensor,
    grad_input: torch.Tensor,
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    pool_mode: int,
    aligned: bool,
) -> None:
    """mmcv's ``roi_align_backward``: accumulates into ``grad_input`` in place (average mode)."""
    _check_avg("roi_align_backward", pool_mode)
    if rois.shape[0] == 0:
        return
    batch, channels, height, width = grad_input.shape
    dtype = torch.promote_types(grad_output.dtype, rois.dtype)
    grad = torch.ops.torchvision._roi_align_backward(
        grad_output.to(dtype).contiguous(),
        rois.to(dtype).contiguous(),
        float(spatial_scale),
        int(aligned_height),
        int(aligned_width),
        batch,
        channels,
        height,
        width,
        int(sampling_ratio),
        bool(aligned),
    )
    grad_input.add_(grad.to(grad_input.dtype))


def _compiler_version() -> str:
    return "none (mmcv._ext stand-in over torchvision.ops)"


def _unavailable(name: str) -> Callable[..., None]:
    def kernel(*args, **kwargs) -> None:
        raise NotImplementedError(
            f"mmcv op '{name}' needs mmcv's compiled extension, which is not installed: this "
            f"environment uses mmcv-lite with natzoo's stand-in, which provides only "
            f"{', '.join(STANDIN_OPS)}. Install a compiled mmcv 2.x (built for your torch) "
            "instead of mmcv-lite to use it."
        )

    kernel.__name__ = name
    return kernel


def _build_standin() -> types.ModuleType:
    module = types.ModuleType(STANDIN_NAME, "natzoo stand-in for mmcv's compiled kernels")
    module.__spec__ = importlib.machinery.ModuleSpec(STANDIN_NAME, None)
    module.nms = _nms
    module.roi_align_forward = _roi_align_forward
    module.roi_align_backward = _roi_align_backward
    module.get_compiler_version = _compiler_version
    module.get_compiling_cuda_version = _compiler_version
    module.__natzoo_standin__ = True

    def __getattr__(name: str) -> Callable[..., None]:
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(name)

    module.__getattr__ = __getattr__
    return module


def compiled_mmcv_available() -> bool:
    """True when a real compiled ``mmcv._ext`` is importable (not this module's stand-in)."""
    existing = sys.modules.get(STANDIN_NAME)
    if existing is not None:
        return not getattr(existing, "__natzoo_standin__", False)
    try:
        return importlib.util.find_spec(STANDIN_NAME) is not None
    except ModuleNotFoundError:  # mmcv itself is absent
        return False


def install_ext_standin() -> bool:
    """Register the stand-in as ``mmcv._ext`` unless a compiled one exists; True if installed
    (now or before). Must run before ``mmcv.ops`` is first imported."""
    if STANDIN_NAME in sys.modules:
        return getattr(sys.modules[STANDIN_NAME], "__natzoo_standin__", False)
    if compiled_mmcv_available():
        return False
    if "mmcv.ops" in sys.modules:
        raise RuntimeError(
            "mmcv.ops was imported before natzoo could provide mmcv._ext; import detection.models "
            "or segmentation.models (or name it in the config's custom_imports) first"
        )
    import mmcv

    module = _build_standin()
    sys.modules[STANDIN_NAME] = module
    mmcv._ext = module
    return True


def _history_buffer_getattr(owner: object, name: str) -> object:
    """The only ``getattr`` checkpoints may call: mmengine's ``HistoryBuffer.__getstate__``
    pickles its statistics methods as ``getattr(HistoryBuffer, 'mean')`` and so on."""
    from mmengine.logging.history_buffer import HistoryBuffer

    own_method = name in vars(HistoryBuffer) and not name.startswith("_")
    if owner is HistoryBuffer and own_method and callable(getattr(HistoryBuffer, name)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f"checkpoint asks for getattr({owner!r}, {name!r}); only HistoryBuffer's methods are "
        "allowed (natzoo allow_mmengine_checkpoints)"
    )


def _mmengine_checkpoint_globals() -> list:
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    multiarray = np._core.multiarray
    allowed: list = [HistoryBuffer, np.ndarray, np.dtype]
    allowed += [
        cls
        for cls in vars(np.dtypes).values()
        if isinstance(cls, type) and issubclass(cls, np.dtype)
    ]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 / numpy 1 files
        allowed += [
            (multiarray._reconstruct, f"{module}._reconstruct"),
            (multiarray.scalar, f"{module}.scalar"),
        ]
    allowed.append((_history_buffer_getattr, "builtins.getattr"))
    return allowed


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` (torch's default) read mmengine Runner checkpoints.

    Their ``message_hub`` pickles ``HistoryBuffer`` objects and numpy arrays/scalars; these types
    are allow-listed. ``HistoryBuffer`` also pickles its statistics methods through
    ``builtins.getattr``: rather than allowing getattr on anything, that name is mapped to a
    function that resolves only ``HistoryBuffer``'s own methods and rejects everything else.
    """
    torch.serialization.add_safe_globals(_mmengine_checkpoint_globals())


def load_url_weights_only(url: str, map_location: Any = None, model_dir: str | None = None):
    """Download ``url`` to torch's hub cache (local rank 0 first when distributed) and read it
    with ``weights_only=True``; mmengine's own ``http(s)://`` loader reads downloads unsafely."""
    from mmengine.dist import get_dist_info

    def load() -> Any:
        return torch.hub.load_state_dict_from_url(
            url, model_dir=model_dir, map_location=map_location, weights_only=True
        )

    rank, world_size = get_dist_info()
    checkpoint = load() if rank == 0 else None
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = load()
    return checkpoint


def load_local_weights_only(filename: str, map_location: Any = None) -> Any:
    """mmengine's local-file checkpoint loader, reading with ``weights_only=True`` through
    :func:`classification.checkpoint.read_checkpoint`: CheckpointFileError (naming the file and
    the reason, e.g. the blocked global of a pickle that would run code) when it cannot."""
    import os

    from classification.checkpoint import CheckpointFileError, read_checkpoint

    path = os.path.expanduser(filename)
    try:
        return read_checkpoint(path, map_location=map_location)
    except FileNotFoundError:
        raise CheckpointFileError(f"checkpoint file {path} cannot be read: not found") from None


def _register_safe_loaders() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(("http://", "https://"), load_url_weights_only, force=True)
    CheckpointLoader.register_scheme("", load_local_weights_only, force=True)


def setup() -> bool:
    """Everything natzoo needs before mmdet/mmseg models are imported: the checkpoint allow-list,
    weights-only loading of files and downloads with clear errors, and the ``mmcv._ext``
    stand-in; True if the stand-in is in use."""
    allow_mmengine_checkpoints()
    _register_safe_loaders()
    return install_ext_standin()

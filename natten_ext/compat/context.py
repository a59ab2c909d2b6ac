"""Feature queries and switches of NATTEN 0.15-0.17 (``natten.has_cuda()``, ``use_fused_na``...).

They answer for natten_ext, truthfully:

- ``has_cuda/has_half/has_bfloat``: natten_ext runs on a CUDA device here (in that dtype).
- ``has_fna/has_fused_na``: a fused CUDA kernel (natten_ext's Triton backend) is available.
- ``has_gemm/has_tf32_gemm/has_fp32_gemm/has_fp64_gemm``: always False; natten_ext has no
  NATTEN-style GEMM kernels.
- ``use_fused_na(mode)``: the compat modules call the fused op (True, the default here) or the
  explicit QK -> softmax -> AV ops (False), like NATTEN's modules. Both compute the same function.
- Switches of NATTEN kernels natten_ext does not have (tiled/GEMM NA, TF32 in GEMM NA, KV
  parallelism, auto-tuner) are accepted and change nothing; their ``is_*`` queries return False.
"""

from __future__ import annotations

import torch

from .. import dispatch

__all__ = [
    "disable_autotuner",
    "disable_gemm_na",
    "disable_tf32",
    "disable_tiled_na",
    "enable_gemm_na",
    "enable_tf32",
    "enable_tiled_na",
    "has_bfloat",
    "has_cuda",
    "has_fna",
    "has_fp32_gemm",
    "has_fp64_gemm",
    "has_fused_na",
    "has_gemm",
    "has_half",
    "has_tf32_gemm",
    "is_autotuner_enabled",
    "is_fna_enabled",
    "is_fused_na_enabled",
    "is_gemm_na_enabled",
    "is_kv_parallelism_in_fused_na_enabled",
    "is_tf32_in_gemm_na_enabled",
    "is_tiled_na_enabled",
    "use_autotuner",
    "use_fna",
    "use_fused_na",
    "use_gemm_na",
    "use_kv_parallelism_in_fused_na",
    "use_tf32_in_gemm_na",
    "use_tiled_na",
]

_fused_enabled = True


def has_cuda() -> bool:
    """natten_ext can run on a CUDA device in this process."""
    return torch.cuda.is_available()


def has_half(device_index: int | None = None) -> bool:
    """float16 on CUDA (every CUDA device natten_ext runs on)."""
    return has_cuda()


def has_bfloat(device_index: int | None = None) -> bool:
    """bfloat16 on CUDA: the device has native bfloat16 (compute capability >= 8.0)."""
    return has_cuda() and torch.cuda.get_device_capability(device_index)[0] >= 8


def has_fna(device_index: int | None = None) -> bool:
    """A fused CUDA kernel is available (natten_ext's Triton backend)."""
    return has_cuda() and "triton" in dispatch.available_backends()


has_fused_na = has_fna


def has_gemm(device_index: int | None = None) -> bool:
    """NATTEN's GEMM kernels: natten_ext has none."""
    return False


has_tf32_gemm = has_fp32_gemm = has_fp64_gemm = has_gemm


def use_fused_na(
    mode: bool = True,
    kv_parallel: bool = True,
    use_flex_attention: bool = False,
    force_flex_attention: bool = False,
) -> None:
    """Make the compat modules call the fused op (``mode=True``) or the unfused QK/AV ops.

    ``kv_parallel`` and the Flex options pick NATTEN kernels natten_ext does not have: ignored.
    """
    global _fused_enabled
    _fused_enabled = bool(mode)


def is_fused_na_enabled() -> bool:
    """Whether the compat modules call the fused op (True unless ``use_fused_na(False)``)."""
    return _fused_enabled


use_fna = use_fused_na
is_fna_enabled = is_fused_na_enabled


def _no_such_kernel(mode: bool = True) -> None:
    """Accepted for NATTEN compatibility; natten_ext has no such kernel, so nothing changes."""


def _never() -> bool:
    """natten_ext has no such kernel: never enabled."""
    return False


use_kv_parallelism_in_fused_na = use_tiled_na = use_gemm_na = use_tf32_in_gemm_na = _no_such_kernel
is_kv_parallelism_in_fused_na_enabled = is_tiled_na_enabled = _never
is_gemm_na_enabled = is_tf32_in_gemm_na_enabled = is_autotuner_enabled = _never


def use_autotuner(*args: object, **kwargs: object) -> None:
    """NATTEN's kernel auto-tuner: natten_ext has none; accepted, changes nothing."""


def disable_autotuner() -> None:
    """NATTEN's kernel auto-tuner: natten_ext has none; nothing to disable."""


def enable_tf32() -> bool:
    """0.15's switch for TF32 in GEMM NA: no such kernel here; returns the state, False."""
    return False


disable_tf32 = enable_gemm_na = disable_gemm_na = enable_tiled_na = disable_tiled_na = enable_tf32

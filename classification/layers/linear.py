"""``FastLinear``: ``nn.Linear`` whose float32 CPU inference runs oneDNN's matmul.

PyTorch computes a float32 ``nn.Linear`` on the CPU with MKL's GEMM. On AMD CPUs MKL takes its
AVX2 kernels even where the CPU has AVX-512; oneDNN, which PyTorch also ships (it runs the
convolutions), picks its kernels by instruction set. On the 2-core AMD EPYC (Zen 5) of
docs/benchmarks.md oneDNN is 2.0-2.3x faster at every Linear shape of NAT-Tiny, which makes
NAT-Tiny's batch-1 inference about 1.6x faster.

The oneDNN path (``torch.ops.mkldnn._linear_pointwise``, the op inductor's CPU backend emits)
has no autograd formula, so it serves only calls that need no gradient: float32 CPU tensors on
x86-64, grad mode off or no input requiring a gradient, no CPU autocast, oneDNN enabled
(``torch.backends.mkldnn``). Everything else, training, CUDA, other dtypes, TorchScript, FX,
``torch.jit.trace``, ``torch.compile`` (inductor picks its own GEMM) and dispatch-mode tracing,
is exactly ``nn.Linear``, and so are products of fewer than 2M multiply-adds, where oneDNN's
per-call cost outweighs its speed. Both paths compute the same function; their float32 sums run in
different orders, so they agree to rounding, not bit for bit. ``NATTEN_EXT_CPU_LINEAR=0`` turns
the oneDNN path off.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from natten_ext.utils.capture import graph_capture_active

__all__ = ["ENV_CPU_LINEAR", "FastLinear", "Linear", "onednn_linear_applies", "use_fast_linears"]

ENV_CPU_LINEAR = "NATTEN_EXT_CPU_LINEAR"
# oneDNN's op costs about 14 us a call before any arithmetic: below about 2M multiply-adds MKL is
# faster (16x64x64: 3.9 against 14.3 us; 196x128x128: 37 against 36; 49x256x256: 43 against 31)
_MIN_MACS = 2**21


def _onednn_linear_usable() -> bool:
    """oneDNN's linear op exists and is wanted here (decided once, at import)."""
    if os.environ.get(ENV_CPU_LINEAR, "1") == "0":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False  # measured on x86-64 only; elsewhere PyTorch's BLAS is not MKL
    if not torch.backends.mkldnn.is_available():
        return False
    return hasattr(torch.ops.mkldnn, "_linear_pointwise")


_ONEDNN = _onednn_linear_usable()


def onednn_linear_applies(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether ``FastLinear`` computes ``F.linear(x, weight, bias)`` with oneDNN."""
    if not _ONEDNN or type(x) is not torch.Tensor:
        return False  # FX proxies and tensor subclasses too
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return False  # training leaves here
    if not x.is_cpu:
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() < 2:
        return False
    if bias is not None and bias.dtype != torch.float32:
        return False
    if graph_capture_active():
        return False  # inductor chooses its own kernels; traces must record aten::linear
    if torch.is_autocast_enabled("cpu"):
        return False  # autocast casts for aten's op
    if x.numel() * weight.shape[0] < _MIN_MACS or x.layout != torch.strided:
        return False  # small products (empty ones too) are faster on PyTorch's GEMM
    if not torch.backends.mkldnn.enabled:
        return False
    return weight.device.type == "cpu" and weight.layout == torch.strided


class FastLinear(nn.Linear):
    """``nn.Linear`` (same constructor, parameters and state_dict) that runs oneDNN's matmul for
    float32 CPU inference (see the module docstring); ``nn.Linear`` everywhere else."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return F.linear(input, self.weight, self.bias)
        return self._eager_forward(input)

    @torch.jit.unused
    def _eager_forward(self, input: Tensor) -> Tensor:
        if onednn_linear_applies(input, self.weight, self.bias):
            return torch.ops.mkldnn._linear_pointwise(input, self.weight, self.bias, "none", [], "")
        return F.linear(input, self.weight, self.bias)


Linear = FastLinear  # what the models build their Linear layers with


def use_fast_linears(module: nn.Module) -> nn.Module:
    """Make every plain ``nn.Linear`` in ``module`` a :class:`FastLinear`, in place, and return
    ``module``: the same parameters, state dict and hooks, only the class changes."""
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = FastLinear
    return module

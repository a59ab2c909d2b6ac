"""``Conv2d``: ``nn.Conv2d`` whose input takes the memory layout that runs it fastest on the CPU.

oneDNN converts whichever of input and weight is not in the layout it runs on, on every call:
channels-last input makes it reorder the weight, NCHW input the activation. The smaller copy
wins (measured at batch 1: NAT's stem runs 1.8x faster channels-last, its 14x14 -> 7x7
downsampler 2.6x faster NCHW). :func:`cpu_conv_layout` makes that choice; other devices take the
input as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Conv2d", "cpu_conv_layout"]


def cpu_conv_layout(x: Tensor, weight: Tensor) -> Tensor:
    """``x`` (an NCHW view) in the memory layout that makes a convolution with ``weight`` fastest
    on the CPU: NCHW when the weight is the larger copy, else channels-last.

    A graph traced with a symbolic batch (``torch.export`` with a dynamic batch) decides from one
    sample's size, so that the choice puts no guard on the batch. Other devices get ``x`` as it
    is.
    """
    if x.device.type != "cpu":
        return x
    size = x.numel() if isinstance(x.shape[0], int) else x[0].numel()
    if weight.numel() > size:
        return x.contiguous()
    return x.contiguous(memory_format=torch.channels_last)


torch.fx.wrap("cpu_conv_layout")  # a leaf of FX graphs: the layout is chosen when they run


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same constructor, parameters and state_dict) that first puts its input in
    the layout :func:`cpu_conv_layout` picks; the output has the layout the convolution gives."""

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(cpu_conv_layout(input, self.weight), self.weight, self.bias)

"""The layers the zoo's models are built from.

A model names "a Linear", "a LayerNorm", "a convolution" (and the blocks made of them) from
here; this package decides how each runs on each device:

- :mod:`.linear`: ``Linear`` is :class:`FastLinear`, an ``nn.Linear`` whose float32 CPU inference
  runs oneDNN's matmul.
- :mod:`.conv`: ``Conv2d`` is an ``nn.Conv2d`` whose input takes the memory layout that runs it
  fastest on the CPU (:func:`cpu_conv_layout`).
- :mod:`.norm`: ``LayerNorm`` is :class:`FastLayerNorm`, an ``nn.LayerNorm`` running Triton
  kernels for 16-bit work on CUDA.
- :mod:`.attention`: :func:`neighborhood_attention`, ``natten_ext``'s attention module with
  ``qkv`` and ``proj`` on ``Linear``.
- :mod:`.blocks`: :class:`NATransformerBlock`, :class:`Mlp`, :class:`NALevel`,
  :func:`build_levels` and :func:`patch_embedding`, shared by the NAT/DiNAT, DiNAT_s and
  isotropic classifiers.
- :mod:`.model_api`: the timm model API of the three families (:class:`ClassifierMixin`,
  :class:`HierarchicalMixin`) and the helpers their constructors share (:func:`materialize`).

``Linear``, ``LayerNorm`` and ``Conv2d`` each stand in for their PyTorch layer: the same
constructor, parameters and state dict.
"""

from .attention import neighborhood_attention
from .blocks import Mlp, NALevel, NATransformerBlock, build_levels, patch_embedding
from .conv import Conv2d, cpu_conv_layout
from .linear import FastLinear, Linear, onednn_linear_applies, use_fast_linears
from .model_api import (
    ClassifierMixin,
    HierarchicalMixin,
    check_dilations,
    check_hierarchical_args,
    init_module_weights,
    materialize,
    pretrained_tag_defaults,
)
from .norm import FastLayerNorm, LayerNorm, fast_layer_norm

__all__ = [
    "ClassifierMixin",
    "Conv2d",
    "FastLayerNorm",
    "FastLinear",
    "HierarchicalMixin",
    "LayerNorm",
    "Linear",
    "Mlp",
    "NALevel",
    "NATransformerBlock",
    "build_levels",
    "check_dilations",
    "check_hierarchical_args",
    "cpu_conv_layout",
    "fast_layer_norm",
    "init_module_weights",
    "materialize",
    "neighborhood_attention",
    "onednn_linear_applies",
    "patch_embedding",
    "pretrained_tag_defaults",
    "use_fast_linears",
]

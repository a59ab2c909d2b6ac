"""The Triton LayerNorm under this import path; the code is in :mod:`classification.layers.norm`."""

from .layers.norm import FastLayerNorm, fast_layer_norm

__all__ = ["FastLayerNorm", "fast_layer_norm"]

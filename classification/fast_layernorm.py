"""Former home of the Triton LayerNorm, now :mod:`classification.layers.norm`; re-exported."""

from .layers.norm import FastLayerNorm, fast_layer_norm

__all__ = ["FastLayerNorm", "fast_layer_norm"]

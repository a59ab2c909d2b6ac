"""Class saliency: where the image most affects one class's score (the logit), from its
gradient with respect to the input.

``grad`` (vanilla gradient, Simonyan et al. 2014): ``max over colour channels of |d score / dx|``.
``grad-x-input``: ``|sum over colour channels of x * d score / dx|`` on the normalised input the
model sees (zero where a pixel equals the mean colour).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .figure import ColorBar, Picture, colormap, display_scale, save_panels, upscale
from .inputs import check_index

__all__ = [
    "METHODS",
    "SALIENCY_CMAP",
    "Saliency",
    "draw_saliency",
    "saliency",
    "saliency_colours",
]

METHODS = ("grad", "grad-x-input")
SALIENCY_CMAP = "inferno"
OVERLAY_ALPHA = 0.6
PERCENTILE = 99.5  # the colour scale tops out at this percentile of the map (robust to outliers)


@dataclass(frozen=True)
class Saliency:
    """``map``: ``[S, S]`` float64 saliency of class ``target`` (model probability
    ``probability``) by ``method``."""

    map: np.ndarray
    target: int
    probability: float
    method: str

    def scale_top(self) -> float:
        """The value drawn at the top of the colour scale."""
        top = float(np.percentile(self.map, PERCENTILE))
        return top if top > 0 else float(self.map.max()) or 1.0


def saliency(
    model: nn.Module, images: Tensor, target: int | None = None, method: str = "grad"
) -> Saliency:
    """Saliency of class ``target`` (default: the model's top class) for ``images[0]``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    x = images[:1].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        classes = logits.shape[-1]
        if target is None:
            target = int(logits[0].argmax())
        check_index("--class", target, classes, "the model has classes")
        (grad,) = torch.autograd.grad(logits[0, target], x)
    probability = float(logits[0].detach().float().softmax(-1)[target])
    if method == "grad":
        values = grad[0].abs().amax(dim=0)
    else:
        values = (grad[0] * x[0].detach()).sum(dim=0).abs()
    return Saliency(values.double().cpu().numpy(), target, probability, method)


def saliency_colours(result: Saliency) -> np.ndarray:
    """``[S, S, 3]`` uint8: SALIENCY_CMAP of the map over ``[0, scale_top()]``."""
    return colormap(SALIENCY_CMAP, result.map / result.scale_top())


def draw_saliency(result: Saliency, pixels: np.ndarray, out: str | Path, title: str) -> Picture:
    """Three panels (the image as the model saw it, the saliency map, the map over the image);
    writes the PNG ``out``."""
    scale = display_scale(pixels.shape[0])
    heat = saliency_colours(result)
    blend = (1 - OVERLAY_ALPHA) * pixels.astype(np.float64) + OVERLAY_ALPHA * heat
    overlay = np.round(blend).astype(np.uint8)
    heading = (
        f"{title}\nclass {result.target}, probability {result.probability:.2f}; "
        f"{'vanilla gradient' if result.method == 'grad' else 'gradient x input'}"
    )
    return save_panels(
        out,
        [upscale(pixels, scale), upscale(heat, scale), upscale(overlay, scale)],
        ["input", "saliency", "overlay"],
        columns=3,
        heading=heading,
        colorbar=ColorBar(SALIENCY_CMAP, 0.0, result.scale_top(), "saliency"),
    )

"""Dilation schedules of the hierarchical models, and the rule that derives them for a resolution.

The published schedules alternate dilation 1 (local NA) with a dilated block, level by level.
The dilated value is the largest one for which the dilated neighborhood still fits in the
feature map: ``d = max(1, map_size // kernel_size)``, with ``map_size`` the shorter side of the
level's map. That rule gives D224 at 224 px (maps 56/28/14/7 -> 8/4/2/1), D384 at 384 px
(96/48/24/12 -> 13/6/3/1), D224 for the 11x11 kernel at 384 px (96//11 = 8, ...) and the
isotropic models' dilation 2 (14 // 7). The detection and segmentation schedules of the spec
(COCO at an 800 px short side, ADE20K at 512/640 px) stay within the same per-level bound and
vary the dilated blocks below it (e.g. 3, 5, 7 on level 2); pass ``max_dilation`` to cap it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["D224", "D384", "alternating", "dilation_schedule", "feature_map_sizes"]


def alternating(depths: Sequence[int], dilated: Sequence[int]) -> list[list[int]]:
    """Per level: ``[1, m, 1, m, ...]`` of length ``depths[i]`` with ``m = dilated[i]``."""
    if len(depths) != len(dilated):
        raise ValueError(f"dilated needs one value per level ({len(depths)}), got {dilated}")
    return [[1 if j % 2 == 0 else m for j in range(depth)] for depth, m in zip(depths, dilated)]


def D224(depths: Sequence[int]) -> list[list[int]]:
    """The published 224 px schedule (DiNAT and DiNAT_s): dilated blocks 8 / 4 / 2 / 1."""
    return alternating(depths, (8, 4, 2, 1))


def D384(depths: Sequence[int]) -> list[list[int]]:
    """The published 384 px schedule (DiNAT and DiNAT_s): dilated blocks 13 / 6 / 3 / 1."""
    return alternating(depths, (13, 6, 3, 1))


def _pair(img_size: int | Sequence[int]) -> tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"img_size must be a positive int or (height, width), got {img_size!r}")
    return size  # type: ignore[return-value]


def feature_map_sizes(
    img_size: int | Sequence[int], num_levels: int = 4, stem_stride: int = 4
) -> list[tuple[int, int]]:
    """(H, W) of each level: the stem divides by ``stem_stride``, each downsampler by 2, all
    rounding up (stride-2 padded convolutions, and the padded patch embedding/merging)."""
    h, w = _pair(img_size)
    h, w = -(-h // stem_stride), -(-w // stem_stride)
    sizes = []
    for _ in range(num_levels):
        sizes.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    return sizes


def dilation_schedule(
    depths: Sequence[int],
    img_size: int | Sequence[int],
    kernel_size: int = 7,
    max_dilation: int | Sequence[int] | None = None,
    stem_stride: int = 4,
) -> list[list[int]]:
    """Dilations for a new resolution: per level ``max(1, min(cap, map // kernel_size))`` on the
    odd-indexed blocks and 1 on the others (see the module docstring).

    ``max_dilation`` caps the dilated value (one int, or one per level).
    """
    if not isinstance(kernel_size, int) or kernel_size < 2:
        raise ValueError(f"kernel_size must be an int >= 2, got {kernel_size!r}")
    sizes = feature_map_sizes(img_size, len(depths), stem_stride)
    if max_dilation is None:
        caps = [None] * len(depths)
    elif isinstance(max_dilation, int):
        caps = [max_dilation] * len(depths)
    else:
        caps = list(max_dilation)
        if len(caps) != len(depths):
            raise ValueError(
                f"max_dilation needs one value per level ({len(depths)}), got {max_dilation}"
            )
    dilated = []
    for (h, w), cap in zip(sizes, caps):
        d = min(h, w) // kernel_size
        if cap is not None:
            d = min(d, cap)
        dilated.append(max(1, d))
    return alternating(depths, dilated)

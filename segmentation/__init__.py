"""Semantic segmentation (mmseg 1.x) with NAT/DiNAT/DiNAT_s backbones.

The backbones and mmcv-lite glue are shared with :mod:`detection` (which does not import mmdet);
:mod:`segmentation.models` registers the same backbone classes with mmseg.
"""

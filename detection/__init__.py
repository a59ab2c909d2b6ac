"""Detection (mmdet 3.x) with NAT/DiNAT/DiNAT_s backbones, and the OpenMMLab glue shared with
:mod:`segmentation`.

Nothing here imports mmdet eagerly: :mod:`detection.mmcv_compat` (mmcv-lite kernel stand-in,
checkpoint allow-list), :mod:`detection.backbones` and :mod:`detection.demo_shapes` work with only
the segmentation extra installed. :mod:`detection.models` registers the backbones with mmdet.
"""

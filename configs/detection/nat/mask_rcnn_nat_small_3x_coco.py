# Mask R-CNN 3x (COCO) with a NAT-Small backbone.
_base_ = [
    "../_base_/mask_rcnn_nat_fpn.py",
    "../_base_/coco_instance_ms_crop.py",
    "../_base_/schedule_3x_adamw.py",
    "../_base_/runtime.py",
]

model = dict(
    backbone=dict(
        type="NATBackbone",
        embed_dim=96,
        depths=[3, 4, 18, 5],
        num_heads=[3, 6, 12, 24],
        mlp_ratio=2.0,
        kernel_size=7,
        drop_path_rate=0.35,
        layer_scale=1e-05,
        init_cfg=dict(
            type="Pretrained",
            checkpoint="https://shi-labs.com/projects/nat/checkpoints/CLS/nat_small.pth",
        ),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)

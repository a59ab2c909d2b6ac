# Cascade Mask R-CNN 3x (COCO) with a NAT-Base backbone.
_base_ = [
    "../_base_/cascade_mask_rcnn_nat_fpn.py",
    "../_base_/coco_instance_ms_crop.py",
    "../_base_/schedule_3x_adamw.py",
    "../_base_/runtime.py",
]

model = dict(
    backbone=dict(
        type="NATBackbone",
        embed_dim=128,
        depths=[3, 4, 18, 5],
        num_heads=[4, 8, 16, 32],
        mlp_ratio=2.0,
        kernel_size=7,
        drop_path_rate=0.5,
        layer_scale=1e-05,
        init_cfg=dict(
            type="Pretrained",
            checkpoint="https://shi-labs.com/projects/nat/checkpoints/CLS/nat_base.pth",
        ),
    ),
    neck=dict(in_channels=[128, 256, 512, 1024]),
)

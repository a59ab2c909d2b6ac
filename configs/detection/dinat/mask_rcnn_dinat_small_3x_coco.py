# Mask R-CNN 3x (COCO) with a DiNAT-Small backbone.
_base_ = [
    "../_base_/mask_rcnn_nat_fpn.py",
    "../_base_/coco_instance_ms_crop.py",
    "../_base_/schedule_3x_adamw.py",
    "../_base_/runtime.py",
]

model = dict(
    backbone=dict(
        type="DiNATBackbone",
        embed_dim=96,
        depths=[3, 4, 18, 5],
        num_heads=[3, 6, 12, 24],
        mlp_ratio=2.0,
        kernel_size=7,
        dilations=[
            [1, 28, 1],
            [1, 7, 1, 14],
            [1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7],
            [1, 3, 1, 3, 1],
        ],
        drop_path_rate=0.35,
        init_cfg=dict(
            type="Pretrained",
            checkpoint="https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_small_in1k_224.pth",
        ),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)

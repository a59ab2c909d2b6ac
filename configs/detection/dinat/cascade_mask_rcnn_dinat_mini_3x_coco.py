# Cascade Mask R-CNN 3x (COCO) with a DiNAT-Mini backbone.
_base_ = [
    "../_base_/cascade_mask_rcnn_nat_fpn.py",
    "../_base_/coco_instance_ms_crop.py",
    "../_base_/schedule_3x_adamw.py",
    "../_base_/runtime.py",
]

model = dict(
    backbone=dict(
        type="DiNATBackbone",
        embed_dim=64,
        depths=[3, 4, 6, 5],
        num_heads=[2, 4, 8, 16],
        mlp_ratio=3.0,
        kernel_size=7,
        dilations=[[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7], [1, 3, 1, 3, 1]],
        drop_path_rate=0.2,
        init_cfg=dict(
            type="Pretrained",
            checkpoint="https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth",
        ),
    ),
    neck=dict(in_channels=[64, 128, 256, 512]),
)

# Cascade Mask R-CNN 3x (COCO) with a DiNAT_s-Large backbone.
_base_ = [
    "../_base_/cascade_mask_rcnn_nat_fpn.py",
    "../_base_/coco_instance_ms_crop.py",
    "../_base_/schedule_3x_adamw.py",
    "../_base_/runtime.py",
]

model = dict(
    backbone=dict(
        type="DiNATSBackbone",
        embed_dim=192,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        mlp_ratio=4.0,
        kernel_size=7,
        dilations=[
            [1, 28],
            [1, 14],
            [1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7],
            [1, 3],
        ],
        drop_path_rate=0.6,
        init_cfg=dict(
            type="Pretrained",
            checkpoint="https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth",
        ),
    ),
    neck=dict(in_channels=[192, 384, 768, 1536]),
)
optim_wrapper = dict(optimizer=dict(lr=5e-05))

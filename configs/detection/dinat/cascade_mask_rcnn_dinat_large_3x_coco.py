# Cascade Mask R-CNN 3x (COCO) with a DiNAT-Large backbone.
_base_ = [
    "../_base_/cascade_mask_rcnn_nat_fpn.py",
    "../_base_/coco_instance_ms_crop.py",
    "../_base_/schedule_3x_adamw.py",
    "../_base_/runtime.py",
]

model = dict(
    backbone=dict(
        type="DiNATBackbone",
        embed_dim=192,
        depths=[3, 4, 18, 5],
        num_heads=[6, 12, 24, 48],
        mlp_ratio=2.0,
        kernel_size=7,
        dilations=[
            [1, 28, 1],
            [1, 7, 1, 14],
            [1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7],
            [1, 3, 1, 3, 1],
        ],
        drop_path_rate=0.6,
        init_cfg=dict(
            type="Pretrained",
            checkpoint="https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth",
        ),
    ),
    neck=dict(in_channels=[192, 384, 768, 1536]),
)
# Trained in float32 upstream (no float16 mixed precision for DiNAT-Large).
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=7.5e-05, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={"rpb": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0)}),
)

# UPerNet 160k (ADE20K, 640x640 crops) with a DiNAT-Large backbone.
_base_ = [
    "../_base_/upernet_nat.py",
    "../_base_/ade20k_640x640.py",
    "../_base_/schedule_160k_adamw.py",
    "../_base_/runtime.py",
]

crop_size = (640, 640)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type="DiNATBackbone",
        embed_dim=192,
        depths=[3, 4, 18, 5],
        num_heads=[6, 12, 24, 48],
        mlp_ratio=2.0,
        kernel_size=7,
        dilations=[
            [1, 20, 1],
            [1, 5, 1, 10],
            [1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5],
            [1, 2, 1, 2, 1],
        ],
        drop_path_rate=0.3,
        init_cfg=dict(
            type="Pretrained",
            checkpoint="https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth",
        ),
    ),
    decode_head=dict(in_channels=[192, 384, 768, 1536], num_classes=150),
    auxiliary_head=dict(in_channels=768, num_classes=150),
)
# 8 GPUs x 2 images = the published batch of 16
train_dataloader = dict(batch_size=2)
# Trained in float32 upstream (no float16 mixed precision for DiNAT-Large).
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=6e-05, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={"rpb": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0)}),
)

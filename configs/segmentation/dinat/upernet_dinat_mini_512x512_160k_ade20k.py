# UPerNet 160k (ADE20K, 512x512 crops) with a DiNAT-Mini backbone.
_base_ = [
    "../_base_/upernet_nat.py",
    "../_base_/ade20k.py",
    "../_base_/schedule_160k_adamw.py",
    "../_base_/runtime.py",
]

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type="DiNATBackbone",
        embed_dim=64,
        depths=[3, 4, 6, 5],
        num_heads=[2, 4, 8, 16],
        mlp_ratio=3.0,
        kernel_size=7,
        dilations=[[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4], [1, 2, 1, 2, 1]],
        drop_path_rate=0.2,
        init_cfg=dict(
            type="Pretrained",
            checkpoint="https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth",
        ),
    ),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150),
)
# 8 GPUs x 2 images = the published batch of 16
train_dataloader = dict(batch_size=2)

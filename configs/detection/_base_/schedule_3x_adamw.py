# "3x" schedule of the NAT/DiNAT detectors: AdamW lr 1e-4, weight decay 0.05 (none on rpb and
# norms), 36 epochs with steps at 27 and 33, 500-iteration linear warmup, float16 mixed precision.
max_epochs = 36
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type="MultiStepLR", begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1
    ),
]
optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale="dynamic",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={"rpb": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0)}),
)
# lr above is for a total batch of 16; `--auto-scale-lr` rescales it for other batch sizes
auto_scale_lr = dict(enable=False, base_batch_size=16)

# UPerNet NAT-Mini (the published model, 3 classes) on the generated shapes dataset: 8 iterations
# on CPU. Random backbone init (no download), fp32 (`--amp` for float16 on CUDA).
_base_ = [
    "../_base_/upernet_nat.py",
    "../_base_/demo_shapes_ade.py",
    "../_base_/schedule_160k_adamw.py",
    "../_base_/runtime.py",
]

model = dict(
    data_preprocessor=dict(size=(128, 128)),
    decode_head=dict(num_classes=3),
    auxiliary_head=dict(num_classes=3),
)
train_cfg = dict(max_iters=8, val_interval=4)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=2),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=2, end=8, by_epoch=False),
]
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={"rpb": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0)}),
)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=4))

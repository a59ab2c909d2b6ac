# 160k-iteration UPerNet schedule of NAT/DiNAT: AdamW lr 6e-5, weight decay 0.01 (none on rpb
# and norms), poly decay (power 1) to 0 over all 160k iterations with a 1500-iteration linear
# warmup from 1e-6 multiplied on top (mmengine chains overlapping schedulers), as in the original
# mmseg 0.x configs (`policy='poly', warmup='linear'`); float16 mixed precision.
optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale="dynamic",
    optimizer=dict(type="AdamW", lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={"rpb": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=0, end=160000, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=160000, val_interval=16000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

# Cascade Mask R-CNN NAT-Mini (the published model, 3 classes) on the generated shapes dataset:
# two short epochs on CPU. Random backbone init (no download), fp32 (`--amp` for float16 on CUDA).
_base_ = [
    "../_base_/cascade_mask_rcnn_nat_fpn.py",
    "../_base_/demo_shapes_coco.py",
    "../_base_/schedule_3x_adamw.py",
    "../_base_/runtime.py",
]

model = dict(
    roi_head=dict(
        bbox_head=[dict(head, num_classes=3) for head in _base_.model.roi_head.bbox_head],
        mask_head=dict(num_classes=3),
    )
)

max_epochs = 2
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=5),
    dict(type="MultiStepLR", begin=0, end=max_epochs, by_epoch=True, milestones=[1], gamma=0.1),
]
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={"rpb": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0)}),
)
default_hooks = dict(logger=dict(interval=1))

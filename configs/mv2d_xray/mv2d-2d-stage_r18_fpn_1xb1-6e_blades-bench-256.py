# The blades benchmark's 2D stage: the Faster R-CNN of mv2d_r18_fpn_1xb1-7e_blades-bench-256.py
# trained alone, from scratch, on the per-view defect boxes (the 3D head switched off);
# its checkpoint starts the full model. The demo's 2D-stage settings
# (mv2d-2d-stage_r18_fpn_1xb1-12e_blades-256.py) with this benchmark's pipeline and 6
# epochs of its 216 training parts (1296 iterations; the 120-part benchmark of earlier
# sessions trained 16 epochs of 72 parts, 1152: about as many).
_base_ = ['./mv2d_r18_fpn_1xb1-7e_blades-bench-256.py']

work_dir = 'work_dirs/blades-bench/2d-stage'

model = dict(
    roi_head=None,
    freeze_base_detector=False,
    train_cfg=dict(_delete_=True),
    test_cfg=dict(
        _delete_=True,
        detection_proposal={{_base_.model.test_cfg.detection_proposal}}))
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_2d}}))

# 6 epochs of the 216 training parts' 2592 views (~5 min each on 2 CPU cores: 1849 s measured)
max_epochs = 6
optim_wrapper = dict(
    optimizer=dict(lr=2e-3),
    paramwise_cfg=dict(custom_keys={'base_detector.backbone': dict(lr_mult=1.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=50),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs,
        eta_min_ratio=1e-3,
        begin=0,
        end=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True)
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(checkpoint=dict(interval=max_epochs))

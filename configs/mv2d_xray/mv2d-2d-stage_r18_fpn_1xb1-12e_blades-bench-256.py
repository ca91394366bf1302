# The blades benchmark's 2D stage: the Faster R-CNN of mv2d_r18_fpn_1xb1-7e_blades-bench-256.py
# trained alone, from scratch, on the per-view defect boxes (the 3D head switched off);
# its checkpoint starts the full model. The demo's 2D-stage settings
# (mv2d-2d-stage_r18_fpn_1xb1-12e_blades-256.py) with this benchmark's pipeline, 128 sampled
# RoIs per view (the full model's setting) and 12 epochs of its 216 training parts (2592
# iterations). Until the thirty-seventh session 6 epochs with 32 RoIs: the chest's 2D-stage
# lessons, measured in fp32 here on val, raised this stage's AP@0.1 0.234 -> 0.344 (AR@0.1
# 0.442 -> 0.454), and MV2D's CPM with it (README, blades ablations, `r12-rcnn128`).
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
# the 2D stage's own weights, not averaged (the MV2D config's EMAHook is for MV2D's training)
custom_hooks = []

# no 3D head: the val and test passes report the per-view COCO figures alone
# (XrayDet3DMetric's evaluate_3d=False), not 3D figures of 0 for boxes it never makes
val_evaluator = dict(evaluate_3d=False)
test_evaluator = dict(evaluate_3d=False)

# 12 epochs of the 216 training parts' 2592 views (~3 min each on 2 CPU cores: 2238 s measured
# with the val pass, ~0.85 s per step)
max_epochs = 12
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

# The demo's 2D stage: the Faster R-CNN of mv2d_r18_fpn_1xb1-30e_demo-256.py trained
# alone, from scratch, on the per-view nodule boxes of the demo dataset (the 3D head is
# switched off). Its checkpoint starts the full demo model (`load_from`; the parameter
# names are the same). See mv2d-2d-stage_r50_fpn_1xb1-12e_lidc-1024.py.
_base_ = ['./mv2d_r18_fpn_1xb1-30e_demo-256.py']

work_dir = 'work_dirs/demo/2d-stage'

# the 2D stage alone: no 3D head, so none of the 3D stage's settings (the train-time
# query proposals, GT complement and Hungarian matching, the test-time 3D threshold,
# NMS and cap) apply; only the test-time 2D detections remain
model = dict(
    roi_head=None,
    freeze_base_detector=False,
    train_cfg=dict(_delete_=True),
    test_cfg=dict(
        _delete_=True,
        detection_proposal={{_base_.model.test_cfg.detection_proposal}}))
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_2d}}))

# no 3D head: the val and test passes report the per-view COCO figures alone
# (XrayDet3DMetric's evaluate_3d=False), not 3D figures of 0 for boxes it never makes
val_evaluator = dict(evaluate_3d=False)
test_evaluator = dict(evaluate_3d=False)

# -- schedule: from scratch, so the backbone learns at the full rate ---------------------------
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

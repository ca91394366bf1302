# The 2D stage of the blades config alone (Faster R-CNN, ResNet-50 FPN, three defect
# classes), trained first; then start mv2d_r50_fpn_1xb1-24e_blades-512.py from it with
# `load_from` (see that file). Same data, pipelines and acquisition.
_base_ = ['./mv2d_r50_fpn_1xb1-24e_blades-512.py']

model = dict(
    roi_head=None,
    train_cfg=dict(_delete_=True),
    test_cfg=dict(
        _delete_=True,
        detection_proposal={{_base_.model.test_cfg.detection_proposal}}))

# no 3D head: the val and test passes report the per-view COCO figures alone
# (XrayDet3DMetric's evaluate_3d=False), not 3D figures of 0 for boxes it never makes
val_evaluator = dict(evaluate_3d=False)
test_evaluator = dict(evaluate_3d=False)

# -- schedule: 12 epochs; the backbone learns at the full rate from scratch ----------------------
max_epochs = 12
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'base_detector.backbone': dict(lr_mult=1.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs,
        eta_min_ratio=1e-3,
        begin=0,
        end=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True)
]
train_cfg = dict(max_epochs=max_epochs, val_interval=4)

# The 2D stage of MV2D alone: the Faster R-CNN (ResNet-50 FPN) of
# mv2d_r50_fpn_1xb1-24e_lidc-1024.py trained on the per-view nodule boxes, with the 3D
# head switched off. Train this first and check that the detector finds nodules in the
# views (tools/test.py prints the per-view COCO AP; the 3D figures stay empty), then
# start the full model from it:
#
#   python tools/train.py configs/mv2d_xray/mv2d-2d-stage_r50_fpn_1xb1-12e_lidc-1024.py
#   python tools/train.py configs/mv2d_xray/mv2d_r50_fpn_1xb1-24e_lidc-1024.py \
#       --cfg-options load_from=work_dirs/mv2d-2d-stage_r50_fpn_1xb1-12e_lidc-1024/epoch_12.pth
#
# The checkpoint's parameters are `base_detector.*`, the names of the full model's 2D
# stage, so `load_from` fills it and leaves the 3D head (`roi_head.*`) at its
# initialisation. Same data, pipelines and acquisition as the full model.
_base_ = ['./mv2d_r50_fpn_1xb1-24e_lidc-1024.py']

# the 2D stage alone: no 3D head, so none of the 3D stage's settings (the train-time
# query proposals, GT complement and Hungarian matching, the test-time 3D threshold,
# NMS and cap) apply; only the test-time 2D detections remain
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

# -- schedule: 12 epochs of the full model's schedule; the backbone learns at the full rate
# from scratch (with an ImageNet-pretrained backbone keep the full model's 0.25) ----------------
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

# MV2D on LIDC-IDRI seen in 10 simulated radiographs of 1024 x 1024 px: the paper's
# setting. Faster R-CNN (ResNet-50 FPN) finds the nodules in every view; each detection
# becomes a 3D query that attends to the related detections of the other views.
#
#   python -m data_converters lidc --lidc-root /path/to/LIDC-IDRI --out data/lidc
#   python tools/train.py configs/mv2d_xray/mv2d-2d-stage_r50_fpn_1xb1-12e_lidc-1024.py
#   python tools/train.py configs/mv2d_xray/mv2d_r50_fpn_1xb1-24e_lidc-1024.py \
#       --cfg-options load_from=work_dirs/mv2d-2d-stage_r50_fpn_1xb1-12e_lidc-1024/epoch_12.pth
#   python tools/test.py configs/mv2d_xray/mv2d_r50_fpn_1xb1-24e_lidc-1024.py \
#       work_dirs/mv2d_r50_fpn_1xb1-24e_lidc-1024/epoch_24.pth
#
# Initialisation: nothing is downloaded; by default every weight starts from scratch.
# * 2D stage first (recommended): train the 2D-stage config above, then start this one
#   from its checkpoint with `load_from` (same parameter names; the 3D head starts fresh).
# * ImageNet backbone: set `backbone.init_cfg = dict(type='Pretrained',
#   checkpoint='/path/to/resnet50.pth')` (a torchvision or open-mmlab ResNet-50 file you
#   downloaded), `frozen_stages=1`, `norm_cfg=dict(type='BN', requires_grad=False)`,
#   `norm_eval=True`, and the ImageNet mean/std in `data_preprocessor` (see below).
# * A detector checkpoint (e.g. mmdet's Faster R-CNN R50 FPN): its keys are `backbone.*`,
#   `neck.*`, ...; here they are `base_detector.backbone.*`, ... : use
#   `base_detector.init_cfg = dict(type='Pretrained', checkpoint=PATH)` instead of
#   `load_from` (the class-count mismatch of the last R-CNN layers is skipped).
_base_ = ['./_base_/default_runtime.py']

# -- the acquisition: must match the converted data (README "Conventions") ------------------
num_views = 10               # views per case, on a circle about z
img_size = (1024, 1024)      # (H, W) of the radiographs and of the network input
sod_mm = 300.0               # source -> isocentre distance
class_names = ['nodule']
# Derived ranges (ct mm). Findings lie inside the body, within ~200 mm of the isocentre:
# the camera depth of anything relevant is sod_mm -+ 200 mm, and box centres lie in
# +-250 mm (the sigmoid range of the head's centre codes).
body_radius_mm = 200.0
depth_range = (sod_mm - body_radius_mm, sod_mm + body_radius_mm)
point_cloud_range = [-250.0, -250.0, -250.0, 250.0, 250.0, 250.0]

# -- model ------------------------------------------------------------------------------------
embed_dims = 256
roi_strides = [4, 8, 16, 32]         # FPN levels read by both RoI extractors (P2-P5)
# The R-CNN settings for the detections that become 3D queries (MV2D's
# `detection_proposal`): class-agnostic NMS, at most this many per view, and boxes down
# to 2 px kept (the original 8 px dropped the smallest nodules).
detection_proposal = dict(
    score_thr=0.05,
    nms=dict(type='nms', iou_threshold=0.6, class_agnostic=True),
    max_per_img=30,
    min_bbox_size=2)
num_decoder_layers = 6

model = dict(
    type='MV2DXray',
    # Grey DRRs replicated to 3 channels, from scratch: the DRR statistics. With an
    # ImageNet-pretrained backbone use mean=[123.675, 116.28, 103.53],
    # std=[58.395, 57.12, 57.375].
    data_preprocessor=dict(
        type='Det3DDataPreprocessor',
        mean=[83.2, 83.2, 83.2],
        std=[52.0, 52.0, 52.0],
        bgr_to_rgb=False,
        pad_size_divisor=32),
    # MV2D's GridMask (p 0.7, 16-36 % of the pixels) hides whole small nodules: off.
    # To try it: use_grid_mask=dict(use_h=True, use_w=True, rotate=1, ratio=0.5, prob=0.7)
    use_grid_mask=None,
    base_detector=dict(
        type='MV2DXrayTwoStage2D',   # mmdet's Faster R-CNN, features shared with 3D
        backbone=dict(
            type='mmdet.ResNet',
            depth=50,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            # Frozen stages (mmdet's ResNet): -1 trains every stage (from scratch); with a
            # pretrained backbone, 1 keeps the stem and the first stage as loaded (no
            # gradients, no optimiser state, their BN in eval mode).
            frozen_stages=-1,
            # Gradient checkpointing (memory): True recomputes each residual block's
            # activations in the backward pass instead of keeping them (blocks whose
            # input needs no gradient, under frozen stages, are not checkpointed);
            # README "Memory, mixed precision and several processes" has the figures.
            with_cp=False,
            norm_cfg=dict(type='BN', requires_grad=True),
            norm_eval=False,
            style='pytorch',
            dcn=None,
            init_cfg=None),
        neck=dict(
            type='mmdet.FPN',
            in_channels=[256, 512, 1024, 2048],
            out_channels=embed_dims,
            num_outs=5),
        rpn_head=dict(
            type='mmdet.RPNHead',
            in_channels=embed_dims,
            feat_channels=embed_dims,
            # 8 px anchors at stride 4: a 3 mm nodule is ~8 px at 1024 px
            anchor_generator=dict(
                type='mmdet.AnchorGenerator',
                scales=[2],
                ratios=[0.5, 1.0, 2.0],
                strides=[4, 8, 16, 32, 64]),
            bbox_coder=dict(
                type='mmdet.DeltaXYWHBBoxCoder',
                target_means=[0.0, 0.0, 0.0, 0.0],
                target_stds=[1.0, 1.0, 1.0, 1.0]),
            loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0)),
        roi_head=dict(
            type='mmdet.StandardRoIHead',
            bbox_roi_extractor=dict(
                type='mmdet.SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                out_channels=embed_dims,
                featmap_strides=roi_strides),
            bbox_head=dict(
                type='mmdet.Shared2FCBBoxHead',
                in_channels=embed_dims,
                fc_out_channels=1024,
                roi_feat_size=7,
                num_classes=len(class_names),
                bbox_coder=dict(
                    type='mmdet.DeltaXYWHBBoxCoder',
                    target_means=[0.0, 0.0, 0.0, 0.0],
                    target_stds=[0.1, 0.1, 0.2, 0.2]),
                reg_class_agnostic=False,
                loss_cls=dict(
                    type='mmdet.CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(
                assigner=dict(
                    type='mmdet.MaxIoUAssigner',
                    pos_iou_thr=0.5,     # small boxes: 0.7 leaves few positive anchors
                    neg_iou_thr=0.3,
                    min_pos_iou=0.3,
                    match_low_quality=True,
                    ignore_iof_thr=0.5),  # anchors on ignore regions do not count
                sampler=dict(
                    type='mmdet.RandomSampler',
                    num=256,
                    pos_fraction=0.5,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=False),
                allowed_border=-1,
                pos_weight=-1),
            rpn_proposal=dict(
                nms_pre=2000,
                max_per_img=1000,
                nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0),
            rcnn=dict(
                assigner=dict(
                    type='mmdet.MaxIoUAssigner',
                    pos_iou_thr=0.5,
                    neg_iou_thr=0.5,
                    min_pos_iou=0.5,
                    match_low_quality=False,
                    ignore_iof_thr=0.5),
                sampler=dict(
                    type='mmdet.RandomSampler',
                    num=512,
                    pos_fraction=0.25,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=True),
                pos_weight=-1)),
        test_cfg=dict(
            rpn=dict(
                nms_pre=1000,
                max_per_img=1000,
                nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0),
            # the R-CNN's test-time settings are MV2D's `detection_proposal` (model.test_cfg,
            # below): mmdet's own R-CNN test settings would never be read
            rcnn=None)),
    roi_head=dict(
        type='MV2DXrayRoIHead',
        bbox_roi_extractor=dict(
            type='mmdet.SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=embed_dims,
            featmap_strides=roi_strides),
        query_generator=dict(
            type='MV2DXrayQueryGenerator',
            in_channels=embed_dims,
            conv_out_channels=embed_dims,
            fc_out_channels=1024,
            extra_encoding_channels=(512, embed_dims),
            depth_scale_mm=body_radius_mm),   # depth = prior depth + 200 mm * delta
        positional_encoding=dict(
            type='MV2DXrayPositionalEncoding',
            embed_dims=embed_dims,
            depth_num=64,
            depth_range=depth_range,
            position_range=point_cloud_range),
        box_correlation=dict(
            type='MV2DXrayBoxCorrelation',
            correlation_mode='topk_matched:1',
            num_depth=64,
            depth_range=depth_range),
        # ours, not MV2D's: depth prior triangulated from the relevant boxes, and one
        # query per finding (detections whose priors lie within 10 mm are merged)
        triangulate_prior=True,
        prior_outlier_mm=10.0,
        merge_dist_mm=10.0,
        bbox_head=dict(
            type='MV2DXrayCrossAttentionHead',
            num_classes=len(class_names),
            embed_dims=embed_dims,
            transformer=dict(
                type='MV2DXrayTransformer',
                num_layers=num_decoder_layers,
                embed_dims=embed_dims,
                num_heads=8,
                feedforward_channels=2048,
                dropout=0.1,
                ffn_dropout=0.1),
            bbox_coder=dict(
                type='MV2DXrayNMSFreeCoder',
                pc_range=point_cloud_range,
                num_classes=len(class_names)),
            # Loss weights of the paper: L = L_2D + 0.1 L_3D, L_3D = 0.25 L_cls + L_reg,
            # for every decoder layer: the 0.1 is `stage_loss_weights` below, 0.25 and 1.0
            # are these loss weights (the 2D losses keep mmdet's weight 1). The original
            # MV2D config had focal 2.0 and L1 0.25 instead.
            loss_cls=dict(
                type='mmdet.FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                loss_weight=0.25),
            loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0))),
    train_cfg=dict(
        detection_proposal=detection_proposal,
        complement_2d_gt=0.4,   # GT boxes the detector missed (IoU < 0.4) become queries
        rcnn=dict(
            # Hungarian matching costs mirror the 3D loss weights
            assigner=dict(
                type='MV2DXrayHungarianAssigner3D',
                match_costs=[
                    dict(type='mmdet.FocalLossCost', weight=0.25),
                    dict(type='MV2DXrayBBox3DL1Cost', weight=1.0)
                ]),
            stage_loss_weights=[0.1] * num_decoder_layers,
            # ours, not MV2D's: an unmatched query already on a finding (within its
            # radius) is a positive too; test-time NMS removes the duplicates
            extra_pos_radius=1.0)),
    test_cfg=dict(
        detection_proposal=dict(detection_proposal, max_per_img=20),
        # the 3D stage's only score threshold and cap, applied in this order: scores
        # above score_thr, duplicate suppression (nms), the best max_per_scene
        rcnn=dict(
            score_thr=0.0,
            max_per_scene=100,
            # one finding seen from several views gives several queries: keep the best
            # of those whose centres lie within 5 mm
            nms=dict(type='centre_distance', dist_thr_mm=5.0))))

# -- data -------------------------------------------------------------------------------------
dataset_type = 'MV2DXrayDataset'
data_root = 'data/lidc/'
backend_args = None

train_pipeline = [
    dict(type='LoadXrayMultiViewImages', backend_args=backend_args),
    dict(type='LoadXrayAnnotations3D'),
    dict(type='XrayPhotoMetricDistortion', prob=0.5),
    dict(
        type='XrayResizeCropFlip',
        img_scale=img_size,
        ratio_range=(0.9, 1.1),
        random_crop=True,
        flip_prob=0.5),
    dict(type='PackMV2DXrayInputs')
]
test_pipeline = [
    dict(type='LoadXrayMultiViewImages', backend_args=backend_args),
    dict(type='XrayResizeCropFlip', img_scale=img_size),
    dict(type='PackMV2DXrayInputs')
]

# Loading: worker processes read and augment the next studies while the model computes,
# and persist across epochs and validations instead of starting again each time (every
# config with workers keeps persistent_workers=True; tests/tools/test_configs.py). Batches
# go to pinned (page-locked) host memory, from which the copy to a CUDA device is faster;
# without CUDA pinning does nothing (torch warns and ignores it), so the tools turn it off
# there (tools/_common.py, `pin_memory_only_with_cuda`).
train_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='lidc_infos_train.pkl',
        num_views=num_views,
        sod_mm=sod_mm,
        image_size=img_size,
        metainfo=dict(classes=class_names),
        pipeline=train_pipeline,
        test_mode=False,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='lidc_infos_val.pkl',
        num_views=num_views,
        sod_mm=sod_mm,
        image_size=img_size,
        metainfo=dict(classes=class_names),
        pipeline=test_pipeline,
        test_mode=True,
        backend_args=backend_args))
test_dataloader = val_dataloader

# LUNA16 FROC / CPM, centre-distance AP, 3D IoU AP and the 2D stage's per-view COCO AP.
# tools/test.py writes metrics.json, and (pred_out_file='auto') predictions.json and
# dets2d.json beside it in the work dir: the inputs of tools/visualize.py.
val_evaluator = dict(
    type='XrayDet3DMetric',
    ann_file=data_root + 'lidc_infos_val.pkl',
    pred_out_file='auto')
test_evaluator = val_evaluator

# -- schedule (the paper's) -------------------------------------------------------------------
max_epochs = 24
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'base_detector.backbone': dict(lr_mult=0.25)}),
    clip_grad=dict(max_norm=35, norm_type=2))
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
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=4)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

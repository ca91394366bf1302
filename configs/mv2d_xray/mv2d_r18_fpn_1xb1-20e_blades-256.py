# The blades demo (`make demo-blades`): the blades config at the demo's size -- ResNet-18 at
# half width, 64-d features, 12 views of 256 x 256 px of smaller parts (40-60 mm spans,
# a 180 mm detector: 0.70 mm pixels, 0.35 mm at the part) -- trained on 2 CPU cores in
# minutes, the 3D stage on the frozen 2D stage (as the chest demo). This file lists only
# the differences from mv2d_r50_fpn_1xb1-24e_blades-512.py:
#
#   python -m data_converters blades --out data/demo_blades --cases 36 --image-size 256 \
#       --pixel-spacing 0.703125 --span-mm 40 60 --defect-mm 0.6 2.5 --crack-mm 1.5 6 \
#       --detectable-mm 0.6
#   python tools/train.py configs/mv2d_xray/mv2d-2d-stage_r18_fpn_1xb1-12e_blades-256.py
#   python tools/train.py configs/mv2d_xray/mv2d_r18_fpn_1xb1-20e_blades-256.py \
#       --cfg-options load_from=work_dirs/demo_blades/2d-stage/epoch_12.pth
_base_ = ['./mv2d_r50_fpn_1xb1-24e_blades-512.py']

work_dir = 'work_dirs/demo_blades'

# -- the acquisition: must match the converted data -------------------------------------------
img_size = (256, 256)

# -- model: the differences (the chest demo's) ------------------------------------------------
embed_dims = 64
backbone_channels = [32, 64, 128, 256]    # ResNet-18 at half width
detection_proposal = dict(max_per_img=10)  # per view, in training and test

model = dict(
    freeze_base_detector=True,
    base_detector=dict(
        backbone=dict(depth=18, base_channels=backbone_channels[0]),
        neck=dict(in_channels=backbone_channels, out_channels=embed_dims),
        rpn_head=dict(in_channels=embed_dims, feat_channels=embed_dims),
        roi_head=dict(
            bbox_roi_extractor=dict(out_channels=embed_dims),
            bbox_head=dict(in_channels=embed_dims, fc_out_channels=256)),
        train_cfg=dict(
            rpn_proposal=dict(nms_pre=500, max_per_img=200),
            rcnn=dict(sampler=dict(num=128))),
        test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=200))),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=embed_dims),
        query_generator=dict(
            in_channels=embed_dims,
            conv_out_channels=embed_dims,
            fc_out_channels=256,
            extra_encoding_channels=(128, embed_dims)),
        positional_encoding=dict(embed_dims=embed_dims, depth_num=32, sine_num_feats=32),
        box_correlation=dict(num_depth=32),
        bbox_head=dict(
            embed_dims=embed_dims,
            transformer=dict(embed_dims=embed_dims, num_heads=4,
                             feedforward_channels=256))),
    train_cfg=dict(detection_proposal=detection_proposal),
    test_cfg=dict(detection_proposal=detection_proposal))

# -- data -------------------------------------------------------------------------------------
data_root = 'data/demo_blades/'
backend_args = None
train_pipeline_2d = [
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
train_pipeline = [
    dict(type='LoadXrayMultiViewImages', backend_args=backend_args),
    dict(type='LoadXrayAnnotations3D'),
    dict(type='XrayResizeCropFlip', img_scale=img_size),
    dict(type='PackMV2DXrayInputs')
]
test_pipeline = [
    dict(type='LoadXrayMultiViewImages', backend_args=backend_args),
    dict(type='XrayResizeCropFlip', img_scale=img_size),
    dict(type='PackMV2DXrayInputs')
]
train_dataloader = dict(
    num_workers=2,
    dataset=dict(data_root=data_root, image_size=img_size, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=2,
    dataset=dict(data_root=data_root, image_size=img_size, pipeline=test_pipeline))
test_dataloader = dict(
    num_workers=2,
    dataset=dict(data_root=data_root, image_size=img_size, pipeline=test_pipeline))
val_evaluator = dict(ann_file=data_root + 'blades_infos_val.pkl')
test_evaluator = dict(ann_file=data_root + 'blades_infos_test.pkl')

# -- schedule: the chest demo's --------------------------------------------------------------
max_epochs = 20
optim_wrapper = dict(optimizer=dict(lr=1e-3))
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

default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=5, max_keep_ckpts=1, save_last=True))
log_processor = dict(window_size=10)

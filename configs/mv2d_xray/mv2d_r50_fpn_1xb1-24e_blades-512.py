# MV2D on cast turbine-blade-like parts (python -m data_converters blades): 12 views of
# 512 x 512 px on a turntable, three defect classes. The paper config with the blades'
# acquisition and classes; this file lists only the differences.
#
#   python -m data_converters blades --out data/blades --cases 400
#   python tools/train.py configs/mv2d_xray/mv2d-2d-stage_r50_fpn_1xb1-12e_blades-512.py
#   python tools/train.py configs/mv2d_xray/mv2d_r50_fpn_1xb1-24e_blades-512.py \
#       --cfg-options load_from=work_dirs/mv2d-2d-stage_r50_fpn_1xb1-12e_blades-512/epoch_12.pth
#   python tools/test.py configs/mv2d_xray/mv2d_r50_fpn_1xb1-24e_blades-512.py \
#       work_dirs/mv2d_r50_fpn_1xb1-24e_blades-512/epoch_24.pth
_base_ = ['./mv2d_r50_fpn_1xb1-24e_lidc-1024.py']

# -- the acquisition: must match the converted data (the blades source's defaults) -----------
num_views = 12               # a turntable, 30 degrees apart
img_size = (512, 512)        # (H, W); 0.78 mm detector pixels, 0.39 mm at the part
sod_mm = 400.0               # source -> turntable axis
class_names = ['pore', 'inclusion', 'crack']
# Parts reach at most ~100 mm from the axis (a 120 mm span with its root is ~156 mm tall):
# the camera depth of anything relevant is sod_mm -+ 100 mm, box centres lie in +-100 mm.
body_radius_mm = 100.0
depth_range = (sod_mm - body_radius_mm, sod_mm + body_radius_mm)
point_cloud_range = [-100.0, -100.0, -100.0, 100.0, 100.0, 100.0]

# The grey values the model is trained on (tools/infer.py refuses studies outside them):
# 16-bit PNGs of L = -log(I / I0) * 65535 / 12 (the blades source).
image_intensity = dict(low=0, high=65535, bit_depth=16,
                       description='16-bit PNG of -log(I/I0) * 65535 / 12 (the blades source)')

# -- model: the differences -------------------------------------------------------------------
model = dict(
    # 16-bit images on the 0..255 grey scale (the loader's 255 / 65535): bright parts on
    # a black background, measured on the blades demo's training views
    data_preprocessor=dict(mean=[5.0, 5.0, 5.0], std=[19.0, 19.0, 19.0]),
    base_detector=dict(roi_head=dict(bbox_head=dict(num_classes=len(class_names)))),
    roi_head=dict(
        query_generator=dict(depth_scale_mm=body_radius_mm),
        positional_encoding=dict(depth_range=depth_range, position_range=point_cloud_range),
        box_correlation=dict(depth_range=depth_range),
        # defects lie a few mm apart: merge and suppress within 2 mm, not 10 / 5 mm
        prior_outlier_mm=3.0,
        merge_dist_mm=2.0,
        bbox_head=dict(
            num_classes=len(class_names),
            bbox_coder=dict(pc_range=point_cloud_range, num_classes=len(class_names)))),
    test_cfg=dict(rcnn=dict(nms=dict(dist_thr_mm=2.0))))

# -- data -------------------------------------------------------------------------------------
data_root = 'data/blades/'
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
train_dataloader = dict(
    dataset=dict(data_root=data_root, ann_file='blades_infos_train.pkl', num_views=num_views,
                 sod_mm=sod_mm, image_size=img_size, metainfo=dict(classes=class_names),
                 pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(data_root=data_root, ann_file='blades_infos_val.pkl', num_views=num_views,
                 sod_mm=sod_mm, image_size=img_size, metainfo=dict(classes=class_names),
                 pipeline=test_pipeline))
# tools/test.py scores the held-out test parts; validation during training reads val
test_dataloader = dict(
    dataset=dict(data_root=data_root, ann_file='blades_infos_test.pkl', num_views=num_views,
                 sod_mm=sod_mm, image_size=img_size, metainfo=dict(classes=class_names),
                 pipeline=test_pipeline))
val_evaluator = dict(ann_file=data_root + 'blades_infos_val.pkl')
test_evaluator = dict(ann_file=data_root + 'blades_infos_test.pkl')

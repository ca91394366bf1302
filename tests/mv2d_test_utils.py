"""Helpers for the MV2D model tests: a tiny model config and synthetic multi-view
scenes built with :class:`XrayGeometry` (random images, GT boxes projected with
``project_boxes3d``), packed like the dataset's pipeline packs real cases."""
import copy
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
from mmengine.structures import InstanceData

from projects.mv2d_xray.core.geometry import XrayGeometry, project_boxes3d

#: Test geometry: 64 px images of 6.25 mm pixels (f = 96 px): a 20 mm nodule at the
#: isocentre is ~6 px wide; the isocentre field of view is +-100 mm.
IMAGE_SIZE = (64, 64)
PIXEL_SPACING_MM = 6.25
SOD_MM = 300.0
BODY_RADIUS_MM = 150.0
PC_RANGE = [-150.0, -150.0, -150.0, 150.0, 150.0, 150.0]
DEPTH_RANGE = (SOD_MM - BODY_RADIUS_MM, SOD_MM + BODY_RADIUS_MM)
EMBED_DIMS = 16


def make_geometry(num_views: int, image_size: Tuple[int, int] = IMAGE_SIZE,
                  pixel_spacing_mm: float = PIXEL_SPACING_MM) -> XrayGeometry:
    """The acquisition used by the model tests."""
    return XrayGeometry(num_views=num_views, sod_mm=SOD_MM, sdd_mm=2 * SOD_MM,
                        image_size=image_size, pixel_spacing_mm=pixel_spacing_mm)


def tiny_mv2d_config(num_layers: int = 6) -> dict:
    """A small MV2DXray model config (ResNet-18 at 8 base channels, 16-d embeddings,
    2 heads): same structure and settings as the real config, tiny sizes."""
    dims = EMBED_DIMS
    strides = [4, 8, 16, 32]
    det_proposal = dict(
        score_thr=0.05, nms=dict(type='nms', iou_threshold=0.6,
                                 class_agnostic=True),
        max_per_img=5, min_bbox_size=2)
    base_detector = dict(
        type='MV2DXrayTwoStage2D',
        backbone=dict(
            type='mmdet.ResNet', depth=18, base_channels=8, num_stages=4,
            out_indices=(0, 1, 2, 3), frozen_stages=-1,
            norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False,
            style='pytorch', init_cfg=None),
        neck=dict(type='mmdet.FPN', in_channels=[8, 16, 32, 64],
                  out_channels=dims, num_outs=4),
        rpn_head=dict(
            type='mmdet.RPNHead', in_channels=dims, feat_channels=dims,
            anchor_generator=dict(type='mmdet.AnchorGenerator', scales=[2],
                                  ratios=[0.5, 1.0, 2.0], strides=strides),
            bbox_coder=dict(type='mmdet.DeltaXYWHBBoxCoder',
                            target_means=[0., 0., 0., 0.],
                            target_stds=[1.0, 1.0, 1.0, 1.0]),
            loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True,
                          loss_weight=1.0),
            loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0)),
        roi_head=dict(
            type='mmdet.StandardRoIHead',
            bbox_roi_extractor=dict(
                type='mmdet.SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                out_channels=dims, featmap_strides=strides),
            bbox_head=dict(
                type='mmdet.Shared2FCBBoxHead', in_channels=dims,
                fc_out_channels=32, roi_feat_size=7, num_classes=1,
                bbox_coder=dict(type='mmdet.DeltaXYWHBBoxCoder',
                                target_means=[0., 0., 0., 0.],
                                target_stds=[0.1, 0.1, 0.2, 0.2]),
                reg_class_agnostic=False,
                loss_cls=dict(type='mmdet.CrossEntropyLoss',
                              use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(
                assigner=dict(type='mmdet.MaxIoUAssigner', pos_iou_thr=0.5,
                              neg_iou_thr=0.3, min_pos_iou=0.3,
                              match_low_quality=True, ignore_iof_thr=-1),
                sampler=dict(type='mmdet.RandomSampler', num=64,
                             pos_fraction=0.5, neg_pos_ub=-1,
                             add_gt_as_proposals=False),
                allowed_border=-1, pos_weight=-1),
            rpn_proposal=dict(nms_pre=200, max_per_img=50,
                              nms=dict(type='nms', iou_threshold=0.7),
                              min_bbox_size=0),
            rcnn=dict(
                assigner=dict(type='mmdet.MaxIoUAssigner', pos_iou_thr=0.5,
                              neg_iou_thr=0.5, min_pos_iou=0.5,
                              match_low_quality=False, ignore_iof_thr=-1),
                sampler=dict(type='mmdet.RandomSampler', num=64,
                             pos_fraction=0.25, neg_pos_ub=-1,
                             add_gt_as_proposals=True),
                pos_weight=-1)),
        test_cfg=dict(
            rpn=dict(nms_pre=200, max_per_img=50,
                     nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
            rcnn=None))   # MV2D's detection_proposal replaces it
    roi_head = dict(
        type='MV2DXrayRoIHead',
        bbox_roi_extractor=dict(
            type='mmdet.SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=dims, featmap_strides=strides),
        query_generator=dict(
            type='MV2DXrayQueryGenerator', in_channels=dims,
            conv_out_channels=dims, fc_out_channels=32,
            extra_encoding_channels=(32, dims), depth_scale_mm=BODY_RADIUS_MM),
        positional_encoding=dict(
            type='MV2DXrayPositionalEncoding', embed_dims=dims, depth_num=8,
            depth_range=DEPTH_RANGE, position_range=PC_RANGE, sine_num_feats=8),
        box_correlation=dict(
            type='MV2DXrayBoxCorrelation', correlation_mode='topk_matched:1',
            num_depth=16, depth_range=DEPTH_RANGE),
        merge_dist_mm=10.0,
        bbox_head=dict(
            type='MV2DXrayCrossAttentionHead', num_classes=1, embed_dims=dims,
            transformer=dict(type='MV2DXrayTransformer', num_layers=num_layers,
                             embed_dims=dims, num_heads=2,
                             feedforward_channels=32),
            bbox_coder=dict(type='MV2DXrayNMSFreeCoder', pc_range=PC_RANGE)))
    return dict(
        type='MV2DXray',
        data_preprocessor=dict(
            type='Det3DDataPreprocessor', mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375], bgr_to_rgb=False, pad_size_divisor=32),
        base_detector=base_detector,
        roi_head=roi_head,
        train_cfg=dict(
            detection_proposal=copy.deepcopy(det_proposal),
            complement_2d_gt=0.4,
            rcnn=dict(
                assigner=dict(
                    type='MV2DXrayHungarianAssigner3D',
                    match_costs=[
                        dict(type='mmdet.FocalLossCost', weight=2.0),
                        dict(type='MV2DXrayBBox3DL1Cost', weight=0.25)
                    ]),
                stage_loss_weights=[0.1] * num_layers)),
        test_cfg=dict(
            detection_proposal=copy.deepcopy(det_proposal),
            rcnn=dict(score_thr=0.0, max_per_scene=50,
                      nms=dict(type='centre_distance', dist_thr_mm=10.0))))


def random_boxes3d(rng: np.random.Generator, num: int,
                   extent_mm: float = 60.0) -> np.ndarray:
    """``(num, 7)`` axis-aligned ct boxes: centres within ``+-extent_mm``, extents
    15-30 mm, yaw 0."""
    centres = rng.uniform(-extent_mm, extent_mm, size=(num, 3))
    dims = rng.uniform(15.0, 30.0, size=(num, 3))
    return np.concatenate([centres, dims, np.zeros((num, 1))], axis=1)


def make_scene(geometry: XrayGeometry, boxes3d: np.ndarray,
               rng: np.random.Generator,
               token: str = 'synthetic-0') -> Tuple[torch.Tensor, Det3DDataSample]:
    """A synthetic case packed as the dataset pipeline packs it.

    Args:
        geometry (XrayGeometry): The acquisition.
        boxes3d (np.ndarray): ``(M, 7)`` GT boxes (gravity centres, ct mm).
        rng (np.random.Generator): Image noise.
        token (str): Case id.

    Returns:
        tuple: ``img`` ``(V, 3, H, W)`` float 0..255 (noise with bright GT boxes)
        and its :class:`Det3DDataSample`.
    """
    num_views = geometry.num_views
    height, width = geometry.image_size
    mats = geometry.view_matrices()
    img = rng.uniform(0, 60, size=(num_views, 3, height, width)).astype(np.float32)
    boxes2d = project_boxes3d(mats['lidar2img'], boxes3d)            # (V, M, 4)
    bboxes, view_ids, instance_ids = [], [], []
    for view in range(num_views):
        for k, box in enumerate(boxes2d[view]):
            box = np.clip(box, 0, [width, height, width, height])
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                continue
            x1, y1, x2, y2 = box
            img[view, :, int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] += 150
            bboxes.append(box)
            view_ids.append(view)
            instance_ids.append(k)
    sample = Det3DDataSample(metainfo=dict(
        token=token, sample_idx=0, num_views=num_views,
        lidar2img=mats['lidar2img'], cam2img=mats['cam2img'],
        lidar2cam=mats['lidar2cam'], img_shape=(height, width),
        ori_shape=(height, width), box_type_3d=LiDARInstance3DBoxes))
    sample.gt_instances_3d = InstanceData(
        bboxes_3d=LiDARInstance3DBoxes(
            torch.as_tensor(boxes3d, dtype=torch.float32).reshape(-1, 7),
            origin=(0.5, 0.5, 0.5)),
        labels_3d=torch.zeros(len(boxes3d), dtype=torch.long))
    sample.gt_instances = InstanceData(
        bboxes=torch.as_tensor(np.array(bboxes, np.float32).reshape(-1, 4)),
        labels=torch.zeros(len(bboxes), dtype=torch.long),
        view_ids=torch.as_tensor(view_ids, dtype=torch.long),
        instance_ids_3d=torch.as_tensor(instance_ids, dtype=torch.long))
    sample.ignored_instances = InstanceData(
        bboxes=torch.zeros((0, 4)), labels=torch.zeros((0, ), dtype=torch.long),
        view_ids=torch.zeros((0, ), dtype=torch.long))
    return torch.from_numpy(img), sample


def make_batch(num_views: int, num_boxes: Sequence[int], seed: int = 0,
               geometry: Optional[XrayGeometry] = None) -> dict:
    """A batch of synthetic scenes in the data-loader's format (``inputs.img`` list
    of ``(V, 3, H, W)``, ``data_samples``), before the data preprocessor."""
    rng = np.random.default_rng(seed)
    geometry = geometry or make_geometry(num_views)
    imgs: List[torch.Tensor] = []
    samples: List[Det3DDataSample] = []
    for i, num in enumerate(num_boxes):
        img, sample = make_scene(geometry, random_boxes3d(rng, num), rng,
                                 token=f'synthetic-{i}')
        imgs.append(img)
        samples.append(sample)
    return dict(inputs=dict(img=imgs), data_samples=samples)

"""MV2DXrayDataset and the pipeline on the converter's demo dataset (``demo_dataset``)."""
import json
import os.path as osp

import mmengine
import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope

from projects.mv2d_xray.core.geometry import project_boxes3d, transform_boxes2d
from projects.mv2d_xray.mv2d_xray.datasets import (LoadXrayAnnotations3D, LoadXrayMultiViewImages,
                                                   MV2DXrayDataset, XrayResizeCropFlip)

init_default_scope('mmdet3d')

IMG_SCALE = (64, 80)


def boxes_array(boxes_3d):
    return np.concatenate([boxes_3d.gravity_center.numpy(), boxes_3d.dims.numpy(),
                           np.zeros((len(boxes_3d), 1))], axis=1).astype(np.float64)


def iou(a, b):
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


@pytest.mark.parametrize('split', ['train', 'val'])
def test_reads_the_demo_pickles(demo_dataset, split):
    ann_file = getattr(demo_dataset, f'{split}_pkl')
    raw = mmengine.load(ann_file)
    dataset = MV2DXrayDataset(data_root=demo_dataset.root, ann_file=osp.basename(ann_file),
                              num_views=demo_dataset.geometry.num_views)
    assert dataset.metainfo['classes'] == tuple(raw['metainfo']['classes'])
    assert [dataset.get_data_info(i)['token'] for i in range(len(dataset))] == \
        demo_dataset.tokens[split]
    # the 2D boxes are the COCO file's, by image file and instance
    coco = json.load(open(getattr(demo_dataset, f'{split}_coco')))
    images = {img['id']: img for img in coco['images']}
    coco_boxes = {}
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        key = (images[ann['image_id']]['file_name'], ann['instance_id'], ann['iscrowd'])
        coco_boxes[key] = [x, y, x + w, y + h]
    for idx, case in enumerate(raw['data_list']):
        info = dataset.get_data_info(idx)
        ann = info['ann_info']
        flags = np.array([inst['ignore_flag'] for inst in case['instances']], int)
        assert len(ann['gt_bboxes_3d']) == (flags == 0).sum()
        assert len(ann['ignore_bboxes_3d']) == (flags == 1).sum()
        gt_ids = np.flatnonzero(flags == 0)             # pickle index of each finding
        for box, view, inst in zip(ann['gt_bboxes'], ann['gt_bboxes_view_ids'],
                                   ann['gt_bboxes_instance_ids_3d']):
            name = info['view_names'][view]
            key = (case['images'][name]['img_path'], int(gt_ids[inst]), 0)
            np.testing.assert_allclose(box, coco_boxes.pop(key), atol=1e-3)
    assert not [k for k in coco_boxes if k[2] == 0]      # every COCO GT box was found


def test_demo_negative_case_is_kept(demo_dataset, tmp_path):
    """A case without findings (as the converter writes it) stays in the training set and
    packs empty ground truth."""
    raw = mmengine.load(demo_dataset.train_pkl)
    case = raw['data_list'][0]
    case['instances'], case['cam_instances'] = [], {name: [] for name in case['images']}
    ann_file = str(tmp_path / 'negative_infos_train.pkl')
    mmengine.dump(raw, ann_file)
    pipeline = [dict(type='LoadXrayMultiViewImages'), dict(type='LoadXrayAnnotations3D'),
                dict(type='XrayResizeCropFlip', img_scale=IMG_SCALE),
                dict(type='PackMV2DXrayInputs')]
    dataset = MV2DXrayDataset(data_root=demo_dataset.root, ann_file=ann_file,
                              pipeline=pipeline)
    assert len(dataset) == len(raw['data_list'])
    packed = dataset[0]
    assert packed['inputs']['img'].shape == (10, 3) + IMG_SCALE
    sample = packed['data_samples']
    assert sample.gt_instances_3d.bboxes_3d.tensor.shape == (0, 7)
    assert sample.gt_instances.bboxes.shape == (0, 4)
    assert sample.gt_instances.view_ids.dtype == torch.int64


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_demo_2d_boxes_line_up_with_projected_3d_boxes_after_augmentation(demo_dataset,
                                                                          seed):
    """The converter's 2D boxes are the tight boxes of the findings' projected voxels, so
    they lie inside the projected 3D boxes; after a random resize / crop / flip per view
    they must still lie inside the projections with the augmented matrices, keep the same
    overlap with them, and be exactly the mapped-and-clipped original boxes."""
    np.random.seed(seed)
    dataset = MV2DXrayDataset(data_root=demo_dataset.root,
                              ann_file=osp.basename(demo_dataset.train_pkl))
    aug = XrayResizeCropFlip(img_scale=IMG_SCALE, ratio_range=(0.7, 1.4), random_crop=True,
                             flip_prob=0.5)
    checked = 0
    for idx in range(len(dataset)):
        results = LoadXrayAnnotations3D()(LoadXrayMultiViewImages()(
            dataset.get_data_info(idx)))
        before = {key: results[key].copy() for key in (
            'gt_bboxes', 'gt_bboxes_view_ids', 'gt_bboxes_instance_ids_3d', 'lidar2img')}
        results = aug(results)
        boxes_3d = boxes_array(results['gt_bboxes_3d'])
        height, width = IMG_SCALE
        expected_after = {}
        for box, view, inst in zip(before['gt_bboxes'], before['gt_bboxes_view_ids'],
                                   before['gt_bboxes_instance_ids_3d']):
            moved = transform_boxes2d(results['img_aug_matrix'][view], box.astype(float))
            expected_after[(view, inst)] = np.clip(moved, 0, [width, height] * 2)
            projected = project_boxes3d(before['lidar2img'][view], boxes_3d[inst:inst + 1])[0]
            expected_after[(view, inst, 'iou')] = iou(box, projected)
        for box, view, inst in zip(results['gt_bboxes'], results['gt_bboxes_view_ids'],
                                   results['gt_bboxes_instance_ids_3d']):
            np.testing.assert_allclose(box, expected_after[(view, inst)], atol=1e-3)
            projected = project_boxes3d(results['lidar2img'][view], boxes_3d[inst:inst + 1])[0]
            projected = np.clip(projected, 0, [width, height] * 2)
            assert np.all(box[:2] >= projected[:2] - 0.05)
            assert np.all(box[2:] <= projected[2:] + 0.05)
            inside = box[0] > 0 and box[1] > 0 and box[2] < width and box[3] < height
            if inside and np.all(projected[:2] > 0) and np.all(projected[2:] < [width, height]):
                assert iou(box, projected) == pytest.approx(
                    expected_after[(view, inst, 'iou')], abs=1e-3)
                assert iou(box, projected) > 0.3
                checked += 1
    assert checked > 20


def test_demo_full_pipeline_test_mode(demo_dataset):
    pipeline = [dict(type='LoadXrayMultiViewImages'),
                dict(type='XrayResizeCropFlip', img_scale=IMG_SCALE),
                dict(type='PackMV2DXrayInputs')]
    dataset = MV2DXrayDataset(data_root=demo_dataset.root,
                              ann_file=osp.basename(demo_dataset.val_pkl), test_mode=True,
                              pipeline=pipeline)
    packed = dataset[0]
    img = packed['inputs']['img']
    assert img.shape == (10, 3) + IMG_SCALE and img.dtype == torch.float32
    assert torch.equal(img[:, 0], img[:, 2])             # grey replicated
    sample = packed['data_samples']
    assert sample.token == demo_dataset.tokens['val'][0]
    assert sample.ori_shape == demo_dataset.geometry.image_size
    assert sample.lidar2img.shape == (10, 4, 4)
    assert sample.eval_ann_info['token'] == sample.token
    assert len(sample.eval_ann_info['gt_bboxes_3d']) >= 1

"""The converter's outputs follow README "Data format" and load with mmengine / pycocotools
(checked on the session's demo dataset)."""
import os.path as osp

import numpy as np
import pytest

from data_converters.sources.lidc_annotations import NODULE_CLASSES
from projects.mv2d_xray.core.data_format import FORMAT_VERSION
from projects.mv2d_xray.core.geometry import XrayGeometry

INFO_KEYS = {'sample_idx', 'token', 'patient_id', 'source', 'ct', 'images', 'instances',
             'cam_instances'}
IMAGE_KEYS = {'img_path', 'height', 'width', 'theta_rad', 'cam2img', 'lidar2cam', 'lidar2img'}
INSTANCE_KEYS = {'bbox_3d', 'bbox_label_3d', 'ignore_flag', 'nodule_id', 'num_readers',
                 'diameter_mm', 'volume_mm3', 'characteristics'}
CHARACTERISTICS = {'subtlety', 'internalStructure', 'calcification', 'sphericity', 'margin',
                   'lobulation', 'spiculation', 'texture', 'malignancy'}


@pytest.fixture(scope='module')
def splits(demo_dataset):
    import mmengine
    return {'train': mmengine.load(demo_dataset.train_pkl),
            'val': mmengine.load(demo_dataset.val_pkl)}


def test_metainfo(splits, demo_dataset):
    for data in splits.values():
        meta = data['metainfo']
        assert meta['dataset'] == 'mv2d-xray' and meta['info_version'] == '2.0'
        assert meta['format_version'] == FORMAT_VERSION and isinstance(FORMAT_VERSION, int)
        assert tuple(meta['classes']) == NODULE_CLASSES == ('nodule',)
        assert meta['categories'] == {'nodule': 0}
        assert XrayGeometry.from_metainfo(meta['geometry']) == demo_dataset.geometry
        geo = meta['geometry']
        assert geo['world_frame'] == 'ct' and geo['units'] == 'mm'
        assert len(geo['view_names']) == len(geo['angles_rad']) == geo['num_views'] == 10
        conv = meta['converter']
        assert conv['source'] == 'demo' and conv['label_rule']['min_readers'] == 3
        assert conv['split']['cases'] == {k: len(v['data_list']) for k, v in splits.items()}


def test_data_list_layout(splits, demo_dataset):
    geometry = demo_dataset.geometry
    mats = geometry.view_matrices()
    for data in splits.values():
        for idx, info in enumerate(data['data_list']):
            assert INFO_KEYS <= set(info) and info['sample_idx'] == idx
            assert info['source'] in ('lidc', 'synthetic')
            assert set(info['ct']) == {'shape', 'spacing_mm', 'series_uid'}
            assert list(info['images']) == list(geometry.view_names)
            for view, (name, img) in enumerate(info['images'].items()):
                assert set(img) == IMAGE_KEYS
                assert img['img_path'] == f'images/{info["token"]}/{name}.png'
                assert osp.isfile(osp.join(demo_dataset.root, img['img_path']))
                for key in ('cam2img', 'lidar2cam', 'lidar2img'):
                    assert isinstance(img[key], list) and len(img[key]) == 4
                    np.testing.assert_allclose(img[key], mats[key][view], atol=1e-12)
                np.testing.assert_allclose(
                    img['lidar2img'], np.array(img['cam2img']) @ np.array(img['lidar2cam']),
                    atol=1e-9)
            for inst in info['instances']:
                assert INSTANCE_KEYS <= set(inst)
                assert len(inst['bbox_3d']) == 7 and inst['bbox_3d'][6] == 0.0
                assert min(inst['bbox_3d'][3:6]) > 0
                assert inst['ignore_flag'] in (0, 1) and inst['bbox_label_3d'] == 0
                assert set(inst['characteristics']) == CHARACTERISTICS
            assert set(info['cam_instances']) == set(info['images'])
            height, width = geometry.image_size
            for boxes in info['cam_instances'].values():
                for box in boxes:
                    x1, y1, x2, y2 = box['bbox']
                    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
                    inst = info['instances'][box['instance_id']]
                    assert box['ignore_flag'] == inst['ignore_flag']
                    assert box['bbox_label'] == inst['bbox_label_3d']


def test_images_are_grey_pngs(splits, demo_dataset):
    import cv2
    info = splits['val']['data_list'][0]
    for img in info['images'].values():
        pixels = cv2.imread(osp.join(demo_dataset.root, img['img_path']),
                            cv2.IMREAD_UNCHANGED)
        assert pixels.dtype == np.uint8 and pixels.shape == (img['height'], img['width'])
        assert pixels.max() > 100 and pixels.min() < 50       # a body on a dark background


def test_coco_files_match_pickles(splits, demo_dataset):
    from pycocotools.coco import COCO
    for split, path in (('train', demo_dataset.train_coco), ('val', demo_dataset.val_coco)):
        coco = COCO(path)
        data_list = splits[split]['data_list']
        assert len(coco.getImgIds()) == 10 * len(data_list)
        assert coco.loadCats(coco.getCatIds()) == [{'id': 1, 'name': 'nodule'}]
        expected = []
        for info in data_list:
            for view, boxes in info['cam_instances'].items():
                for box in boxes:
                    expected.append((info['token'], view, tuple(box['bbox']),
                                     box['ignore_flag'], box['instance_id']))
        found = []
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.loadImgs(ann['image_id'])[0]
            x, y, w, h = ann['bbox']
            assert ann['category_id'] == 1 and ann['area'] == pytest.approx(w * h)
            info = {i['token']: i for i in data_list}[img['token']]
            inst = info['instances'][ann['instance_id']]
            assert ann['bbox_3d'] == inst['bbox_3d'] and ann['nodule_id'] == inst['nodule_id']
            assert img['file_name'] == info['images'][img['view']]['img_path']
            assert img['lidar2img'] == info['images'][img['view']]['lidar2img']
            found.append((img['token'], img['view'], (x, y, x + w, y + h), ann['iscrowd'],
                          ann['instance_id']))
        assert len(found) == len(expected)
        for a, b in zip(sorted(found), sorted(expected)):
            assert a[:2] == b[:2] and a[3:] == b[3:]
            np.testing.assert_allclose(a[2], b[2], atol=1e-9)


def test_split_by_patient(splits):
    train = {i['patient_id'] for i in splits['train']['data_list']}
    val = {i['patient_id'] for i in splits['val']['data_list']}
    assert not train & val and 'LIDC-IDRI-0001' in val
    assert all(i['source'] == 'synthetic' for i in splits['train']['data_list'])

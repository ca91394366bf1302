"""MV2DXrayDataset: reading the info pickles, ground-truth split, checks on bad input, and
the full pipeline up to the model's data preprocessor."""
import os
import os.path as osp
import re

import mmengine
import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from xray_fake_data import DEFAULT_CASES, write_fake_dataset

from projects.mv2d_xray.core.geometry import project_boxes3d
from projects.mv2d_xray.mv2d_xray.datasets import MV2DXrayDataset

init_default_scope('mmdet3d')

TRAIN_PIPELINE = [
    dict(type='LoadXrayMultiViewImages'),
    dict(type='LoadXrayAnnotations3D'),
    dict(type='XrayPhotoMetricDistortion'),
    dict(type='XrayResizeCropFlip', img_scale=(40, 56), ratio_range=(0.9, 1.2),
         random_crop=True, flip_prob=0.5),
    dict(type='PackMV2DXrayInputs'),
]
TEST_PIPELINE = [
    dict(type='LoadXrayMultiViewImages'),
    dict(type='XrayResizeCropFlip', img_scale=(40, 56)),
    dict(type='PackMV2DXrayInputs'),
]


def build(root, ann_file, **kwargs):
    kwargs.setdefault('pipeline', [])
    return MV2DXrayDataset(data_root=str(root), ann_file=ann_file, **kwargs)


@pytest.fixture(scope='module')
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('fake_xray')
    write_fake_dataset(str(root), split='train')
    return root


def test_reads_cases_views_and_matrices(fake_root):
    dataset = build(fake_root, 'fake_infos_train.pkl')
    assert len(dataset) == len(DEFAULT_CASES)           # the negative case is kept
    raw = mmengine.load(osp.join(fake_root, 'fake_infos_train.pkl'))
    for idx, raw_case in enumerate(raw['data_list']):
        info = dataset.get_data_info(idx)
        assert info['token'] == raw_case['token']
        assert info['num_views'] == 3 and info['view_names'] == ['VIEW_00', 'VIEW_01',
                                                                  'VIEW_02']
        for view, name in enumerate(info['view_names']):
            assert info['img_path'][view] == osp.join(str(fake_root),
                                                      raw_case['images'][name]['img_path'])
            for key in ('cam2img', 'lidar2cam', 'lidar2img'):
                assert info[key].shape == (3, 4, 4) and info[key].dtype == np.float64
                np.testing.assert_array_equal(info[key][view],
                                              raw_case['images'][name][key])
    assert dataset.metainfo['num_views'] == 3
    assert dataset.metainfo['geometry']['sod_mm'] == 300.0


def test_ground_truth_split_and_2d_links(fake_root):
    dataset = build(fake_root, 'fake_infos_train.pkl')
    ann = dataset.get_data_info(0)['ann_info']
    # case 0: findings 0 and 2 are ground truth, finding 1 is an ignore region
    findings = [DEFAULT_CASES[0][i] for i in (0, 2)]
    np.testing.assert_allclose(ann['gt_bboxes_3d'].gravity_center.numpy(),
                               [f['centre'] for f in findings], atol=1e-5)
    np.testing.assert_allclose(ann['gt_bboxes_3d'].dims.numpy(),
                               [f['size'] for f in findings], atol=1e-5)
    assert ann['gt_labels_3d'].dtype == np.int64 and ann['gt_labels_3d'].tolist() == [0, 0]
    np.testing.assert_allclose(ann['ignore_bboxes_3d'].gravity_center.numpy(),
                               [DEFAULT_CASES[0][1]['centre']], atol=1e-5)
    np.testing.assert_allclose(ann['gt_diameters_mm'], [np.mean(f['size']) for f in findings])
    # every finding is inside every view: 2 x 3 boxes, each the projection of its 3D box
    assert sorted(zip(ann['gt_bboxes_view_ids'], ann['gt_bboxes_instance_ids_3d'])) == \
        [(v, i) for v in range(3) for i in range(2)]
    lidar2img = dataset.get_data_info(0)['lidar2img']
    boxes_3d = ann['gt_bboxes_3d']
    array_3d = np.concatenate([boxes_3d.gravity_center.numpy(), boxes_3d.dims.numpy(),
                               np.zeros((len(boxes_3d), 1))], axis=1)
    expected = project_boxes3d(lidar2img[ann['gt_bboxes_view_ids']],
                               array_3d[ann['gt_bboxes_instance_ids_3d'], None])[:, 0]
    np.testing.assert_allclose(ann['gt_bboxes'], expected, atol=1e-3)
    assert ann['ignore_bboxes'].shape == (3, 4)
    assert ann['ignore_bboxes_view_ids'].tolist() == [0, 1, 2]
    # the negative case: empty arrays of the right shapes
    empty = dataset.get_data_info(1)['ann_info']
    assert len(empty['gt_bboxes_3d']) == 0 and empty['gt_bboxes_3d'].tensor.shape == (0, 7)
    assert empty['gt_bboxes'].shape == (0, 4) and empty['gt_bboxes'].dtype == np.float32
    assert empty['gt_bboxes_instance_ids_3d'].dtype == np.int64


def test_a_box_flagged_in_one_view_is_ignored_there_only(tmp_path):
    ann_file = write_fake_dataset(str(tmp_path), split='train')
    path = osp.join(tmp_path, ann_file)
    raw = mmengine.load(path)
    case = raw['data_list'][0]
    (box,) = [b for b in case['cam_instances']['VIEW_01'] if b['instance_id'] == 0]
    box['ignore_flag'] = 1                       # finding 0 does not show in view 1
    mmengine.dump(raw, path)
    ann = build(tmp_path, ann_file).get_data_info(0)['ann_info']
    # finding 0 stays a finding in 3D and in views 0 and 2; view 1's box joins the ignore
    # region's three boxes
    assert len(ann['gt_bboxes_3d']) == 2
    assert sorted(zip(ann['gt_bboxes_view_ids'], ann['gt_bboxes_instance_ids_3d'])) == \
        [(0, 0), (0, 1), (1, 1), (2, 0), (2, 1)]
    assert sorted(ann['ignore_bboxes_view_ids'].tolist()) == [0, 1, 1, 2]
    flagged = ann['ignore_bboxes'][ann['ignore_bboxes_view_ids'] == 1]
    assert any(np.allclose(b, box['bbox'], atol=1e-4) for b in flagged)


def test_classes_come_from_metainfo_and_can_be_selected(tmp_path):
    cases = [[dict(centre=(0, 0, 0), size=(8, 8, 8), label=1, ignore=0),
              dict(centre=(10, 0, 0), size=(8, 8, 8), label=0, ignore=0)]]
    ann_file = write_fake_dataset(str(tmp_path), cases=cases, classes=('nodule', 'mass'))
    dataset = build(tmp_path, ann_file)
    assert dataset.metainfo['classes'] == ('nodule', 'mass')
    assert dataset.get_data_info(0)['ann_info']['gt_labels_3d'].tolist() == [1, 0]
    only_mass = build(tmp_path, ann_file, metainfo=dict(classes=('mass',)))
    assert only_mass.metainfo['classes'] == ('mass',)
    ann = only_mass.get_data_info(0)['ann_info']
    assert ann['gt_labels_3d'].tolist() == [0]
    np.testing.assert_allclose(ann['gt_bboxes_3d'].gravity_center.numpy(), [[0, 0, 0]],
                               atol=1e-5)
    assert set(ann['gt_bboxes_labels'].tolist()) == {0}
    assert set(ann['gt_bboxes_instance_ids_3d'].tolist()) == {0}


def test_test_mode_carries_eval_annotations(fake_root):
    dataset = build(fake_root, 'fake_infos_train.pkl', test_mode=True,
                    pipeline=TEST_PIPELINE)
    sample = dataset[0]['data_samples']
    eval_ann = sample.eval_ann_info
    assert eval_ann['token'] == sample.token == 'fake-train-0000'
    assert len(eval_ann['gt_bboxes_3d']) == 2 and len(eval_ann['ignore_bboxes_3d']) == 1
    assert eval_ann['ignore_diameters_mm'].shape == (1,)


@pytest.mark.parametrize('num_views', [3, 10])
def test_pipeline_packs_model_inputs(tmp_path, num_views):
    from mmdet3d.models.data_preprocessors import Det3DDataPreprocessor
    from mmdet3d.structures import LiDARInstance3DBoxes
    ann_file = write_fake_dataset(str(tmp_path), num_views=num_views)
    dataset = build(tmp_path, ann_file, num_views=num_views, pipeline=TRAIN_PIPELINE)
    batch = [dataset[0], dataset[1]]                    # a case with findings, a negative
    for packed in batch:
        img = packed['inputs']['img']
        assert img.dtype == torch.float32 and img.shape == (num_views, 3, 40, 56)
        meta = packed['data_samples'].metainfo
        assert meta['num_views'] == num_views and len(meta['img_path']) == num_views
        for key in ('lidar2img', 'cam2img', 'lidar2cam'):
            assert meta[key].shape == (num_views, 4, 4) and meta[key].dtype == np.float64
        np.testing.assert_allclose(meta['lidar2img'], meta['cam2img'] @ meta['lidar2cam'],
                                   atol=1e-6)
        assert meta['img_shape'] == (40, 56) and meta['ori_shape'] == (48, 64)
        assert meta['box_type_3d'] is LiDARInstance3DBoxes
    gt3d, gt2d = batch[0]['data_samples'].gt_instances_3d, batch[0]['data_samples'].gt_instances
    assert isinstance(gt3d.bboxes_3d, LiDARInstance3DBoxes) and len(gt3d) == 2
    assert gt3d.labels_3d.dtype == torch.int64
    assert gt2d.bboxes.dtype == torch.float32 and gt2d.bboxes.shape[1] == 4
    assert int(gt2d.instance_ids_3d.max()) < len(gt3d)
    assert int(gt2d.view_ids.max()) < num_views
    empty = batch[1]['data_samples']
    assert empty.gt_instances_3d.bboxes_3d.tensor.shape == (0, 7)
    assert empty.gt_instances_3d.labels_3d.shape == (0,)
    for field, names in ((empty.gt_instances, ('labels', 'view_ids', 'instance_ids_3d')),
                         (empty.ignored_instances, ('labels', 'view_ids'))):
        assert field.bboxes.shape == (0, 4) and field.bboxes.dtype == torch.float32
        for name in names:
            assert field[name].shape == (0,) and field[name].dtype == torch.int64
    # the model's data preprocessor batches the views as (B, N_views, 3, H', W')
    preprocessor = Det3DDataPreprocessor(mean=[100.0] * 3, std=[50.0] * 3,
                                         bgr_to_rgb=False, pad_size_divisor=32)
    out = preprocessor(dict(inputs=dict(img=[p['inputs']['img'] for p in batch]),
                            data_samples=[p['data_samples'] for p in batch]), training=True)
    imgs = out['inputs']['imgs']
    assert imgs.shape == (2, num_views, 3, 64, 64)
    expected = (batch[0]['inputs']['img'] - 100.0) / 50.0
    torch.testing.assert_close(imgs[0, :, :, :40, :56], expected)
    assert out['data_samples'][0].batch_input_shape == (64, 64)


def test_training_keeps_negative_cases(fake_root):
    dataset = build(fake_root, 'fake_infos_train.pkl', pipeline=TRAIN_PIPELINE)
    assert dataset.prepare_data(1) is not None
    filtering = build(fake_root, 'fake_infos_train.pkl', pipeline=TRAIN_PIPELINE,
                      filter_empty_gt=True)
    assert filtering.prepare_data(1) is None


# -- bad input: one clear error naming the problem ------------------------------------------
def test_config_num_views_disagreeing_with_data(fake_root):
    with pytest.raises(ValueError, match=r'fake_infos_train\.pkl: the data was converted with '
                                         r'num_views=3, the config says num_views=10'):
        build(fake_root, 'fake_infos_train.pkl', num_views=10)


@pytest.mark.parametrize('setting, config_value, data_value', [
    ('sod_mm', 400.0, '300.0'), ('image_size', (64, 64), r'\[48, 64\]')])
def test_config_acquisition_disagreeing_with_data(fake_root, setting, config_value,
                                                  data_value):
    """A config made for another acquisition (its depth ranges derive from ``sod_mm``)
    stops with one line naming the setting and both values."""
    config_text = str(list(config_value)) if setting == 'image_size' else str(config_value)
    with pytest.raises(ValueError) as info:
        build(fake_root, 'fake_infos_train.pkl', **{setting: config_value})
    message = str(info.value)
    assert '\n' not in message
    assert re.search(rf'fake_infos_train\.pkl: the data was converted with {setting}='
                     rf'{data_value}, the config says {setting}=', message)
    assert f'the config says {setting}={config_text};' in message


def test_config_acquisition_agreeing_with_data(fake_root):
    """The same settings, as the data has them, load."""
    dataset = build(fake_root, 'fake_infos_train.pkl', num_views=3, sod_mm=300,
                    image_size=(48, 64))
    assert len(dataset) > 0 and dataset.metainfo['geometry']['sod_mm'] == 300.0


def test_config_classes_disagreeing_with_data(fake_root):
    with pytest.raises(ValueError, match=r"fake_infos_train\.pkl: the config names classes "
                                         r"\['mass'\]"):
        build(fake_root, 'fake_infos_train.pkl', metainfo=dict(classes=('nodule', 'mass')))


def test_missing_image_file(tmp_path):
    ann_file = write_fake_dataset(str(tmp_path))
    missing = osp.join(str(tmp_path), 'images', 'fake-train-0002', 'VIEW_01.png')
    os.remove(missing)
    with pytest.raises(FileNotFoundError, match=f"case 'fake-train-0002' view 'VIEW_01'.*"
                                                f'{missing}'):
        build(tmp_path, ann_file)
    # without the start-up check the loader names it
    dataset = build(tmp_path, ann_file, check_image_files=False, pipeline=TEST_PIPELINE)
    with pytest.raises(FileNotFoundError, match=missing):
        dataset.prepare_data(2)


@pytest.mark.parametrize('version', [None, -1])
def test_info_pickle_of_another_converter_version(tmp_path, version):
    ann_file = write_fake_dataset(str(tmp_path), format_version=version)
    with pytest.raises(ValueError, match=rf'fake_infos_train\.pkl: info pickle '
                                         rf'format_version {version}'):
        build(tmp_path, ann_file)


def test_case_with_views_missing(tmp_path):
    ann_file = write_fake_dataset(str(tmp_path))
    infos = mmengine.load(osp.join(str(tmp_path), ann_file))
    del infos['data_list'][2]['images']['VIEW_02']
    mmengine.dump(infos, osp.join(str(tmp_path), ann_file))
    with pytest.raises(ValueError, match="case 'fake-train-0002' has views"):
        build(tmp_path, ann_file)


@pytest.mark.parametrize('img_path', ['../../../../etc/hostname', '/etc/hostname',
                                      'images/../../other/images/x.png', '', 'LINK'])
def test_image_path_outside_the_data_root(tmp_path, img_path):
    """An info file cannot make the dataset read files outside its root: absolute paths,
    ``..`` out of it, a symbolic link pointing elsewhere (one line naming case, view and
    path), also without the start-up check of the files."""
    root = tmp_path / 'data'
    root.mkdir()
    ann_file = write_fake_dataset(str(root))
    if img_path == 'LINK':
        outside = tmp_path / 'outside.png'
        outside.write_bytes(b'x')
        os.symlink(outside, root / 'images' / 'link.png')
        img_path = 'images/link.png'
    infos = mmengine.load(osp.join(str(root), ann_file))
    infos['data_list'][1]['images']['VIEW_02']['img_path'] = img_path
    mmengine.dump(infos, osp.join(str(root), ann_file))
    for check in (True, False):
        with pytest.raises(ValueError) as err:
            build(root, ann_file, check_image_files=check)
        message = str(err.value)
        assert '\n' not in message
        assert "case 'fake-train-0001' view 'VIEW_02': image path " in message
        assert repr(img_path) in message and 'not inside the data root' in message


def test_image_paths_inside_the_data_root_are_read(tmp_path):
    """``images/../images/...`` stays inside; a data root that is itself a symbolic link
    is fine."""
    root = tmp_path / 'data'
    root.mkdir()
    ann_file = write_fake_dataset(str(root))
    infos = mmengine.load(osp.join(str(root), ann_file))
    view = infos['data_list'][0]['images']['VIEW_00']
    view['img_path'] = 'images/../' + view['img_path']
    mmengine.dump(infos, osp.join(str(root), ann_file))
    os.symlink(root, tmp_path / 'link')
    dataset = build(tmp_path / 'link', ann_file)
    assert len(dataset) == len(infos['data_list'])

"""The X-ray data pipeline: grey loading, photometric steps, geometry-aware resize / crop /
flip (projection stays exact: images, matrices and 2D boxes agree with 3D -> 2D projection)
and packing."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from xray_fake_data import write_fake_dataset

from projects.mv2d_xray.core.geometry import (image_aug_matrix, project_boxes3d, project_points,
                                              transform_boxes2d)
from projects.mv2d_xray.mv2d_xray.datasets import (LoadXrayAnnotations3D, LoadXrayMultiViewImages,
                                                   MV2DXrayDataset, PackMV2DXrayInputs,
                                                   XrayPhotoMetricDistortion, XrayResizeCropFlip)

init_default_scope('mmdet3d')

IMAGE_SIZE = (96, 128)
#: one finding per case, at different places, so each view holds one blob
BLOB_CASES = [[dict(centre=c, size=(12.0, 10.0, 8.0), label=0, ignore=0)]
              for c in ((0.0, 0.0, 0.0), (15.0, -10.0, 12.0), (-12.0, 8.0, -15.0),
                        (25.0, 20.0, 5.0))]


@pytest.fixture(scope='module')
def blob_dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('xray_blobs'))
    ann_file = write_fake_dataset(root, cases=BLOB_CASES, num_views=4, image_size=IMAGE_SIZE,
                                  sigma_px=3.0, color_views=(1,))
    return MV2DXrayDataset(data_root=root, ann_file=ann_file, pipeline=[])


def load(dataset, idx):
    """A case after loading images and annotations (no augmentation)."""
    results = dataset.get_data_info(idx)
    results = LoadXrayMultiViewImages()(results)
    return LoadXrayAnnotations3D()(results)


def gt_boxes_array(results):
    boxes = results['gt_bboxes_3d']
    return np.concatenate([boxes.gravity_center.numpy(), boxes.dims.numpy(),
                           np.zeros((len(boxes), 1))], axis=1).astype(np.float64)


# -- loading ---------------------------------------------------------------------------
def test_grey_views_become_three_identical_float_channels(blob_dataset):
    results = load(blob_dataset, 0)
    assert len(results['img']) == 4
    for view, img in enumerate(results['img']):
        assert img.shape == IMAGE_SIZE + (3,) and img.dtype == np.float32
        grey = cv2.imread(results['img_path'][view], cv2.IMREAD_UNCHANGED)
        if view == 1:                                    # saved as a 3-channel PNG
            assert grey.ndim == 3
            grey = grey[..., 0]
        for channel in range(3):
            np.testing.assert_array_equal(img[..., channel], grey)
    assert results['img_shape'] == results['ori_shape'] == IMAGE_SIZE
    np.testing.assert_array_equal(results['img_aug_matrix'], np.tile(np.eye(4), (4, 1, 1)))


def test_loading_rejects_an_image_of_the_wrong_size(blob_dataset, tmp_path):
    results = blob_dataset.get_data_info(0)
    bad = str(tmp_path / 'small.png')
    cv2.imwrite(bad, np.zeros((10, 12), np.uint8))
    results['img_path'][2] = bad
    with pytest.raises(ValueError, match=r'small\.png is 10x12 .*96x128'):
        LoadXrayMultiViewImages()(results)


# -- geometric augmentation ------------------------------------------------------------
AUG_CONFIGS = {
    'downscale': dict(img_scale=(64, 80), ratio_range=(0.8, 0.8)),
    'zoom_random_crop': dict(img_scale=(64, 80), ratio_range=(1.3, 1.6), random_crop=True),
    'pad_random_place': dict(img_scale=(64, 80), ratio_range=(0.5, 0.6), random_crop=True),
    'flip_per_view': dict(img_scale=(80, 96), ratio_range=(0.9, 1.1), random_crop=True,
                          flip_prob=0.5),
    'flip_synced': dict(img_scale=(80, 96), ratio_range=(0.7, 1.2), random_crop=True,
                        flip_prob=1.0, sync_views=True),
}


def test_image_aug_matrix_moves_projections_by_hand_computed_amounts():
    """Resize (0.5, 0.25), crop at (3, 5), flip a 40 px wide window: a ct point projecting
    to (u, v) at depth d (far from 1) lands at (40 - (0.5 u - 3), 0.25 v - 5)."""
    from projects.mv2d_xray.core.geometry import XrayGeometry, apply_image_aug
    geometry = XrayGeometry(num_views=4, image_size=(64, 80))
    points = np.array([[0.0, 0.0, 0.0], [20.0, -30.0, 10.0], [-15.0, 40.0, -25.0]])
    aug = image_aug_matrix(scale=(0.5, 0.25), crop_offset=(3, 5), flip_width=40)
    for view in range(4):
        lidar2img = geometry.lidar2img(view)
        (uv, depth) = project_points(lidar2img, points)
        assert np.all(np.abs(depth - 300) < 60)
        cam2img_aug, lidar2img_aug = apply_image_aug(aug, geometry.cam2img(), lidar2img)
        np.testing.assert_allclose(lidar2img_aug, cam2img_aug @ geometry.lidar2cam(view))
        uv_aug, depth_aug = project_points(lidar2img_aug, points)
        np.testing.assert_allclose(uv_aug[:, 0], 40 - (0.5 * uv[:, 0] - 3), atol=1e-9)
        np.testing.assert_allclose(uv_aug[:, 1], 0.25 * uv[:, 1] - 5, atol=1e-9)
        np.testing.assert_allclose(depth_aug, depth)
    box = transform_boxes2d(aug, np.array([10.0, 20.0, 30.0, 60.0]))
    np.testing.assert_allclose(box, [40 - 12, 0.25 * 20 - 5, 40 - 2, 0.25 * 60 - 5])


def blob_centroid(img, expected_uv, radius):
    """Intensity centroid ``(u, v)`` of the blob near ``expected_uv`` (continuous coords)."""
    grey = img[..., 0].astype(np.float64)
    rows, cols = np.mgrid[:grey.shape[0], :grey.shape[1]] + 0.5
    near = (cols - expected_uv[0]) ** 2 + (rows - expected_uv[1]) ** 2 < radius ** 2
    weight = np.where(near, np.clip(grey - np.median(grey[~near]), 0, None), 0.0)
    return np.array([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()


@pytest.mark.parametrize('name', sorted(AUG_CONFIGS))
def test_augmented_images_match_projection_of_3d_points(blob_dataset, name):
    """The blob drawn at a finding's projected centre is where the *augmented* lidar2img
    projects that centre, in every view; random ct points move exactly by each view's
    image affine; the matrices stay a consistent chain."""
    np.random.seed(0)
    aug = XrayResizeCropFlip(**AUG_CONFIGS[name])
    checked, matrices_seen = 0, set()
    rng = np.random.default_rng(0)
    for idx in range(len(BLOB_CASES)):
        before = load(blob_dataset, idx)
        ori_lidar2img = before['lidar2img'].copy()
        after = aug(before)
        out_h, out_w = AUG_CONFIGS[name]['img_scale']
        assert after['img_shape'] == (out_h, out_w)
        assert all(img.shape == (out_h, out_w, 3) for img in after['img'])
        np.testing.assert_allclose(after['lidar2img'], after['cam2img'] @ after['lidar2cam'],
                                   atol=1e-9)
        # random ct points move like 2D points under each view's image affine (the mapping
        # the 2D boxes get); depth is unchanged
        points = rng.uniform(-60, 60, size=(20, 3))
        uv0, depth0 = project_points(ori_lidar2img, points[None])
        uv1, depth1 = project_points(after['lidar2img'], points[None])
        affine = after['img_aug_matrix']
        for view in range(len(affine)):
            moved = transform_boxes2d(affine[view], np.tile(uv0[view], 2))
            if affine[view, 0, 0] < 0:                   # a flip re-sorts x1 <= x2
                moved[:, [0, 2]] = moved[:, [2, 0]]
            np.testing.assert_allclose(uv1[view], moved[:, :2], atol=1e-9)
        np.testing.assert_allclose(depth1, depth0)
        matrices_seen.update(tuple(np.round(a, 6).ravel()) for a in affine)
        # the image content agrees with the new matrices
        centre = np.array([BLOB_CASES[idx][0]['centre']])
        scale = np.abs(affine[:, 0, 0]).min()
        for view, img in enumerate(after['img']):
            (uv,), _ = project_points(after['lidar2img'][view], centre)
            radius = 9.0 * scale + 2
            if not (radius < uv[0] < out_w - radius and radius < uv[1] < out_h - radius):
                continue                                 # blob cut by the border
            np.testing.assert_allclose(blob_centroid(img, uv, radius), uv, atol=0.15)
            checked += 1
    assert checked >= 8
    if not AUG_CONFIGS[name].get('sync_views') and name != 'downscale':
        assert len(matrices_seen) > 4                    # views drew their own parameters


@pytest.mark.parametrize('name', sorted(AUG_CONFIGS))
def test_2d_boxes_follow_projected_3d_boxes(tmp_path, name):
    """The fake 2D boxes are projected 3D boxes; after augmentation they must equal the
    projections with the augmented matrices, clipped, with boxes that left the crop gone
    (and their labels, views and 3D ids with them)."""
    np.random.seed(1)
    ann_file = write_fake_dataset(str(tmp_path), num_views=5, image_size=(48, 64))
    dataset = MV2DXrayDataset(data_root=str(tmp_path), ann_file=ann_file, pipeline=[])
    config = dict(AUG_CONFIGS[name], img_scale=(40, 48))
    if 'zoom' in name:
        config['ratio_range'] = (2.0, 3.0)               # crops findings out of views
    aug = XrayResizeCropFlip(**config, min_box_size=1.0)
    dropped = 0
    for idx in (0, 2):
        results = aug(load(dataset, idx))
        out_h, out_w = config['img_scale']
        boxes_3d = gt_boxes_array(results)
        expected = {}
        for view in range(5):
            projected = project_boxes3d(results['lidar2img'][view], boxes_3d)
            projected = np.clip(projected, 0, [out_w, out_h, out_w, out_h])
            for inst, box in enumerate(projected):
                if min(box[2] - box[0], box[3] - box[1]) >= 1.0:
                    expected[(view, inst)] = box
                else:
                    dropped += 1
        got = {(int(v), int(i)): box for v, i, box in zip(
            results['gt_bboxes_view_ids'], results['gt_bboxes_instance_ids_3d'],
            results['gt_bboxes'])}
        assert got.keys() == expected.keys()
        for key, box in got.items():
            np.testing.assert_allclose(box, expected[key], atol=1e-3)
        assert results['gt_bboxes'].dtype == np.float32
        assert len(results['gt_bboxes_labels']) == len(results['gt_bboxes'])
        assert len(results['ignore_bboxes']) == len(results['ignore_bboxes_view_ids'])
    if 'zoom' in name:
        assert dropped > 0


def test_resize_crop_flip_validates_its_arguments():
    with pytest.raises(ValueError, match='img_scale'):
        XrayResizeCropFlip(img_scale=(0, 10))
    with pytest.raises(ValueError, match='ratio_range'):
        XrayResizeCropFlip(img_scale=(10, 10), ratio_range=(1.2, 1.0))


# -- photometric augmentation ------------------------------------------------------------
def grey_views(num_views=2, shape=(120, 160), value=128.0):
    rng = np.random.default_rng(3)
    base = np.clip(value + 20 * rng.standard_normal(shape), 0, 255).astype(np.float32)
    return [np.repeat(base[..., None], 3, axis=2).copy() for _ in range(num_views)]


def test_photometric_keeps_grey_float_range_and_views_independent():
    np.random.seed(0)
    distort = XrayPhotoMetricDistortion(prob=1.0, brightness_delta=200)
    views = grey_views()
    out = distort(dict(img=[v.copy() for v in views]))['img']
    for img in out:
        assert img.dtype == np.float32 and img.shape == views[0].shape
        assert img.min() >= 0 and img.max() <= 255
        np.testing.assert_array_equal(img[..., 0], img[..., 1])
        np.testing.assert_array_equal(img[..., 0], img[..., 2])
        assert not np.array_equal(img, views[0])
    assert not np.array_equal(out[0], out[1])            # each view draws its own steps
    unchanged = XrayPhotoMetricDistortion(prob=0.0)(dict(img=[v.copy() for v in views]))
    np.testing.assert_array_equal(unchanged['img'][0], views[0])


def test_each_step_with_probability_one_half():
    """Each of the 7 steps runs in about half of the calls, independently."""
    np.random.seed(0)
    distort = XrayPhotoMetricDistortion()
    calls = dict.fromkeys(distort.STEPS, 0)
    for step in distort.STEPS:
        def counted(grey, step=step, original=getattr(distort, step)):
            calls[step] += 1
            return original(grey)
        setattr(distort, step, counted)
    for _ in range(400):
        distort.distort(np.full((4, 4), 100.0, np.float32))
    for step, count in calls.items():
        assert 160 < count < 240, (step, count)          # Binomial(400, 0.5): 200 +- 4 sd


def test_photometric_steps():
    distort = XrayPhotoMetricDistortion(contrast_range=(2.0, 2.0), gamma_range=(2.0, 2.0),
                                        vignetting_range=(0.4, 0.4),
                                        noise_std_range=(5.0, 5.0),
                                        salt_pepper_range=(0.04, 0.04),
                                        blur_kernel_sizes=(5,))
    grey = grey_views(1)[0][..., 0]
    np.random.seed(0)
    shifted = distort.brightness(grey)
    delta = float((shifted - grey).mean())
    np.testing.assert_allclose(shifted - grey, delta, atol=1e-4)
    assert abs(delta) <= 32
    contrasted = distort.contrast(grey)
    np.testing.assert_allclose(contrasted.mean(), grey.mean(), rtol=1e-5)
    np.testing.assert_allclose(contrasted.std(), 2 * grey.std(), rtol=1e-4)
    np.testing.assert_allclose(distort.gamma(np.array([0.0, 127.5, 255.0], np.float32)),
                               [0.0, 63.75, 255.0], rtol=1e-6)
    flat = np.full((101, 201), 200.0, np.float32)
    vignetted = distort.vignetting(flat)
    assert vignetted[50, 100] == pytest.approx(200.0, rel=1e-3)       # centre
    assert vignetted[0, 0] == pytest.approx(200.0 * 0.6, rel=2e-2)    # corner: 1 - s
    blurred = distort.blur(grey)
    assert blurred.std() < 0.7 * grey.std()
    np.testing.assert_allclose(blurred.mean(), grey.mean(), rtol=1e-2)
    noisy = distort.noise(flat)
    np.testing.assert_allclose((noisy - flat).std(), 5.0, rtol=0.05)
    # salt and pepper: a fraction of *pixels*, half white, half black
    big = np.full((400, 500), 128.0, np.float32)
    peppered = distort.salt_pepper(big)
    salt, pepper = (peppered == 255).mean(), (peppered == 0).mean()
    assert salt + pepper == pytest.approx(0.04, abs=0.003)
    assert salt == pytest.approx(0.02, abs=0.002) and pepper == pytest.approx(0.02, abs=0.002)
    rgb = distort(dict(img=[np.repeat(big[..., None], 3, axis=2)]))['img'][0]
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_photometric_validates_ranges():
    with pytest.raises(ValueError, match='prob'):
        XrayPhotoMetricDistortion(prob=1.5)
    with pytest.raises(ValueError, match='blur_kernel_sizes'):
        XrayPhotoMetricDistortion(blur_kernel_sizes=(4,))
    with pytest.raises(ValueError, match='contrast_range'):
        XrayPhotoMetricDistortion(contrast_range=(1.5, 0.5))


# -- packing -----------------------------------------------------------------------------
def test_pack_records_scales_flips_and_refuses_mixed_sizes(blob_dataset):
    np.random.seed(2)
    results = XrayResizeCropFlip(img_scale=(48, 64), flip_prob=1.0)(load(blob_dataset, 0))
    packed = PackMV2DXrayInputs()(results)
    meta = packed['data_samples'].metainfo
    assert meta['scale_factor'] == (0.5, 0.5) and meta['flip'] == [True] * 4
    assert meta['token'] == 'fake-train-0000' and meta['view_names'][0] == 'VIEW_00'
    assert packed['inputs']['img'].shape == (4, 3, 48, 64)
    np.testing.assert_array_equal(packed['inputs']['img'][2].permute(1, 2, 0).numpy(),
                                  results['img'][2])
    results = load(blob_dataset, 1)
    results['img'][1] = results['img'][1][:50]
    with pytest.raises(ValueError, match='different shapes'):
        PackMV2DXrayInputs()(results)


def test_pack_without_annotations_leaves_instances_empty(blob_dataset):
    results = LoadXrayMultiViewImages()(blob_dataset.get_data_info(0))
    packed = PackMV2DXrayInputs()(results)
    sample = packed['data_samples']
    assert len(sample.gt_instances_3d.all_keys()) == 0
    assert len(sample.gt_instances.all_keys()) == 0
    assert len(sample.ignored_instances.all_keys()) == 0
    assert sample.eval_ann_info is None
    assert packed['inputs']['img'].dtype == torch.float32
    assert sample.scale_factor == (1.0, 1.0) and sample.flip == [False] * 4
    assert osp.isfile(sample.img_path[0])


def test_16_bit_pngs_load_on_the_8_bit_scale(tmp_path):
    """A 16-bit PNG is read unchanged and scaled by 255 / 65535: 65535 -> 255 and the
    steps between 8-bit levels survive; an 8-bit PNG keeps its values."""
    import cv2
    import numpy as np

    from projects.mv2d_xray.mv2d_xray.datasets.transforms.loading import (
        LoadXrayMultiViewImages, is_16bit_png)
    deep = np.array([[0, 257, 300], [1000, 65535, 12345]], np.uint16)
    flat = np.array([[0, 1, 2], [3, 255, 128]], np.uint8)
    paths = [str(tmp_path / 'a.png'), str(tmp_path / 'b.png')]
    cv2.imwrite(paths[0], deep)
    cv2.imwrite(paths[1], flat)
    assert is_16bit_png(open(paths[0], 'rb').read())
    assert not is_16bit_png(open(paths[1], 'rb').read())
    results = dict(view_names=['A', 'B'], img_path=paths,
                   images={v: dict(height=2, width=3) for v in 'AB'},
                   cam2img=np.tile(np.eye(4), (2, 1, 1)),
                   lidar2img=np.tile(np.eye(4), (2, 1, 1)))
    out = LoadXrayMultiViewImages().transform(results)
    np.testing.assert_allclose(out['img'][0][..., 0], deep * 255.0 / 65535.0, rtol=1e-6)
    assert out['img'][0][0, 1, 0] == pytest.approx(1.0) and out['img'][0][0, 2, 0] > 1.0
    np.testing.assert_array_equal(out['img'][1][..., 2], flat)

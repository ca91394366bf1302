"""``visualization/attention_views.py``: one finding's cross-view evidence as a PNG."""
import os

import cv2
import numpy as np
import pytest
import torch

from projects.mv2d_xray.core.geometry import XrayGeometry, project_boxes3d
from projects.mv2d_xray.mv2d_xray.visualization.attention_views import (ATTENDED_COLOR,
                                                                        SOURCE_COLOR,
                                                                        draw_finding_evidence,
                                                                        evidence_figure_size,
                                                                        load_views)
from projects.mv2d_xray.mv2d_xray.visualization.case_views import PRED3D_COLOR
from projects.mv2d_xray.mv2d_xray.visualization.figures import DEFAULT_DPI

BOX_3D = np.array([10.0, -20.0, 5.0, 24.0, 24.0, 24.0, 0.0])


def _case(num_views, image_size=(96, 128)):
    """Views (uint8 noise, the finding bright) and an explanation in the model's format
    (CPU tensors): source in view 0, one attended detection per view (the finding's
    projected box), attention decreasing with the view index."""
    geometry = XrayGeometry(num_views=num_views, sod_mm=300.0, sdd_mm=600.0,
                            image_size=image_size, pixel_spacing_mm=4.0)
    lidar2img = geometry.view_matrices()['lidar2img']
    boxes = project_boxes3d(lidar2img, BOX_3D[None])[:, 0]               # (V, 4)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, size=(num_views, *image_size), dtype=np.uint8)
    for view, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        images[view, y1:y2, x1:x2] = 200
    weights = torch.arange(num_views, 0, -1, dtype=torch.float32)
    weights /= weights.sum()
    explanation = dict(
        query=0, source_view=0, source_bbox=torch.tensor(boxes[0], dtype=torch.float32),
        source_score=0.9, attended_views=torch.arange(num_views),
        attended_bboxes=torch.tensor(boxes, dtype=torch.float32),
        attended_scores=torch.full((num_views, ), 0.8), attention=weights,
        attention_mean=torch.full((num_views, ), 1.0 / num_views),
        view_attention=weights.clone())
    return images, lidar2img, explanation


def _png_size(num_views, columns):
    width, height = evidence_figure_size(num_views, columns)
    return round(height * DEFAULT_DPI), round(width * DEFAULT_DPI)


def _count_colour(img_bgr, hex_colour, tol=40):
    rgb = np.array([int(hex_colour[k:k + 2], 16) for k in (1, 3, 5)])
    return int((np.abs(img_bgr[:, :, ::-1].astype(int) - rgb).max(-1) < tol).sum())


def test_writes_the_picture_atomically_at_its_size(tmp_path):
    images, lidar2img, explanation = _case(4)
    out = tmp_path / 'sub' / 'finding.png'
    draw_finding_evidence(images, lidar2img, explanation, BOX_3D, str(out), score=0.7)
    img = cv2.imread(str(out))
    assert img is not None and img.shape[:2] == _png_size(4, 5)
    assert os.listdir(out.parent) == ['finding.png']              # no temporary file
    # the source detection, the projected 3D box and the view-attention bars are drawn
    assert _count_colour(img, SOURCE_COLOR) > 50
    assert _count_colour(img, PRED3D_COLOR) > 50
    assert _count_colour(img, ATTENDED_COLOR) > 50


def test_an_mmdet3d_box_is_read_at_its_gravity_centre(tmp_path):
    """``pred_instances_3d.bboxes_3d[k]`` (bottom centre in its ``tensor``) draws the
    same picture as the gravity-centred array."""
    from mmdet3d.structures import LiDARInstance3DBoxes
    images, lidar2img, explanation = _case(3)
    boxes = LiDARInstance3DBoxes(torch.from_numpy(np.stack([BOX_3D, BOX_3D])).float(),
                                 origin=(0.5, 0.5, 0.5))
    assert not np.allclose(boxes.tensor[0].numpy(), BOX_3D)
    array, mmdet3d_box = str(tmp_path / 'array.png'), str(tmp_path / 'boxes.png')
    draw_finding_evidence(images, lidar2img, explanation, BOX_3D, array)
    draw_finding_evidence(images, lidar2img, explanation, boxes[0], mmdet3d_box)
    np.testing.assert_array_equal(cv2.imread(array), cv2.imread(mmdet3d_box))
    with pytest.raises(ValueError, match='one box'):
        draw_finding_evidence(images, lidar2img, explanation, boxes, array)


def test_paths_whole_views_and_a_grid_of_rows(tmp_path):
    images, lidar2img, explanation = _case(7, image_size=(64, 64))
    paths = []
    for view, image in enumerate(images):
        paths.append(str(tmp_path / f'view{view}.png'))
        cv2.imwrite(paths[-1], image)
    np.testing.assert_array_equal(load_views(paths), images)
    out = tmp_path / 'out' / 'finding.png'
    draw_finding_evidence(paths, lidar2img, explanation, BOX_3D, str(out),
                          view_names=[f'v{k}' for k in range(7)], columns=3, zoom=False)
    img = cv2.imread(str(out))
    assert img.shape[:2] == _png_size(7, 3)
    assert os.listdir(out.parent) == ['finding.png']


def test_load_views_takes_channel_first_and_last_arrays():
    images = np.random.default_rng(1).uniform(0, 255, size=(3, 3, 8, 10))
    np.testing.assert_allclose(load_views(torch.as_tensor(images)), images.mean(1),
                               rtol=1e-5)
    np.testing.assert_allclose(load_views(images.transpose(0, 2, 3, 1)), images.mean(1),
                               rtol=1e-5)
    with pytest.raises(ValueError, match='images must be'):
        load_views(images[0, 0])


def test_bad_inputs_raise_before_anything_is_written(tmp_path):
    images, lidar2img, explanation = _case(4)
    out = tmp_path / 'finding.png'
    incomplete = {k: v for k, v in explanation.items() if k != 'attention'}
    with pytest.raises(KeyError, match='attention'):
        draw_finding_evidence(images, lidar2img, incomplete, BOX_3D, str(out))
    with pytest.raises(ValueError, match='must agree'):
        draw_finding_evidence(images[:3], lidar2img, explanation, BOX_3D, str(out))
    with pytest.raises(FileNotFoundError, match='missing.png'):
        draw_finding_evidence([str(tmp_path / 'missing.png')] * 4, lidar2img, explanation,
                              BOX_3D, str(out))
    assert os.listdir(tmp_path) == []


def test_a_view_probe_is_drawn_as_an_outline_not_a_filled_detection(tmp_path):
    """A view probe (NaN 2D score, ``view_probes``) is drawn dashed and unfilled: the
    views' row has fewer blue-tinted (attended-fill) pixels than with the same box as a
    detection, and still some (its outline)."""
    images, lidar2img, explanation = _case(4)
    pixels = {}

    def blue_fill(img_bgr):
        views_row = img_bgr[:img_bgr.shape[0] // 2].astype(int)
        return int((views_row[..., 0] - views_row[..., 2] > 40).sum())

    for name, score in (('detection', 0.8), ('probe', float('nan'))):
        scores = explanation['attended_scores'].clone()
        scores[2] = score
        out = tmp_path / f'{name}.png'
        draw_finding_evidence(images, lidar2img, dict(explanation, attended_scores=scores),
                              BOX_3D, str(out), score=0.7)
        pixels[name] = blue_fill(cv2.imread(str(out)))
    assert 0 < pixels['probe'] < 0.9 * pixels['detection']

"""``projects.mv2d_xray.core.geometry``: one implementation per helper, the same numbers
for numpy and torch, and round trips through the camera matrices."""
import numpy as np
import pytest
import torch

from projects.mv2d_xray.core.geometry import (XrayGeometry, box3d_corners, denormalize_points,
                                              image_aug_matrix, normalize_points, project_boxes3d,
                                              project_points, transform_boxes2d,
                                              triangulate_points, unproject_points)

GEOMETRY = XrayGeometry(num_views=7, image_size=(96, 128))


def random_points(num: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-80, 80, size=(num, 3))


def test_project_unproject_round_trip_numpy_and_torch():
    mats = GEOMETRY.view_matrices()['lidar2img']                    # (V, 4, 4)
    points = random_points(20)
    uv, depth = project_points(mats, np.broadcast_to(points, (7, 20, 3)))
    assert uv.shape == (7, 20, 2) and depth.shape == (7, 20)
    # every point lies between the sources and the detectors, in mm from the source
    assert (depth > GEOMETRY.sod_mm - 150).all() and (depth < GEOMETRY.sod_mm + 150).all()
    back = unproject_points(mats, uv, depth)
    np.testing.assert_allclose(back, np.broadcast_to(points, back.shape), atol=1e-9)
    back_given_inverse = unproject_points(None, uv, depth, img2lidar=np.linalg.inv(mats))
    np.testing.assert_allclose(back_given_inverse, back, atol=1e-9)

    uv_t, depth_t = project_points(torch.from_numpy(mats),
                                   torch.from_numpy(np.broadcast_to(points, (7, 20, 3)).copy()))
    assert isinstance(uv_t, torch.Tensor) and uv_t.dtype == torch.float64
    np.testing.assert_allclose(uv_t.numpy(), uv, atol=1e-12)
    np.testing.assert_allclose(depth_t.numpy(), depth, atol=1e-12)
    back_t = unproject_points(torch.from_numpy(mats), uv_t, depth_t)
    np.testing.assert_allclose(back_t.numpy(), back, atol=1e-9)


def test_triangulation_numpy_and_torch_agree_and_are_exact():
    mats = GEOMETRY.view_matrices()['lidar2img']
    point = np.array([12.0, -30.0, 45.0])
    uv, _ = project_points(mats, np.broadcast_to(point, (7, 1, 3)))
    uv = uv[:, 0]                                                   # (V, 2)
    np.testing.assert_allclose(triangulate_points(mats, uv), point, atol=1e-6)
    weights = np.array([1, 0, 1, 0, 0, 0, 0], float)                # two views suffice
    np.testing.assert_allclose(triangulate_points(mats, uv, weights), point, atol=1e-6)
    in_torch = triangulate_points(torch.from_numpy(mats), torch.from_numpy(uv),
                                  torch.from_numpy(weights))
    np.testing.assert_allclose(in_torch.numpy(), point, atol=1e-6)


def test_boxes_numpy_and_torch_agree():
    boxes = np.array([[1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 0.0],
                      [-5.0, 0.0, 8.0, 4.0, 4.0, 6.0, 0.3]])
    corners = box3d_corners(boxes)
    np.testing.assert_allclose(corners[0].min(0), [-4, -8, -12])
    np.testing.assert_allclose(corners[0].max(0), [6, 12, 18])
    np.testing.assert_allclose(box3d_corners(torch.from_numpy(boxes)).numpy(), corners)
    mats = GEOMETRY.view_matrices()['lidar2img']
    boxes2d = project_boxes3d(mats[2], boxes)
    np.testing.assert_allclose(
        project_boxes3d(torch.from_numpy(mats[2]), torch.from_numpy(boxes)).numpy(), boxes2d)
    aug = image_aug_matrix(scale=(0.5, 0.5), crop_offset=(3, 4), flip_width=60)
    flipped = transform_boxes2d(aug, boxes2d)
    assert (flipped[:, 0] <= flipped[:, 2]).all()
    np.testing.assert_allclose(transform_boxes2d(aug, torch.from_numpy(boxes2d)).numpy(),
                               flipped)


@pytest.mark.parametrize('as_tensor', [False, True])
def test_normalize_points_round_trip(as_tensor):
    point_range = [-250.0, -200.0, -100.0, 250.0, 200.0, 300.0]
    points = np.array([[-250.0, -200.0, -100.0], [250.0, 200.0, 300.0], [0.0, 0.0, 100.0]])
    if as_tensor:
        points = torch.from_numpy(points).float()
    norm = normalize_points(points, point_range)
    expected = np.array([[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(np.asarray(norm), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(denormalize_points(norm, point_range)),
                               np.asarray(points), atol=1e-4)

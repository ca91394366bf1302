"""``projects.mv2d_xray.core.geometry``: one implementation per helper, the same numbers
for numpy and torch, and round trips through the camera matrices."""
import numpy as np
import pytest
import torch

from projects.mv2d_xray.core.geometry import (XrayGeometry, box3d_corners, denormalize_points,
                                              detection_gates, image_aug_matrix, nearest_in_gate,
                                              normalize_points, project_boxes3d, project_points,
                                              seen_in_image, transform_boxes2d, triangulate_points,
                                              unproject_points, view_slots)

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


@pytest.mark.parametrize('as_tensor', [False, True])
def test_detection_gates_hand_computed(as_tensor):
    """``max(gate_px, gate_frac * larger side)``: a 2 x 4 px box keeps the 3 px floor,
    a 10 x 4 px box gets 5 px, a 4 x 16 px box 8 px."""
    boxes = np.array([[0, 0, 2, 4], [10, 10, 20, 14], [5, 0, 9, 16]], np.float64)
    gates = detection_gates(torch.from_numpy(boxes) if as_tensor else boxes, 3.0, 0.5)
    assert type(gates) is (torch.Tensor if as_tensor else np.ndarray)
    assert np.asarray(gates).tolist() == [3.0, 5.0, 8.0]


def test_seen_in_image_hand_computed_numpy_and_torch():
    """In front of the source and inside ``[0, W) x [0, H)``: the edges at 0 count, those
    at W and H do not; behind the source, or a NaN projection, is not seen; per-row sizes
    broadcast."""
    uv = np.array([[0.0, 0.0], [99.9, 79.9], [100.0, 10.0], [10.0, 80.0], [-0.1, 5.0],
                   [50.0, 40.0], [np.nan, 40.0]])
    depth = np.array([1.0, 1.0, 1.0, 1.0, 1.0, -1.0, 1.0])
    expected = [True, True, False, False, False, False, False]
    with np.errstate(invalid='ignore'):
        assert seen_in_image(uv, depth, 80, 100).tolist() == expected
    assert seen_in_image(torch.from_numpy(uv), torch.from_numpy(depth), 80, 100).tolist() == \
        expected
    heights = np.array([[80.0], [30.0]])                    # two images, broadcast per row
    both = seen_in_image(uv[None].repeat(2, 0), depth[None].repeat(2, 0), heights, 100.0)
    assert both[0].tolist() == expected
    assert both[1].tolist() == [True, False, False, False, False, False, False]


def test_nearest_in_gate_hand_computed_numpy_and_torch():
    """Per view the *nearest* available detection whose gate holds the projection, not
    the best-scoring one; padding, a too-narrow gate and a point behind the source
    count as none; equal distances give the lowest slot. numpy and torch agree."""
    centres = np.array([[[10.0, 10.0], [12.0, 10.0], [0.0, 0.0]],       # view 0
                        [[50.0, 50.0], [0.0, 0.0], [0.0, 0.0]],         # view 1
                        [[20.0, 20.0], [24.0, 20.0], [0.0, 0.0]]])      # view 2
    gates = np.array([[3.0, 3.0, 99.0], [3.0, 99.0, 99.0], [2.0, 2.0, 99.0]])
    available = np.array([[True, True, False], [True, False, False], [True, True, False]])
    # point 0 projects 1.5 px from view 0's slot 1 (2.5 px from slot 0), 4 px from view
    # 1's only detection (gate 3: none; the padded slot at the origin with gate 99 must
    # not count), exactly between view 2's two (2 px each: the lowest slot)
    uv = np.array([[[13.5, 10.0], [54.0, 50.0], [22.0, 20.0]],
                   # point 1: on view 0's slot 0 but behind the sources (or at one)
                   [[10.0, 10.0], [50.0, 50.0], [20.0, 20.0]]])
    depth = np.array([[300.0, 300.0, 300.0], [-1.0, 0.0, -1.0]])
    slot, dist = nearest_in_gate(uv, depth, centres, gates, available)
    assert slot.tolist() == [[1, -1, 0], [-1, -1, -1]]
    np.testing.assert_allclose(dist[0], [1.5, np.inf, 2.0])
    assert np.isinf(dist[1]).all()
    as_t = [torch.from_numpy(x) for x in (uv, depth, centres, gates, available)]
    slot_t, dist_t = nearest_in_gate(*as_t)
    assert slot_t.tolist() == slot.tolist()
    np.testing.assert_allclose(dist_t.numpy(), dist)

    # no detection in any view: none, for numpy and torch
    for arrays in ((uv, depth, centres[:, :0], gates[:, :0], available[:, :0]),
                   [torch.from_numpy(x) for x in (uv, depth, centres[:, :0], gates[:, :0],
                                                  available[:, :0])]):
        slot, dist = nearest_in_gate(*arrays)
        assert np.asarray(slot).tolist() == [[-1] * 3] * 2 and np.isinf(np.asarray(dist)).all()


@pytest.mark.parametrize('as_tensor', [False, True])
def test_view_slots_best_first_padded(as_tensor):
    """Per view the indices by decreasing score (equal scores in input order), -1 after;
    ``max_per_view`` keeps the best; a view without detections is all padding."""
    scores = np.array([0.2, 0.9, 0.5, 0.7, 0.1, 0.5])
    views = np.array([2, 0, 2, 2, 0, 2])
    if as_tensor:
        scores, views = torch.from_numpy(scores), torch.from_numpy(views)
    index = view_slots(scores, views, 3)
    assert type(index) is (torch.Tensor if as_tensor else np.ndarray)
    assert index.tolist() == [[1, 4, -1, -1], [-1] * 4, [3, 2, 5, 0]]
    assert view_slots(scores, views, 3, max_per_view=2).tolist() == [[1, 4], [-1, -1], [3, 2]]
    assert view_slots(scores[:0], views[:0], 3).shape == (3, 0)

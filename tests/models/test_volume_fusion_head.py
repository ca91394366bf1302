"""The volume fusion head: its grid, its sampling of the views at voxel projections
(hand-computed cells), its CenterNet target, its decoding of peaks (hand-made heat maps),
its independence of the views' order, and that it learns to find a finding from the
views' features (the loss falls; the best peak lands on the finding)."""
import math

import numpy as np
import pytest
import torch
from mv2d_test_utils import make_geometry

from projects.mv2d_xray.core.geometry import project_points, unproject_points
from projects.mv2d_xray.mv2d_xray.models.volume_fusion_head import (XrayVolumeFusionHead,
                                                                     heat_target, voxel_grid)

STRIDE = 4        # 64 px views, 16 x 16 feature maps


def view_matrices(num_views: int) -> torch.Tensor:
    geometry = make_geometry(num_views)
    return torch.as_tensor(np.stack([geometry.lidar2img(v) for v in range(num_views)]),
                           dtype=torch.float32)


def test_voxel_grid_covers_the_box_and_margin():
    grid = voxel_grid([-2.0, 0.0, 10.0], [2.0, 1.0, 12.0], voxel_mm=0.5, margin_mm=1.0)
    # x: -3 .. 3 in 0.5 mm voxels = 12, y: -1 .. 2 = 6, z: 9 .. 13 = 8
    assert grid.shape == (12, 6, 8, 3)
    assert grid[0, 0, 0].tolist() == [-2.75, -0.75, 9.25]
    assert grid[-1, -1, -1].tolist() == [2.75, 1.75, 12.75]
    assert torch.allclose(grid[1, 0, 0] - grid[0, 0, 0], torch.tensor([0.5, 0.0, 0.0]))


def test_sample_views_reads_the_cell_a_point_projects_to():
    lidar2img = view_matrices(3)
    feats = torch.zeros(3, 2, 16, 16)
    feats[0, 1, 5, 9] = 1.0                              # view 0, channel 1, row 5, column 9
    # the middle of that cell, (9.5, 5.5) cells = (38, 22) px, lifted 300 mm deep
    centre = unproject_points(lidar2img[0].double(), torch.tensor([[38.0, 22.0]]).double(),
                              torch.tensor([300.0]).double()).float()
    # the border between columns 9 and 10: (40, 22) px, half of the hot cell
    border = unproject_points(lidar2img[0].double(), torch.tensor([[40.0, 22.0]]).double(),
                              torch.tensor([300.0]).double()).float()
    far = torch.tensor([[5000.0, 0.0, 0.0]])            # projects outside every view
    sampled = XrayVolumeFusionHead.sample_views(feats, lidar2img, (64, 64),
                                                torch.cat([centre, border, far]))
    assert sampled.shape == (3, 2, 3)
    assert sampled[0, 1, 0].item() == pytest.approx(1.0, abs=1e-4)
    assert sampled[0, 1, 1].item() == pytest.approx(0.5, abs=1e-4)
    assert sampled[0, 0].abs().max().item() == 0.0 and sampled[:, :, 2].abs().max() == 0.0
    uv, _ = project_points(lidar2img[1:], centre)
    assert not ((uv[..., 0] // STRIDE == 9) & (uv[..., 1] // STRIDE == 5)).any()
    assert sampled[1:, 1, 0].abs().max().item() == 0.0  # the other views miss the hot cell


def test_heat_target_peaks_at_each_centre_and_ignores_regions():
    grid = voxel_grid([0.0, 0.0, 0.0], [10.0, 10.0, 10.0], voxel_mm=1.0, margin_mm=0.0)
    centres = torch.tensor([[2.5, 3.5, 4.5], [7.5, 7.5, 7.5], [5.5, 1.5, 8.5]])
    heat, ignored = heat_target(grid, centres, torch.tensor([1, 0, 0]),
                                torch.tensor([12.0, 1.0, 2.0]), torch.tensor([False, False,
                                                                               True]),
                                num_classes=2, sigma_min_mm=0.5)
    assert heat.shape == (2, 10, 10, 10) and heat[1, 2, 3, 4] == 1.0 and heat[0, 7, 7, 7] == 1.0
    assert heat[0, 2, 3, 4] < 1e-6 and heat.eq(1).sum() == 2   # the ignore region: no peak
    # class 1's sigma is 12 / 6 = 2 mm: the voxel 1 mm away holds exp(-1 / 8)
    assert heat[1, 3, 3, 4].item() == pytest.approx(math.exp(-1 / 8), rel=1e-5)
    # class 0's 1 mm finding has sigma_min: 1 mm away exp(-1 / 0.5)
    assert heat[0, 7, 7, 8].item() == pytest.approx(math.exp(-2.0), rel=1e-5)
    # the ignore region: radius max(2 / 2, 0.5) = 1 mm around (5.5, 1.5, 8.5)
    assert ignored[5, 1, 8] and ignored[4, 1, 8] and not ignored[4, 0, 8]
    assert ignored.sum() == 7


def test_predict_reads_peaks_with_sub_voxel_centres():
    head = XrayVolumeFusionHead(in_channels=4, box_size_mm=(1.5, 3.0), score_thr=0.05)
    grid = voxel_grid([0.0, 0.0, 0.0], [5.0, 5.0, 5.0], voxel_mm=0.5, margin_mm=0.0)
    logits = torch.full((2, 10, 10, 10), -30.0)
    logits[0, 2, 3, 4] = math.log(0.9 / 0.1)            # p = 0.9
    logits[0, 3, 3, 4] = math.log(0.3 / 0.7)            # p = 0.3, pulls the centre along x
    logits[1, 7, 7, 7] = 0.0                            # p = 0.5
    logits[1, 0, 0, 0] = math.log(0.04 / 0.96)          # p = 0.04, under score_thr
    boxes, scores, labels = head.predict(logits, grid)
    assert labels.tolist() == [0, 1]
    assert scores.tolist() == pytest.approx([0.9, 0.5], abs=1e-6)
    x = (0.9 * grid[2, 3, 4, 0] + 0.3 * grid[3, 3, 4, 0]) / 1.2
    assert boxes[0, :3].tolist() == pytest.approx([x.item(), 1.75, 2.25], abs=1e-5)
    assert boxes[1].tolist() == pytest.approx([3.75, 3.75, 3.75, 3.0, 3.0, 3.0, 0.0], abs=1e-5)
    assert boxes[0, 3:6].tolist() == [1.5, 1.5, 1.5]


def test_views_order_does_not_matter():
    torch.manual_seed(0)
    head = XrayVolumeFusionHead(in_channels=4, box_size_mm=(2.0,), view_channels=4,
                                volume_channels=4).eval()
    lidar2img = view_matrices(4)
    feats = torch.randn(4, 4, 16, 16)
    grid = voxel_grid([-20.0] * 3, [20.0] * 3, voxel_mm=5.0, margin_mm=0.0)
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        assert torch.allclose(head(feats, lidar2img, (64, 64), grid),
                              head(feats[order], lidar2img[order], (64, 64), grid), atol=1e-5)


def scene_features(lidar2img: torch.Tensor, centre: torch.Tensor, rng) -> torch.Tensor:
    """(V, 4, 16, 16) noise, plus in channel 0 a blob of 1 cell's sigma at the finding's
    projection in every view."""
    uv, _ = project_points(lidar2img, centre[None])                  # (V, 1, 2)
    cells = (torch.arange(16) + 0.5) * STRIDE
    du = (cells[None, None, :] - uv[:, 0, 0, None, None]) / STRIDE
    dv = (cells[None, :, None] - uv[:, 0, 1, None, None]) / STRIDE
    feats = torch.as_tensor(rng.normal(0.0, 0.3, (len(lidar2img), 4, 16, 16)),
                            dtype=torch.float32)
    feats[:, 0] += torch.exp(-(du ** 2 + dv ** 2) / 2)
    return feats


def test_the_head_learns_to_find_a_finding_from_the_views():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    lidar2img = view_matrices(4)
    head = XrayVolumeFusionHead(in_channels=4, box_size_mm=(8.0,), view_channels=4,
                                volume_channels=8, voxel_mm=10.0)
    grid = head.grid([-40.0] * 3, [40.0] * 3)                         # 10 x 10 x 10 voxels
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        centre = torch.as_tensor(rng.uniform(-30, 30, 3), dtype=torch.float32)
        heat, ignored = heat_target(grid, centre[None], torch.tensor([0]), torch.tensor([30.0]),
                                    torch.tensor([False]), 1, head.sigma_min_mm)
        loss = head.loss(head(scene_features(lidar2img, centre, rng), lidar2img, (64, 64),
                              grid), heat, ignored)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    head.eval()
    errors = []
    for _ in range(5):
        centre = torch.as_tensor(rng.uniform(-30, 30, 3), dtype=torch.float32)
        with torch.no_grad():
            logits = head(scene_features(lidar2img, centre, rng), lidar2img, (64, 64), grid)
        boxes, _, _ = head.predict(logits, grid)
        errors.append(torch.linalg.norm(boxes[0, :3] - centre).item())
    # within 1.5 voxels (the finding lies anywhere between voxel centres; one feature
    # cell is 12.5 mm at the isocentre), where a guess in the cube misses by ~40 mm
    assert max(errors) < 15.0, errors


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match='box_size_mm'):
        XrayVolumeFusionHead(in_channels=4, box_size_mm=())
    with pytest.raises(ValueError, match='voxel_mm'):
        XrayVolumeFusionHead(in_channels=4, box_size_mm=(1.0,), voxel_mm=0.0)

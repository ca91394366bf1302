"""``visualization/saliency.py`` (EigenCAM, Score-CAM) and ``saliency_views.py``: the pure
steps on hand-made tensors, Score-CAM on a fake detector whose score depends on one image
region only, and both CAMs on the tiny MV2D model (random weights)."""
import logging
import time

import cv2
import pytest
import torch
from mmdet3d.registry import MODELS
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData
from mv2d_test_utils import make_batch, tiny_mv2d_config
from torch import nn

import projects.mv2d_xray.mv2d_xray  # noqa: F401  (registers the modules)
from projects.mv2d_xray.mv2d_xray.visualization.saliency import (best_overlap_score, channel_masks,
                                                                 detect_views, eigen_cam,
                                                                 first_component_projection,
                                                                 normalise_map,
                                                                 propose_and_detect_views,
                                                                 roi_level, score_cam,
                                                                 score_weights,
                                                                 select_channels,
                                                                 weighted_activation_map)
from projects.mv2d_xray.mv2d_xray.visualization.saliency_views import (display_view,
                                                                       draw_saliency_views)

init_default_scope('mmdet3d')
MMLogger.get_current_instance().setLevel(logging.WARNING)


# -- pure steps -----------------------------------------------------------------------------
def test_first_component_projection_is_the_rank_one_map():
    """Activations ``u[c] m[y, x] + b[c]`` (one spatial pattern along one channel
    direction, plus per-channel offsets that centring removes): the projection is ``|u|
    (m - mean m)``, whatever the sign of ``u`` or of the eigenvector LAPACK returns
    (arbitrary: over these seeds it comes out both ways, so the sign rule is tested)."""
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(12, generator=gen, dtype=torch.float64)
        m = torch.rand(5, 7, generator=gen, dtype=torch.float64)
        b = 0.05 * torch.rand(12, generator=gen, dtype=torch.float64)
        expected = (u.norm() * (m - m.mean())).float()
        for sign in (1.0, -1.0):
            feat = sign * u[:, None, None] * m[None] + b[:, None, None]
            projection = first_component_projection(feat)
            assert projection.shape == (5, 7)
            torch.testing.assert_close(projection, expected, atol=1e-5, rtol=1e-5)
    # ReLU + normalisation keep the above-mean part of the pattern
    cam = normalise_map(projection.clamp(min=0))
    assert cam.max() == 1.0 and int(cam.argmax()) == int(m.argmax())
    assert bool(((cam > 0) == (m > m.mean()).float().bool()).all())


def test_normalise_map_range_and_flat_map():
    torch.testing.assert_close(normalise_map(torch.tensor([[1.0, 3.0], [2.0, 5.0]])),
                               torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert bool((normalise_map(torch.full((3, 4), 2.5)) == 0).all())


def test_select_channels_looks_in_and_around_the_box():
    feat = torch.zeros(4, 8, 8)                            # stride 4: 32 x 32 px
    feat[1, 6:8, 6:8] = 9.0                                # strong, far from the box
    feat[3, 1:3, 1:3] = 2.0                                # inside the box's footprint
    feat[2, 0, 0] = 1.0                                    # one feature pixel around it
    index = select_channels(feat, [4.0, 4.0, 12.0, 12.0], stride=4, k=3, margin=1)
    assert index.tolist()[:2] == [3, 2]
    assert select_channels(feat, [4.0, 4.0, 12.0, 12.0], 4, k=3, margin=0).tolist()[0] == 3
    assert len(select_channels(feat, [0, 0, 1, 1], 4, k=10)) == 4


def test_channel_masks_are_normalised_upsampled_activations():
    acts = torch.tensor([[[0.0, 2.0], [4.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]])
    masks = channel_masks(acts, (4, 4))
    assert masks.shape == (2, 4, 4)
    assert masks[0].min() == 0.0 and masks[0].max() == 1.0
    assert bool((masks[1] == 0).all())                      # a flat channel masks all


def test_best_overlap_score_takes_the_same_class_best_iou():
    det = InstanceData(bboxes=torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 11, 11],
                                            [0.0, 0, 10, 10], [50.0, 50, 60, 60]]),
                       scores=torch.tensor([0.3, 0.9, 0.8, 0.7]),
                       labels=torch.tensor([0, 0, 1, 0]))
    assert best_overlap_score(det, [0, 0, 10, 10], 0) == pytest.approx(0.3)
    assert best_overlap_score(det, [0, 0, 10, 10], 1) == pytest.approx(0.8)
    assert best_overlap_score(det, [20, 20, 30, 30], 0) == 0.0    # no overlap
    assert best_overlap_score(det, [0, 0, 10, 10], 2) == 0.0      # no such class
    assert best_overlap_score(det, [0, 0, 10, 10], 0, min_iou=0.99) == pytest.approx(0.3)


def test_score_weights_relu_and_softmax():
    scores = torch.tensor([0.2, 0.5, 0.1])
    torch.testing.assert_close(score_weights(scores, baseline=0.15),
                               torch.tensor([0.125, 0.875, 0.0]))
    assert bool((score_weights(scores, baseline=0.9) == 0).all())
    soft = score_weights(scores, baseline=0.15, mode='softmax')
    torch.testing.assert_close(soft, torch.softmax(scores, 0))
    with pytest.raises(ValueError, match='relu'):
        score_weights(scores, mode='gradient')


def test_weighted_activation_map_is_relu_of_the_weighted_sum():
    acts = torch.tensor([[[1.0, -2.0]], [[3.0, 1.0]]])     # (2, 1, 2)
    torch.testing.assert_close(weighted_activation_map(acts, torch.tensor([0.5, -1.0])),
                               torch.tensor([[0.0, 0.0]]))
    torch.testing.assert_close(weighted_activation_map(acts, torch.tensor([0.25, 0.75])),
                               torch.tensor([[2.5, 0.25]]))


# -- Score-CAM on a fake detector -------------------------------------------------------------
class _FakeExtractor(nn.Module):
    featmap_strides = [4]

    @staticmethod
    def map_roi_levels(rois, num_levels):
        return rois.new_zeros(len(rois), dtype=torch.long)


class _FakeRoIHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.bbox_roi_extractor = _FakeExtractor()


class RegionDetector(nn.Module):
    """A "detector" of 32 x 32 px views: its features are 16 fixed channels, each a blob
    at one cell of a 4 x 4 grid (8 x 8 feature pixels, stride 4), whatever the image; it
    always detects ``BOX`` (class 0) with a score = the mean image value in ``REGION``,
    the top-left 8 x 8 px, so only that region matters."""
    BOX = [0.0, 0.0, 16.0, 16.0]
    REGION = (slice(0, 8), slice(0, 8))

    def __init__(self):
        super().__init__()
        self.roi_head = _FakeRoIHead()
        ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing='ij')
        centres = [(1.0 + 2 * i, 1.0 + 2 * j) for i in range(4) for j in range(4)]
        self.blobs = torch.stack([torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / 2.0)
                                  for cy, cx in centres])          # (16, 8, 8)

    def extract_feat(self, imgs):
        region_mean = imgs[:, :, self.REGION[0], self.REGION[1]].mean(dim=(1, 2, 3))
        return (self.blobs.expand(len(imgs), -1, -1, -1), region_mean)

    def predict_by_feat(self, feats, samples, cfg):
        return [InstanceData(bboxes=torch.tensor([self.BOX]), scores=score.reshape(1),
                             labels=torch.zeros(1, dtype=torch.long))
                for score in feats[1]]


@pytest.mark.parametrize('weighting', ['relu', 'softmax'])
def test_score_cam_points_at_the_region_that_drives_the_score(weighting):
    """All 16 channels (random order) weighted by the fake score: the map's peak is in
    the top-left region; with equal weights it would not be."""
    detector = RegionDetector()
    img = torch.ones(1, 3, 32, 32)
    cam = score_cam(detector, img, RegionDetector.BOX, 0, num_channels=16,
                    channels='random', weighting=weighting)
    assert cam.shape == (32, 32)
    row, col = divmod(int(cam.argmax()), 32)
    assert row < 8 and col < 8, (row, col)
    uniform = normalise_map(torch.nn.functional.interpolate(
        detector.blobs.sum(0)[None, None], size=(32, 32), mode='bilinear')[0, 0])
    row, col = divmod(int(uniform.argmax()), 32)
    assert not (row < 8 and col < 8)
    # the top channels in and around the box are all of the box's 2 x 2 cells' blobs
    top = score_cam(detector, img, RegionDetector.BOX, 0, num_channels=4)
    row, col = divmod(int(top.argmax()), 32)
    assert row < 8 and col < 8


# -- the tiny MV2D model -------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny():
    """The tiny model (random weights, eval mode) and one 3-view case, preprocessed:
    ``(3, 3, 64, 64)`` and its GT boxes per view."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MODELS.build(tiny_mv2d_config())
    model.init_weights()
    model.eval()
    data = model.data_preprocessor(make_batch(3, [2], seed=1), False)
    gt = data['data_samples'][0].gt_instances
    return model, data['inputs']['imgs'][0], gt


def test_roi_level_is_mmdets_rule():
    model = MODELS.build(tiny_mv2d_config())
    assert roi_level(model, None) == (0, 4)
    assert roi_level(model, [0, 0, 30, 30]) == (0, 4)          # sqrt(wh) < 112
    assert roi_level(model, [0, 0, 120, 120]) == (1, 8)
    assert roi_level(model, [0, 0, 230, 230]) == (2, 16)
    assert roi_level(model.base_detector, [0, 0, 500, 500]) == (3, 32)


def test_eigen_cam_on_the_tiny_model(tiny):
    model, imgs, _ = tiny
    cam = eigen_cam(model, imgs[:1])
    assert cam.shape == (64, 64) and cam.dtype == torch.float32
    assert cam.min() >= 0 and cam.max() == 1.0
    torch.testing.assert_close(eigen_cam(model, imgs[:1]), cam, rtol=0, atol=0)
    torch.testing.assert_close(eigen_cam(model.base_detector, imgs[:1], level=0), cam)
    assert eigen_cam(model, imgs[:1], level=2).shape == (64, 64)
    with pytest.raises(ValueError, match='one view'):
        eigen_cam(model, imgs)


def test_score_cam_on_the_tiny_model_keeps_the_mode(tiny):
    model, imgs, gt = tiny
    box = gt.bboxes[gt.view_ids == 0][0].tolist()
    model.train()
    try:
        cam = score_cam(model, imgs[:1], box, 0, num_channels=8)
        assert model.training and model.base_detector.training
    finally:
        model.eval()
    assert cam.shape == (64, 64) and cam.dtype == torch.float32
    assert cam.min() >= 0 and cam.max() <= 1
    torch.testing.assert_close(score_cam(model, imgs[:1], box, 0, num_channels=8), cam,
                               rtol=0, atol=0)
    random = score_cam(model, imgs[:1], box, 0, num_channels=8, channels='random')
    assert random.shape == (64, 64)


def test_detect_views_and_the_timings(tiny, capsys):
    model, imgs, _ = tiny
    dets = detect_views(model, imgs)
    assert len(dets) == 3
    assert all(d.bboxes.shape[1:] == (4, ) and len(d) <= 5 for d in dets)  # max_per_img
    start = time.perf_counter()
    eigen_cam(model, imgs[:1])
    eigen_s = time.perf_counter() - start
    start = time.perf_counter()
    score_cam(model, imgs[:1], [20.0, 20.0, 30.0, 30.0], 0, num_channels=16)
    score_s = time.perf_counter() - start
    with capsys.disabled():
        print(f'\n[tiny model, 64 x 64 px view, 1 thread] EigenCAM {eigen_s * 1e3:.0f} ms, '
              f'Score-CAM (16 channels) {score_s * 1e3:.0f} ms')


def test_propose_and_detect_views_ranks_the_rpns_proposals(tiny):
    model, imgs, _ = tiny
    model.train()
    try:
        proposals, dets = propose_and_detect_views(model, imgs)
        assert model.training and model.base_detector.training
    finally:
        model.eval()
    assert len(proposals) == len(dets) == 3
    for view in proposals:
        assert view.bboxes.shape[1:] == (4, ) and 0 < len(view) <= 50   # test_cfg.rpn
        assert torch.all(view.scores[:-1] >= view.scores[1:])
    # the detections from the shared pass are detect_views' own
    for a, b in zip(detect_views(model, imgs), dets):
        torch.testing.assert_close(a.bboxes, b.bboxes)
        torch.testing.assert_close(a.scores, b.scores)
    # one view per forward pass gives the same proposals (BN in eval mode)
    for a, b in zip(propose_and_detect_views(model, imgs, batch_size=1)[0], proposals):
        torch.testing.assert_close(a.bboxes, b.bboxes)
        torch.testing.assert_close(a.scores, b.scores)


# -- pictures ------------------------------------------------------------------------------
def test_draw_saliency_views_writes_a_png(tiny, tmp_path):
    model, imgs, gt = tiny
    prep = model.data_preprocessor
    images = [display_view(v.numpy(), prep.mean.flatten().tolist(),
                           prep.std.flatten().tolist()) for v in imgs]
    assert images[0].shape == (64, 64) and 0 <= images[0].min() and images[0].max() <= 255
    maps = [eigen_cam(model, v[None]).numpy() for v in imgs]
    dets = detect_views(model, imgs)
    out = tmp_path / 'sub' / 'saliency.png'
    draw_saliency_views(images, maps, str(out), dets=[d.bboxes.numpy() for d in dets],
                        scores=[d.scores.numpy() for d in dets],
                        gt_boxes=[gt.bboxes[gt.view_ids == v].numpy() for v in range(3)],
                        view_names=['v0', 'v1', 'v2'], columns=2, title='EigenCAM')
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[0] > 100
    with pytest.raises(ValueError, match='maps'):
        draw_saliency_views(images, maps[:2], str(tmp_path / 'x.png'))

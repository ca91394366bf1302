"""Unit tests of the MV2D building blocks on hand-made geometry (CPU, seconds)."""
import math

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS, TASK_UTILS
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData
from mv2d_test_utils import DEPTH_RANGE, PC_RANGE, make_geometry, tiny_mv2d_config

import projects.mv2d_xray.mv2d_xray  # noqa: F401  (registers the modules)
from projects.mv2d_xray.core.geometry import (XrayGeometry, apply_image_aug, image_aug_matrix,
                                              project_boxes3d, project_points, triangulate_points,
                                              unproject_points)
from projects.mv2d_xray.mv2d_xray.models import (MV2DXrayBoxCorrelation, MV2DXrayNMSFreeCoder,
                                                 ObjectnessMaps, centre_distance_nms,
                                                 objectness_support,
                                                 objectness_support_by_size, view_support,
                                                 view_support_scores)
from projects.mv2d_xray.mv2d_xray.models.mv2d_roi_head import gather_rows, roi_cell_centres
from projects.mv2d_xray.mv2d_xray.models.query_generator import lift_roi_points

init_default_scope('mmdet3d')


def _augmented_lidar2img(geometry: XrayGeometry, aug: bool) -> np.ndarray:
    """All views' ``lidar2img``; with ``aug``, after a resize + crop + flip."""
    lidar2img = geometry.view_matrices()['lidar2img']
    if aug:
        matrix = image_aug_matrix(scale=(0.5, 0.5), crop_offset=(12.0, 7.0),
                                  flip_width=geometry.image_size[1] / 2 - 12)
        lidar2img = apply_image_aug(matrix, lidar2img)
    return lidar2img


# -- query generator ------------------------------------------------------------------
@pytest.mark.parametrize('aug', [False, True])
def test_lift_roi_points_recovers_known_points(aug):
    """A point seen at a known RoI position and depth lifts back to itself, in every
    view, also after a flip (a reflection on top of the DRR mirror geometry)."""
    geometry = XrayGeometry(num_views=10)
    lidar2img = _augmented_lidar2img(geometry, aug)
    rng = np.random.default_rng(0)
    points = rng.uniform(-120, 120, size=(10, 3))               # one per view
    uv, depth = project_points(lidar2img, points[:, None])       # (V, 1, 2)
    uv, depth = uv[:, 0], depth[:, 0]
    size = np.array([14.0, 9.0])
    uv_roi = np.array([0.2, -0.3])                              # off-centre
    centre = uv - uv_roi * size
    bboxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    lifted = lift_roi_points(
        torch.from_numpy(bboxes), torch.from_numpy(lidar2img),
        torch.from_numpy(np.tile(uv_roi, (10, 1))), torch.from_numpy(depth))
    assert np.abs(lifted.numpy() - points).max() <= 1e-4


def test_query_generator_starts_on_the_ray_at_the_isocentre_depth():
    """With a zero regression the reference point is the box centre at the depth of
    the isocentre (``sod_mm`` here) and it moves with the regressed offset."""
    geometry = XrayGeometry(num_views=4, image_size=(128, 128))
    mats = geometry.view_matrices()
    generator = MODELS.build(
        dict(type='MV2DXrayQueryGenerator', in_channels=8, conv_out_channels=8,
             fc_out_channels=16, extra_encoding_channels=(16, 8),
             depth_scale_mm=100.0))
    generator.init_weights()
    torch.nn.init.zeros_(generator.fc_center.weight)
    bboxes = torch.tensor([[40., 50., 60., 62.], [10., 80., 18., 90.],
                           [70., 20., 90., 30.], [60., 60., 63., 66.]])
    lidar2img = torch.from_numpy(mats['lidar2img'])
    cam2img = torch.from_numpy(mats['cam2img'])
    feats = torch.randn(4, 8, 7, 7)
    ref = generator(feats, bboxes, lidar2img, cam2img)
    uv, depth = project_points(lidar2img, ref.double()[:, None])
    centre = (bboxes[:, :2] + bboxes[:, 2:]) / 2
    assert torch.allclose(uv[:, 0].float(), centre, atol=1e-3)
    assert torch.allclose(depth[:, 0].float(), torch.full((4, ), 300.0),
                          atol=1e-3)
    with torch.no_grad():
        generator.fc_center.bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
    _, depth = project_points(lidar2img, generator(feats, bboxes, lidar2img,
                                                   cam2img).double()[:, None])
    assert torch.allclose(depth[:, 0].float(), torch.full((4, ), 350.0), atol=1e-3)
    # tiny boxes carry no intrinsics feature
    assert generator.intrinsic_feats(bboxes, cam2img)[3].abs().sum() == 0
    assert generator.intrinsic_feats(bboxes, cam2img)[0].abs().sum() > 0


# -- depth priors and query merging ---------------------------------------------------
def _prior_scene(num_views: int):
    """Three findings (ct points) seen in every view as 8 px boxes centred on their
    exact projections, plus one lone detection (view 0 only). Returns the RoI head of
    the tiny test config, the boxes ``(R, 4)``, their view ids, all views'
    ``lidar2img``, the image shape and the points."""
    geometry = make_geometry(num_views, image_size=(256, 256),
                             pixel_spacing_mm=1.5625)
    lidar2img = torch.from_numpy(geometry.view_matrices()['lidar2img'])
    points = np.array([[-25., 20., -60.], [30., -15., 0.], [5., 25., 60.]])
    uv, _ = project_points(lidar2img.numpy(), points[None])          # (V, 3, 2)
    centres = np.concatenate([uv.reshape(-1, 2), [[20.0, 230.0]]])
    view_ids = np.concatenate([np.repeat(np.arange(num_views), 3), [0]])
    bboxes = np.concatenate([centres - 4, centres + 4], axis=1)
    head = MODELS.build(tiny_mv2d_config()['roi_head'])
    return (head, torch.from_numpy(bboxes).float(), torch.from_numpy(view_ids),
            lidar2img, geometry.image_size, points)


def _priors(head, bboxes, view_ids, lidar2img, shape):
    scene_ids = torch.zeros_like(view_ids)
    corr, mask = head.correlate(bboxes, scene_ids, view_ids, lidar2img[None],
                                [shape], 1)
    return head.triangulate_priors(bboxes, lidar2img, view_ids, corr, mask)


@pytest.mark.parametrize('num_views', [3, 10])
def test_triangulated_priors_are_exact_and_fall_back_on_the_ray(num_views):
    head, bboxes, view_ids, lidar2img, shape, points = _prior_scene(num_views)
    prior, ok = _priors(head, bboxes, view_ids, lidar2img, shape)
    assert ok[:-1].all()
    truth = torch.from_numpy(points).float().repeat(num_views, 1)
    assert (prior[:-1] - truth).norm(dim=1).max() <= 1e-3
    # the lone detection has no partner: its box centre's ray at the isocentre depth
    assert not ok[-1]
    uv, depth = project_points(lidar2img[0].double(), prior[-1:].double())
    assert torch.allclose(uv[0].float(), torch.tensor([20.0, 230.0]), atol=1e-3)
    assert abs(float(depth[0]) - 300.0) <= 1e-3


def test_triangulated_prior_resists_a_wrong_partner():
    """One view's box of a finding is 40 px off (about 30 mm at the isocentre): the
    reweighted prior stays much closer to the finding than plain least squares."""
    head, bboxes, view_ids, lidar2img, shape, points = _prior_scene(10)
    bboxes[3 * 4, [0, 2]] += 40.0                    # finding 0 in view 4
    prior, ok = _priors(head, bboxes, view_ids, lidar2img, shape)
    truth = torch.from_numpy(points[0]).float()
    robust = (prior[0] - truth).norm()
    own = bboxes[0:30:3]                             # finding 0 in views 0..9
    centres = (own[:, :2] + own[:, 2:]) / 2
    plain = triangulate_points(lidar2img, centres.double()).float()
    assert ok[0] and robust < 1.0 < (plain - truth).norm()


def test_merging_keeps_one_query_per_finding_the_best_scoring():
    head, bboxes, view_ids, lidar2img, shape, points = _prior_scene(10)
    prior, ok = _priors(head, bboxes, view_ids, lidar2img, shape)
    scene_ids = torch.zeros_like(view_ids)
    scores = torch.rand(len(bboxes), generator=torch.Generator().manual_seed(0))
    assert head.merge_dist_mm == 10.0
    keep = head.merge_queries(prior, ok, scene_ids, scores)
    finding = torch.arange(len(bboxes)) % 3
    # one query per finding, its best-scoring detection, and the lone detection
    assert len(keep) == 4 and keep[-1] == len(bboxes) - 1
    for k in range(3):
        members = (finding[:-1] == k).nonzero()[:, 0]
        assert members[scores[members].argmax()] in keep[:-1]
    # two scenes never merge; without merge_dist_mm every RoI is a query
    two_scenes = torch.cat([torch.zeros(15), torch.ones(16)]).long()
    assert len(head.merge_queries(prior, ok, two_scenes, scores)) > 4
    head.merge_dist_mm = None
    assert torch.equal(head.merge_queries(prior, ok, scene_ids, scores),
                       torch.arange(len(bboxes)))


def test_view_probes_fill_the_views_without_a_detection():
    """Finding 0 is missed by the 2D stage in views 2 and 5: its query (lifted in view 0)
    gets exactly two probes, there, centred on the finding's exact projections with its
    own box's size; findings seen everywhere and the lone detection (no valid prior) get
    none."""
    num_views = 10
    head, bboxes, view_ids, lidar2img, shape, points = _prior_scene(num_views)
    finding = torch.arange(len(bboxes)) % 3
    missed = (finding == 0) & ((view_ids == 2) | (view_ids == 5))
    missed[-1] = False                                          # the lone detection
    bboxes, view_ids = bboxes[~missed], view_ids[~missed]
    bboxes[0] = torch.tensor([bboxes[0, 0] - 2, bboxes[0, 1] - 1, bboxes[0, 2] + 2,
                              bboxes[0, 3] + 1])               # a 12 x 10 px box
    prior, ok = _priors(head, bboxes, view_ids, lidar2img, shape)
    rois = torch.cat([view_ids[:, None].float(), bboxes], dim=1)
    cam2img = make_geometry(num_views).view_matrices()['cam2img']
    geo = head.gather_rois(rois, [dict(lidar2img=lidar2img.numpy(), cam2img=cam2img,
                                       img_shape=shape)], num_views)
    corr, mask = head.correlate(bboxes, geo.scene_ids, view_ids, lidar2img[None],
                                [shape], 1)
    queries = torch.tensor([0, 1, 2, len(bboxes) - 1])          # findings 0, 1, 2; lone
    probes, slots, slot_mask = head.probe_rois(prior[queries], ok[queries], queries,
                                               corr[queries], mask[queries], geo)
    assert slot_mask.shape == (4, num_views)
    assert slot_mask[0].nonzero()[:, 0].tolist() == [2, 5]
    assert not slot_mask[1:].any() and len(probes) == 2
    truth, _ = project_points(lidar2img[[2, 5]].double(),
                              torch.from_numpy(points[:1]).expand(2, 1, 3))
    own = probes[slots[0, [2, 5]]]
    assert own[:, 0].tolist() == [2.0, 5.0]                     # scene 0, views 2 and 5
    centre = (own[:, 1:3] + own[:, 3:]) / 2
    assert (centre - truth[:, 0].float()).abs().max() < 1e-3
    assert torch.allclose(own[:, 3:] - own[:, 1:3], torch.tensor([[12.0, 10.0]] * 2))
    # a prior that projects outside a view's image gets no probe there
    far = torch.tensor([[0.0, 0.0, 400.0]])
    _, _, outside = head.probe_rois(far, torch.tensor([True]), queries[:1], corr[:1],
                                    mask[:1], geo)
    assert not outside.any()


@pytest.mark.parametrize('view_probes', [False, True])
def test_view_probes_read_the_features_where_the_2d_stage_missed(view_probes):
    """The RoI head on finding 0 missed in views 2 and 5 (random features): changing the
    stride-4 features around its projection in view 2, where there is no detection,
    changes the decoded boxes only with ``view_probes``; its explanation then lists all
    10 views, the two probes without a 2D score, and attention on them."""
    from projects.mv2d_xray.mv2d_xray.models.explanation import explain_query
    torch.manual_seed(0)
    num_views = 10
    head, bboxes, view_ids, lidar2img, shape, points = _prior_scene(num_views)
    head.view_probes = view_probes
    head.eval()
    finding = torch.arange(len(bboxes)) % 3
    missed = (finding == 0) & ((view_ids == 2) | (view_ids == 5))
    missed[-1] = False
    rois = torch.cat([view_ids[~missed, None].float(), bboxes[~missed]], dim=1)
    metas = [dict(lidar2img=lidar2img.numpy(), img_shape=shape,
                  cam2img=make_geometry(num_views).view_matrices()['cam2img'])]
    dims = head.bbox_roi_extractor.out_channels
    feats = [torch.randn(num_views, dims, shape[0] // s, shape[1] // s)
             for s in head.bbox_roi_extractor.featmap_strides]
    uv, _ = project_points(lidar2img[2].double(), torch.from_numpy(points[:1]))
    col, row = (uv[0] / 4).long().tolist()
    changed = [f.clone() for f in feats]
    changed[0][2, :, row - 3:row + 4, col - 3:col + 4] += 3.0
    scores = torch.ones(len(rois))
    with torch.no_grad():
        before = head(feats, rois, metas, num_views, scores, explain=True)
        after = head(changed, rois, metas, num_views, scores)
    moved = (before['all_codes'] - after['all_codes']).abs().max()
    query = int((before['evidence'].query_rois == 0).nonzero()[0, 0])
    expl = explain_query(before['evidence'], query, query)
    if not view_probes:
        assert moved == 0
        assert sorted(expl['attended_views'].tolist()) == [0, 1, 3, 4, 6, 7, 8, 9]
        return
    assert moved > 1e-3
    assert sorted(expl['attended_views'].tolist()) == list(range(num_views))
    probes = torch.isin(expl['attended_views'], torch.tensor([2, 5]))
    assert torch.isnan(expl['attended_scores'][probes]).all()
    assert not torch.isnan(expl['attended_scores'][~probes]).any()
    assert torch.equal(expl['attended_probes'], probes)
    # without 2D scores the explicit flag still tells probes from detections
    with torch.no_grad():
        unscored = head(feats, rois, metas, num_views, None, explain=True)
    expl = explain_query(unscored['evidence'], query, query)
    assert torch.isnan(expl['attended_scores']).all()
    assert torch.equal(expl['attended_probes'], probes)
    assert (expl['attention'][probes] > 0).all()
    assert torch.allclose(expl['attention'].sum(), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize('support_embedding', [None, dict(gate_px=3.0)])
def test_support_embedding_lets_the_decoder_read_the_views_support(support_embedding):
    """The same features and queries, one partner detection's 2D score lowered (the
    merging keeps the same heads): the decoded scores and boxes change only with
    ``support_embedding``, which starts each query from its views' support."""
    torch.manual_seed(0)
    num_views = 4
    _, bboxes, view_ids, lidar2img, shape, _ = _prior_scene(num_views)
    config = tiny_mv2d_config()['roi_head']
    config['support_embedding'] = support_embedding
    head = MODELS.build(config)
    head.init_weights()
    head.eval()
    rois = torch.cat([view_ids[:, None].float(), bboxes], dim=1)
    metas = [dict(lidar2img=lidar2img.numpy(), img_shape=shape,
                  cam2img=make_geometry(num_views).view_matrices()['cam2img'])]
    dims = head.bbox_roi_extractor.out_channels
    feats = [torch.randn(num_views, dims, shape[0] // s, shape[1] // s)
             for s in head.bbox_roi_extractor.featmap_strides]
    scores = torch.ones(len(rois))
    lowered = scores.clone()
    lowered[3] = 0.2                                # finding 0 in view 1, not a head
    with torch.no_grad():
        before = head(feats, rois, metas, num_views, scores)
        after = head(feats, rois, metas, num_views, lowered)
    assert torch.equal(before['query_priors'], after['query_priors'])
    moved = max((before[key] - after[key]).abs().max()
                for key in ('all_cls_scores', 'all_codes'))
    assert (moved > 1e-4) if support_embedding else (moved == 0)


# -- box correlation ------------------------------------------------------------------
def _scene_boxes(num_views: int, aug: bool = False):
    """Three findings at well separated heights, their 2D boxes in every view
    (shuffled), the views' ``lidar2img`` and the image shape."""
    geometry = make_geometry(num_views, image_size=(256, 256),
                             pixel_spacing_mm=1.5625)
    lidar2img = _augmented_lidar2img(geometry, aug)
    height, width = geometry.image_size
    if aug:
        height, width = height // 2 - 7, width // 2 - 12
    boxes3d = np.array([[-25., 20., -60., 10., 10., 10., 0.],
                        [30., -15., 0., 12., 10., 10., 0.],
                        [5., 25., 60., 10., 12., 10., 0.]])
    boxes2d = project_boxes3d(lidar2img, boxes3d)                  # (V, M, 4)
    view_ids = np.repeat(np.arange(num_views), len(boxes3d))
    instance_ids = np.tile(np.arange(len(boxes3d)), num_views)
    order = np.random.default_rng(1).permutation(len(view_ids))
    return (torch.from_numpy(boxes2d.reshape(-1, 4)[order]).float(),
            torch.from_numpy(view_ids[order]),
            torch.from_numpy(instance_ids[order]),
            torch.from_numpy(lidar2img), (height, width))


@pytest.mark.parametrize('num_views,aug', [(3, False), (10, False), (20, False),
                                           (10, True)])
@pytest.mark.parametrize('mode', ['topk_matched:1', 'all_matched'])
def test_box_correlation_selects_the_same_finding(num_views, aug, mode):
    bboxes, view_ids, instance_ids, lidar2img, shape = _scene_boxes(
        num_views, aug)
    correlation = MV2DXrayBoxCorrelation(correlation_mode=mode, num_depth=64,
                                         depth_range=DEPTH_RANGE)
    corr, mask = correlation(bboxes, view_ids, lidar2img, shape)
    assert corr.shape == mask.shape and corr.shape[0] == len(bboxes)
    assert torch.equal(corr[:, 0], torch.arange(len(bboxes)))
    for i in range(len(bboxes)):
        partners = corr[i][mask[i]][1:]
        # exactly the same finding, once in every other view
        assert (instance_ids[partners] == instance_ids[i]).all()
        assert sorted(view_ids[partners].tolist()) == [
            v for v in range(num_views) if v != view_ids[i]
        ]


def test_box_correlation_topk_keeps_k_per_view_and_handles_empty_input():
    bboxes, view_ids, _, lidar2img, shape = _scene_boxes(10)
    correlation = MV2DXrayBoxCorrelation(correlation_mode='topk_matched:2',
                                         depth_range=DEPTH_RANGE)
    corr, mask = correlation(bboxes, view_ids, lidar2img, shape)
    assert (mask.sum(1) <= 1 + 2 * 9).all()
    corr, mask = correlation(bboxes[:0], view_ids[:0], lidar2img, shape)
    assert corr.shape == (0, 1) and mask.shape == (0, 1)
    with pytest.raises(ValueError, match='correlation_mode'):
        MV2DXrayBoxCorrelation(correlation_mode='topk:1')


# -- assignment -----------------------------------------------------------------------
def _assigner():
    return TASK_UTILS.build(
        dict(type='MV2DXrayHungarianAssigner3D',
             match_costs=[dict(type='mmdet.FocalLossCost', weight=2.0),
                          dict(type='MV2DXrayBBox3DL1Cost', weight=0.25)]))


def test_assigner_matches_the_obvious_pairs():
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 6, generator=gen) * 10
    preds = torch.rand(6, 6, generator=gen) * 10 + 50       # far away
    preds[4], preds[1], preds[2] = gt[0] + 0.1, gt[1] - 0.1, gt[2] + 0.05
    result = _assigner().assign(
        InstanceData(scores=torch.zeros(6, 1), bboxes=preds),
        InstanceData(labels=torch.zeros(3, dtype=torch.long), bboxes=gt))
    assert result.gt_inds.tolist() == [0, 2, 3, 0, 1, 0]
    assert result.labels.tolist() == [-1, 0, 0, -1, 0, -1]


def test_focal_cost_prefers_confident_queries():
    """Two queries on the GT box: the confident one is matched (the earlier X-ray
    port's ``binary_input`` cost picked the unconfident one)."""
    gt = torch.tensor([[1.0, 2.0, 3.0, 0.5, 0.5, 0.5]])
    preds = gt.repeat(2, 1)
    assigner = _assigner()
    for logits, expected in (([-3.0, 3.0], [0, 1]), ([3.0, -3.0], [1, 0])):
        result = assigner.assign(
            InstanceData(scores=torch.tensor(logits)[:, None], bboxes=preds),
            InstanceData(labels=torch.zeros(1, dtype=torch.long), bboxes=gt))
        assert result.gt_inds.tolist() == expected
    cost = assigner.match_costs[0](
        InstanceData(scores=torch.tensor([[3.0], [0.0], [-3.0]])),
        InstanceData(labels=torch.zeros(1, dtype=torch.long)))
    assert cost[0, 0] < cost[1, 0] < cost[2, 0]


def _targets_head(**train_cfg):
    """A one-layer cross-attention head whose ``train_cfg`` holds the assigner of
    :func:`_assigner` and ``train_cfg``."""
    return MODELS.build(
        dict(type='MV2DXrayCrossAttentionHead', embed_dims=16,
             transformer=dict(type='MV2DXrayTransformer', num_layers=1,
                              embed_dims=16, num_heads=2, feedforward_channels=32),
             bbox_coder=dict(type='MV2DXrayNMSFreeCoder', pc_range=PC_RANGE),
             train_cfg=dict(assigner=dict(
                 type='MV2DXrayHungarianAssigner3D',
                 match_costs=[dict(type='mmdet.FocalLossCost', weight=2.0),
                              dict(type='MV2DXrayBBox3DL1Cost', weight=0.25)]),
                 **train_cfg)))


@pytest.mark.parametrize('extra_pos_radius', [None, 1.0])
def test_targets_one_to_one_or_every_query_on_a_finding(extra_pos_radius):
    """One 20 mm finding at (10, 0, 0) mm: query 0 is matched; query 1 sits 6 mm from
    the finding (within its 10 mm radius), query 2 22 mm away. One-to-one matching
    makes only query 0 a positive; with ``extra_pos_radius=1`` query 1 is one too,
    with the finding's box as its target."""
    head = _targets_head(extra_pos_radius=extra_pos_radius)
    coder = head.bbox_coder
    gt = coder.encode(torch.tensor([[10., 0., 0., 20., 20., 20.]]))
    preds = coder.encode(torch.tensor([[10., 0., 0., 20., 20., 20.],
                                       [16., 0., 0., 20., 20., 20.],
                                       [10., 22., 0., 20., 20., 20.]]))
    labels, targets, weights, num_pos = head.get_targets_single(
        torch.zeros(3, 1), preds, gt, torch.zeros(1, dtype=torch.long))
    positives = [0, 1] if extra_pos_radius else [0]
    assert labels.tolist() == [0 if q in positives else 1 for q in range(3)]
    assert num_pos == len(positives)
    for q in positives:
        assert torch.equal(targets[q], gt[0]) and (weights[q] > 0).all()
    assert (weights[2] == 0).all()


@pytest.mark.parametrize('max_match_dist_mm', [None, 10.0, 30.0])
def test_targets_drop_hungarian_pairs_further_than_max_match_dist(max_match_dist_mm):
    """Two findings; the only query near finding 0 sits 2 mm off it, the one paired with
    finding 1 (as one-to-one matching pairs every finding) 22 mm away. With
    ``max_match_dist_mm=10`` that pair is background (no box target); with 30, or
    without the setting, it is a positive of finding 1."""
    head = _targets_head(max_match_dist_mm=max_match_dist_mm)
    coder = head.bbox_coder
    gt = coder.encode(torch.tensor([[10., 0., 0., 6., 6., 6.],
                                    [-80., 40., 0., 6., 6., 6.]]))
    preds = coder.encode(torch.tensor([[12., 0., 0., 6., 6., 6.],
                                       [-80., 62., 0., 6., 6., 6.]]))
    labels, targets, weights, num_pos = head.get_targets_single(
        torch.zeros(2, 1), preds, gt, torch.zeros(2, dtype=torch.long))
    far_is_positive = max_match_dist_mm is None or max_match_dist_mm > 22
    assert labels.tolist() == [0, 0 if far_is_positive else 1]
    assert num_pos == (2 if far_is_positive else 1)
    assert torch.equal(targets[0], gt[0])
    assert bool((weights[1] > 0).all()) == far_is_positive
    with pytest.raises(ValueError, match='max_match_dist_mm'):
        _targets_head(max_match_dist_mm=0.0)


@pytest.mark.parametrize('match_dist_from,priors,positives', [
    ('prediction', 'both', [0]),      # q0 predicted 2 mm off finding 0, q1 22 mm off 1
    ('prior', 'both', [1]),           # q0's prior 30 mm off finding 0, q1's 1 mm off 1
    ('prior', 'q0 only', []),         # q1 without a prior: its predicted centre, 22 mm
    ('prior', None, [0]),             # no priors given: the predicted centres
])
def test_targets_gate_pairs_on_the_queries_priors(match_dist_from, priors, positives):
    """``max_match_dist_mm=10`` measured from the predicted centres or, with
    ``match_dist_from='prior'``, from the queries' priors (NaN: no prior, the predicted
    centre instead): the same two Hungarian pairs are kept or dropped by where each
    query's prior lies, not by where its prediction went."""
    head = _targets_head(max_match_dist_mm=10.0, match_dist_from=match_dist_from)
    coder = head.bbox_coder
    gt = coder.encode(torch.tensor([[10., 0., 0., 6., 6., 6.],
                                    [-80., 40., 0., 6., 6., 6.]]))
    preds = coder.encode(torch.tensor([[12., 0., 0., 6., 6., 6.],
                                       [-80., 62., 0., 6., 6., 6.]]))
    query_priors = {'both': torch.tensor([[40., 0., 0.], [-80., 41., 0.]]),
                    'q0 only': torch.tensor([[40., 0., 0.], [math.nan] * 3]),
                    None: None}[priors]
    labels, targets, weights, num_pos = head.get_targets_single(
        torch.zeros(2, 1), preds, gt, torch.zeros(2, dtype=torch.long), query_priors)
    assert labels.tolist() == [0 if q in positives else 1 for q in range(2)]
    assert num_pos == len(positives)
    for q in range(2):
        assert bool((weights[q] > 0).all()) == (q in positives)
        if q in positives:
            assert torch.equal(targets[q], gt[q])
    with pytest.raises(ValueError, match='match_dist_from'):
        _targets_head(max_match_dist_mm=10.0, match_dist_from='decoded')


def test_assigner_survives_non_finite_predictions():
    preds = torch.zeros(3, 6)
    preds[1] = float('nan')
    result = _assigner().assign(
        InstanceData(scores=torch.tensor([[0.0], [float('nan')], [0.0]]),
                     bboxes=preds),
        InstanceData(labels=torch.zeros(2, dtype=torch.long),
                     bboxes=torch.zeros(2, 6)))
    assert (result.gt_inds > 0).sum() == 2


# -- box coding and post-processing ----------------------------------------------------
def test_coder_round_trip_and_decodes_every_query_sorted():
    """The coder decodes every query, by decreasing score: no threshold, cap or
    centre-range filter of its own (the RoI head's ``test_cfg`` has them; see
    ``test_roi_head_select_has_the_only_threshold_and_cap``)."""
    coder = MV2DXrayNMSFreeCoder(pc_range=PC_RANGE)
    boxes = torch.tensor([[10., -20., 30., 8., 12., 20.],
                          [-149., 0., 149., 1., 2., 3.]])
    codes = coder.encode(boxes)
    assert torch.allclose(codes[0, :3], torch.tensor([160., 130., 180.]) / 300)
    assert torch.allclose(coder.decode_bboxes(codes)[:, :6], boxes, atol=1e-4)
    logits = torch.tensor([[2.0], [3.0], [-3.0], [1.0]])
    codes = torch.cat([codes, codes[:1], codes[:1]])
    out = coder.decode(logits, codes)
    assert torch.allclose(out['scores'], torch.sigmoid(torch.tensor([3.0, 2.0, 1.0, -3.0])))
    assert torch.allclose(out['bboxes'], coder.decode_bboxes(codes[[1, 0, 3, 2]]))
    assert out['bboxes'].shape == (4, 7) and (out['bboxes'][:, 6] == 0).all()
    assert (out['labels'] == 0).all()
    for removed in ('post_center_range', 'max_num', 'score_threshold'):
        with pytest.raises(TypeError, match=removed):
            MV2DXrayNMSFreeCoder(pc_range=PC_RANGE, **{removed: None})


@pytest.mark.parametrize('test_cfg, kept_logits', [
    (dict(), [3.0, 2.0, 1.0, 0.0, -3.0]),                    # defaults: score > 0, 300
    (dict(score_thr=0.55, max_per_scene=10), [3.0, 2.0, 1.0]),
    (dict(score_thr=0.0, max_per_scene=2), [3.0, 2.0]),
    # threshold, then suppression (query 0 lies in query 1's box), then the cap
    (dict(score_thr=0.2, max_per_scene=3,
          nms=dict(type='centre_distance', dist_thr_mm=5.0)), [3.0, 2.0, 0.0]),
])
def test_roi_head_select_has_the_only_threshold_and_cap(test_cfg, kept_logits):
    head_cfg = dict(tiny_mv2d_config()['roi_head'], test_cfg=test_cfg)
    head = MODELS.build(head_cfg)
    coder = head.bbox_coder
    boxes = torch.tensor([[0., 0., 0., 10., 10., 10.], [2., 0., 0., 10., 10., 10.],
                          [40., 0., 0., 10., 10., 10.], [80., 0., 0., 10., 10., 10.],
                          [-80., 0., 0., 10., 10., 10.]])
    logits = torch.tensor([[1.0], [3.0], [-3.0], [0.0], [2.0]])
    result = head.to_instances(head.select(coder.decode(logits, coder.encode(boxes))), dict())
    assert torch.allclose(result.scores_3d, torch.sigmoid(torch.tensor(kept_logits)))
    centre_x = {3.0: 2.0, 2.0: -80.0, 1.0: 0.0, 0.0: 80.0, -3.0: 40.0}
    assert result.bboxes_3d.gravity_center[:, 0].tolist() == pytest.approx(
        [centre_x[k] for k in kept_logits], abs=1e-3)
    head.test_cfg = dict(nms=dict(type='center_distance'))
    with pytest.raises(ValueError, match='centre_distance'):
        head.to_instances(head.select(coder.decode(logits, coder.encode(boxes))), dict())


def test_centre_distance_nms():
    boxes = torch.tensor([[0., 0., 0., 10., 10., 10., 0.],
                          [3., 0., 0., 10., 10., 10., 0.],     # inside box 0
                          [40., 0., 0., 10., 10., 10., 0.],
                          [8., 0., 0., 4., 4., 4., 0.]])       # 8 mm from box 0
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.zeros(4, dtype=torch.long)
    out = centre_distance_nms(boxes, scores, labels, dist_thr_mm=0.0)
    assert out['scores'].tolist() == pytest.approx([0.9, 0.7, 0.6])
    out = centre_distance_nms(boxes, scores, labels, dist_thr_mm=10.0)
    assert out['scores'].tolist() == pytest.approx([0.9, 0.7])
    merged = centre_distance_nms(boxes, scores, labels, merge=True)
    assert merged['bboxes'][0, 0] == pytest.approx(0.8 * 3 / 1.7)
    other_class = centre_distance_nms(boxes, scores, torch.tensor([0, 1, 0, 0]))
    assert len(other_class['scores']) == 4
    # across classes, box 1 (class 1) inside box 0 goes as if it had box 0's class
    agnostic = centre_distance_nms(boxes, scores, torch.tensor([0, 1, 0, 0]),
                                   class_agnostic=True)
    assert agnostic['scores'].tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert agnostic['keep'].tolist() == [0, 2, 3]
    assert agnostic['labels'].tolist() == [0, 0, 0]


@pytest.mark.parametrize('ratio, kept', [
    (None, [0, 2, 1, 3]),   # per class: the crack and inclusion names stay
    (1.0, [0, 3]),          # as class_agnostic: every other name at the pore goes
    (2.0, [0, 2, 3]),       # the crack scores 1/3 of the pore (goes), the inclusion 3/5
    (4.0, [0, 2, 1, 3]),    # neither scores under 1/4 of the pore
])
def test_centre_distance_nms_cross_class_ratio(ratio, kept):
    """``cross_class_ratio``: a box of another class within the NMS's reach goes only
    when the kept box scores at least ``ratio`` times as much; a box out of reach stays
    whatever its score; boxes of one class suppress each other as always."""
    boxes = torch.tensor([[0., 0., 0., 2., 2., 2., 0.],      # pore, 0.9
                          [0.5, 0., 0., 2., 2., 2., 0.],     # crack 0.5 mm away, 0.3
                          [0., 0.4, 0., 2., 2., 2., 0.],     # inclusion 0.4 mm away, 0.54
                          [9., 0., 0., 2., 2., 2., 0.],      # crack 9 mm away, 0.1
                          [0., 0., 0.3, 2., 2., 2., 0.]])    # pore 0.3 mm away, 0.05
    scores = torch.tensor([0.9, 0.3, 0.54, 0.1, 0.05])
    labels = torch.tensor([0, 2, 1, 2, 0])
    out = centre_distance_nms(boxes, scores, labels, dist_thr_mm=2.0,
                              cross_class_ratio=ratio)
    assert out['keep'].tolist() == kept
    with pytest.raises(ValueError, match='cross_class_ratio is at least 1'):
        centre_distance_nms(boxes, scores, labels, cross_class_ratio=0.5)


def _refine_head(radius):
    return MODELS.build(dict(tiny_mv2d_config()['roi_head'],
                             test_cfg=dict(refine_radius_mm=radius)))


@pytest.mark.parametrize('radius, centres', [
    (0.0, [[0., 0., 0.], [10., 0., 0.], [0., 0., 0.]]),          # onto the valid prior
    (2.0, [[1.2, 1.6, 0.], [10., 0., 0.], [0., 0., 2.]]),        # 2 mm along the line
    (10.0, [[3., 4., 0.], [10., 0., 0.], [0., 0., 5.]]),         # already within 10 mm
])
def test_limit_refinement_hand_computed(radius, centres):
    """``test_cfg.refine_radius_mm``: a decoded centre of a query with a valid prior
    moves to within the radius of the prior along the line between them; a query
    without a valid prior, extents, scores and labels stay."""
    pred = dict(bboxes=torch.tensor([[3., 4., 0., 1., 2., 3., 0.],
                                     [10., 0., 0., 1., 1., 1., 0.],
                                     [0., 0., 5., 2., 2., 2., 0.]]),
                scores=torch.tensor([0.9, 0.5, 0.2]), labels=torch.tensor([0, 0, 1]),
                query_ids=torch.tensor([1, 0, 1]))
    priors = torch.tensor([[-7., 3., 1.], [0., 0., 0.]])        # query 0's is not valid
    prior_ok = torch.tensor([False, True])
    out = _refine_head(radius).limit_refinement(pred, priors, prior_ok)
    assert torch.allclose(out['bboxes'][:, :3], torch.tensor(centres), atol=1e-6)
    assert torch.equal(out['bboxes'][:, 3:], pred['bboxes'][:, 3:])
    for key in ('scores', 'labels', 'query_ids'):
        assert torch.equal(out[key], pred[key])
    assert _refine_head(None).limit_refinement(pred, priors, prior_ok) is pred
    with pytest.raises(ValueError, match='refine_radius_mm must be None or >= 0, got -1'):
        _refine_head(-1.0)
    with pytest.raises(ValueError, match='needs triangulate_prior=True'):
        MODELS.build(dict(tiny_mv2d_config()['roi_head'], triangulate_prior=False,
                          test_cfg=dict(refine_radius_mm=0.0)))


def _four_view_point():
    """A 4-view ring of 100 x 100 px: ``num_views``, ``lidar2img`` ``(4, 4, 4)``, a ct point
    ``(1, 3)`` mm and its projections ``uv`` ``(4, 2)`` px."""
    num_views = 4
    lidar2img = XrayGeometry(num_views=num_views, image_size=(100, 100)).view_matrices()[
        'lidar2img']
    point = torch.tensor([[10.0, -5.0, 8.0]])
    uv = project_points(torch.from_numpy(lidar2img), point.double())[0][:, 0]
    return num_views, lidar2img, point, uv


@pytest.mark.parametrize('rule', [dict(), dict(gate_px=3.0, gate_frac=0.5)],
                         ids=['grown-boxes', 'gate'])
def test_rescore_per_class_support_hand_computed(rule):
    """``view_support.per_class``: a 3D box of class ``c`` is supported only by the 2D
    detections of class ``c``; without it, by the best detection of any class. Both
    support rules (the blades benchmark config takes the gate with ``per_class``): in
    view 0 both classes' detections are centred on the projection, so the gate's nearest
    detection is a tie that the better score wins."""
    num_views, lidar2img, point, uv = _four_view_point()
    scene = 1                                                    # the batch's 2nd scene
    rois = torch.tensor([[scene * num_views + view, u - 3, v - 3, u + 3, v + 3]
                         for view, (u, v) in enumerate(uv.tolist())] +
                        [[scene * num_views, uv[0, 0] - 2, uv[0, 1] - 2,
                          uv[0, 0] + 2, uv[0, 1] + 2],
                         [0 * num_views + 1, uv[1, 0] - 3, uv[1, 1] - 3,   # scene 0's
                          uv[1, 0] + 3, uv[1, 1] + 3]], dtype=torch.float32)
    roi_scores = torch.tensor([0.8, 0.8, 0.8, 0.8, 0.5, 0.9])
    roi_labels = torch.tensor([1, 1, 1, 1, 0, 0])    # class 0: view 0 only (in scene 1)
    pred = dict(bboxes=torch.tensor([[10., -5., 8., 1., 1., 1., 0.]] * 2),
                scores=torch.tensor([0.6, 0.4]), labels=torch.tensor([0, 1]),
                query_ids=torch.tensor([0, 0]))
    supports = {}
    roi_head = tiny_mv2d_config()['roi_head']
    roi_head['bbox_head'] = dict(roi_head['bbox_head'], num_classes=2)
    for per_class in (False, True):
        head = MODELS.build(dict(roi_head, test_cfg=dict(
            view_support=dict(weight=1.0, per_class=per_class, **rule))))
        out = head.rescore(pred, dict(lidar2img=lidar2img), rois, roi_scores, scene,
                           num_views, roi_labels)
        supports[per_class] = dict(zip(out['labels'].tolist(), out['scores'].tolist()))
    assert supports[False] == pytest.approx({0: 0.8, 1: 0.8})
    assert supports[True] == pytest.approx({0: 0.5 / 4, 1: 0.8})
    with pytest.raises(ValueError, match='per_class needs'):
        head.rescore(pred, dict(lidar2img=lidar2img), rois, roi_scores, scene, num_views)
    with pytest.raises(ValueError, match='box label 2 is not a class of the head'):
        head.rescore(dict(pred, labels=torch.tensor([0, 2])), dict(lidar2img=lidar2img), rois,
                     roi_scores, scene, num_views, roi_labels)


def test_rescore_class_support_hand_computed():
    """``view_support.class_support``: a view's support of a box of class ``c`` is the
    largest ``class_support[c][c'] * s`` over its supporting detection of each class
    ``c'``. Class 1 is detected in all 4 views (0.8), class 0 in view 0 only (0.5); with
    row 0 ``[1, 0.25]`` a class-0 box gets ``max(0.5, 0.25 * 0.8)`` in view 0 and
    ``0.25 * 0.8`` in the others, a class-1 box (row ``[0, 1]``) 0.8 everywhere. Bad
    matrices are refused when the head is built, naming the setting."""
    num_views, lidar2img, point, uv = _four_view_point()
    rois = torch.tensor([[view, u - 3, v - 3, u + 3, v + 3]
                         for view, (u, v) in enumerate(uv.tolist())] +
                        [[0, uv[0, 0] - 2, uv[0, 1] - 2, uv[0, 0] + 2, uv[0, 1] + 2]])
    roi_scores = torch.tensor([0.8, 0.8, 0.8, 0.8, 0.5])
    roi_labels = torch.tensor([1, 1, 1, 1, 0])
    pred = dict(bboxes=torch.tensor([[10., -5., 8., 1., 1., 1., 0.]] * 2),
                scores=torch.tensor([0.6, 0.4]), labels=torch.tensor([0, 1]),
                query_ids=torch.tensor([0, 0]))

    def head(**view_support):
        roi_head = tiny_mv2d_config()['roi_head']
        roi_head['bbox_head'] = dict(roi_head['bbox_head'], num_classes=2)
        return MODELS.build(dict(roi_head, test_cfg=dict(view_support=dict(
            weight=1.0, gate_px=3.0, gate_frac=0.5, **view_support))))

    supports = {}
    for name, matrix in (('identity', None), ('pore-like', [[1.0, 0.25], [0.0, 1.0]])):
        out = head(per_class=True, class_support=matrix).rescore(
            pred, dict(lidar2img=lidar2img), rois, roi_scores, 0, num_views, roi_labels)
        supports[name] = dict(zip(out['labels'].tolist(), out['scores'].tolist()))
    assert supports['identity'] == pytest.approx({0: 0.5 / 4, 1: 0.8})
    assert supports['pore-like'] == pytest.approx({0: (0.5 + 3 * 0.2) / 4, 1: 0.8})
    with pytest.raises(ValueError, match='class_support .*needs per_class=True'):
        head(class_support=[[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r'class_support must be 2 x 2 .*shape \(3, 3\)'):
        head(per_class=True, class_support=torch.eye(3).tolist())
    with pytest.raises(ValueError, match=r'class_support: every weight must be in \[0, 1\]'):
        head(per_class=True, class_support=[[1.0, 1.5], [0.0, 1.0]])


def test_refine_on_detections_uses_the_scenes_detections_of_the_class():
    """``test_cfg.refine_to_detections``: a decoded centre 1 mm off moves onto the point
    its scene's box centres of its class triangulate to; a box of another class there, a
    box far from every detection, extents, scores, labels and the other scene's RoIs
    (nearer the decoded centre) leave it alone."""
    num_views, lidar2img, point, uv = _four_view_point()
    scene = 1                                                    # the batch's 2nd scene
    # scene 0's detections see a point 1.5 mm away, nearer the decoded centre
    uv_other = project_points(torch.from_numpy(lidar2img),
                              point.double() + torch.tensor([1.5, 0.0, 0.0]))[0][:, 0]
    rois = torch.tensor([[scene * num_views + view, u - 3, v - 3, u + 3, v + 3]
                         for view, (u, v) in enumerate(uv.tolist())] +
                        [[0 * num_views + view, u - 3, v - 3, u + 3, v + 3]
                         for view, (u, v) in enumerate(uv_other.tolist())],
                        dtype=torch.float64)
    roi_scores = torch.tensor([0.01] * 4 + [0.9] * 4)   # low scores support too
    roi_labels = torch.tensor([1] * 8)
    start = [11.0, -5.0, 8.0]
    pred = dict(bboxes=torch.tensor([start + [1., 2., 3., 0.], start + [1., 2., 3., 0.],
                                     [60.0, 60.0, -60.0, 1., 1., 1., 0.]],
                                    dtype=torch.float64),
                scores=torch.tensor([0.6, 0.5, 0.4]), labels=torch.tensor([1, 0, 1]),
                query_ids=torch.tensor([0, 0, 1]))
    head = MODELS.build(dict(tiny_mv2d_config()['roi_head'], test_cfg=dict(
        refine_to_detections=dict(gate_px=3.0))))
    out = head.refine_on_detections(pred, dict(lidar2img=lidar2img), rois, roi_scores,
                                    scene, num_views, roi_labels)
    assert torch.allclose(out['bboxes'][0, :3], point[0].double(), atol=1e-6)
    assert torch.equal(out['bboxes'][1:], pred['bboxes'][1:])
    assert torch.equal(out['bboxes'][:, 3:], pred['bboxes'][:, 3:])
    for key in ('scores', 'labels', 'query_ids'):
        assert torch.equal(out[key], pred[key])
    with pytest.raises(ValueError, match="needs the RoIs' 2D labels"):
        head.refine_on_detections(pred, dict(lidar2img=lidar2img), rois, roi_scores, scene,
                                  num_views)
    plain = MODELS.build(dict(tiny_mv2d_config()['roi_head']))
    assert plain.refine_on_detections(pred, dict(lidar2img=lidar2img), rois, roi_scores,
                                      scene, num_views, roi_labels) is pred
    for key, value in (('min_views', 1), ('gate_px', -1.0), ('gate_frac', -0.5)):
        with pytest.raises(ValueError, match=f'refine_to_detections.{key} must be >='):
            MODELS.build(dict(tiny_mv2d_config()['roi_head'], test_cfg=dict(
                refine_to_detections={key: value})))


def test_refine_on_detections_keeps_a_centre_the_re_triangulation_moves_too_far():
    """``refine_to_detections.max_move_mm``: the re-triangulated centre replaces the
    decoded one only within that distance of it; farther, the box stays where it was and
    is not confirmed (``confirmed`` False, so the ray search may move it). A negative
    limit is refused."""
    num_views, lidar2img, point, uv = _four_view_point()
    rois = torch.tensor([[view, u - 3, v - 3, u + 3, v + 3]
                         for view, (u, v) in enumerate(uv.tolist())], dtype=torch.float64)
    roi_scores, roi_labels = torch.full((4, ), 0.5), torch.zeros(4, dtype=torch.long)
    start = point[0].double() + torch.tensor([0.6, -0.3, 0.2], dtype=torch.float64)
    move = float(torch.linalg.norm(start - point[0].double()))       # 0.7 mm
    pred = dict(bboxes=torch.cat([start, torch.tensor([1., 1., 1., 0.],
                                                      dtype=torch.float64)])[None],
                scores=torch.tensor([0.6]), labels=torch.tensor([0]),
                query_ids=torch.tensor([0]))

    def refined(max_move_mm):
        head = MODELS.build(dict(tiny_mv2d_config()['roi_head'], test_cfg=dict(
            refine_to_detections=dict(gate_px=3.0, max_move_mm=max_move_mm))))
        return head.refine_on_detections(pred, dict(lidar2img=lidar2img), rois, roi_scores,
                                         0, num_views, roi_labels)

    for limit in (None, move + 0.05):
        out = refined(limit)
        assert torch.allclose(out['bboxes'][0, :3], point[0].double(), atol=1e-6)
        assert out['confirmed'].tolist() == [True]
    out = refined(move - 0.05)
    assert torch.equal(out['bboxes'], pred['bboxes'])
    assert out['confirmed'].tolist() == [False]
    with pytest.raises(ValueError, match='refine_to_detections.max_move_mm must be >= 0'):
        refined(-1.0)


def test_view_support_hand_computed():
    """Support = mean over views of the best 2D score whose (grown) box holds the
    centre's projection, computed by hand on a 4-view ring."""
    geometry = XrayGeometry(num_views=4, image_size=(100, 100))
    lidar2img = torch.from_numpy(geometry.view_matrices()['lidar2img'])
    point = torch.tensor([[10.0, -5.0, 8.0]])
    uv = project_points(lidar2img, point.double())[0][:, 0]     # (4, 2) px
    def box(view, dx, half):                                     # a box around uv + dx
        u, v = uv[view].tolist()
        return [u + dx - half, v - half, u + dx + half, v + half]
    boxes = torch.tensor([box(0, 0, 3), box(0, 1, 2),           # both hold it: best 0.9
                          box(1, 0, 3),                          # holds it: 0.4
                          box(2, 5, 3),                          # misses by 2 px
                          box(3, 0, 3)], dtype=torch.float32)    # holds it, but view 3
    scores = torch.tensor([0.5, 0.9, 0.4, 0.8, 0.7])
    views = torch.tensor([0, 0, 1, 2, 0])                        # ... is listed as view 0
    support = view_support(point, lidar2img, boxes, scores, views)
    assert support.tolist() == pytest.approx([(0.9 + 0.4) / 4])
    grown = view_support(point, lidar2img, boxes, scores, views, margin_px=2.5)
    assert grown.tolist() == pytest.approx([(0.9 + 0.4 + 0.8) / 4])
    # a point far outside every view, or no detections: no support
    behind = view_support(torch.tensor([[0.0, 0.0, 0.0]]) + 1e4, lidar2img, boxes, scores,
                          views)
    assert behind.tolist() == [0.0]
    assert view_support(point, lidar2img, boxes[:0], scores[:0], views[:0]).tolist() == [0.0]


def test_view_support_gate_rule_hand_computed():
    """``gate_px``: in each view the detection whose centre is *nearest* the projection
    counts, if within its gate ``max(gate_px, gate_frac * max(w, h))``; computed by hand
    on a 4-view ring."""
    geometry = XrayGeometry(num_views=4, image_size=(100, 100))
    lidar2img = torch.from_numpy(geometry.view_matrices()['lidar2img'])
    point = torch.tensor([[10.0, -5.0, 8.0]])
    uv = project_points(lidar2img, point.double())[0][:, 0]     # (4, 2) px
    def box(view, du, half):                                     # centred at uv + (du, 0)
        u, v = uv[view].tolist()
        return [u + du - half, v - half, u + du + half, v + half]
    boxes = torch.tensor([box(0, 1.0, 2), box(0, 2.5, 3),       # nearest 1 px: 0.3, not 0.9
                          box(1, 3.5, 1),                        # 3.5 px > gate 3: none
                          box(2, 3.5, 4),                        # gate 0.5 * 8 = 4 px: 0.8
                          box(3, 0.0, 20)], dtype=torch.float32)  # holds it, gate 20: 0.6
    scores = torch.tensor([0.3, 0.9, 0.4, 0.8, 0.6])
    views = torch.tensor([0, 0, 1, 2, 3])
    gated = view_support(point, lidar2img, boxes, scores, views, gate_px=3.0, gate_frac=0.5)
    assert gated.tolist() == pytest.approx([(0.3 + 0.8 + 0.6) / 4])
    # without gate_frac, view 2's 3.5 px is outside the 3 px gate and view 3's 20 px
    # box no longer widens it, but its centre is on the projection
    assert view_support(point, lidar2img, boxes, scores, views, gate_px=3.0).tolist() == \
        pytest.approx([(0.3 + 0.6) / 4])
    # the grown-box rule on the same detections: the best score among the holding boxes
    assert view_support(point, lidar2img, boxes, scores, views).tolist() == \
        pytest.approx([(0.9 + 0.8 + 0.6) / 4])
    # two detections equally near the projection (1 px either side): the better counts,
    # whichever comes first; a second centre in the same call gets its own support
    tied = torch.tensor([box(0, 1.0, 2), box(0, -1.0, 2)], dtype=torch.float32)
    other = point + torch.tensor([[1e4, 0.0, 0.0]])
    both = view_support(torch.cat([point, other]), lidar2img, tied,
                        torch.tensor([0.2, 0.7]), torch.tensor([0, 0]), gate_px=3.0)
    assert both.tolist() == pytest.approx([0.7 / 4, 0.0])
    # a point far outside every view, or no detections: no support
    far = torch.tensor([[0.0, 0.0, 0.0]]) + 1e4
    assert view_support(far, lidar2img, boxes, scores, views, gate_px=3.0).tolist() == [0.0]
    assert view_support(point, lidar2img, boxes[:0], scores[:0], views[:0],
                        gate_px=3.0).tolist() == [0.0]


def test_support_features_hand_computed():
    """``support_embedding``: finding 0 is detected in all 3 views (scores 0.9, 0.6, 0.3;
    the query is view 0's); its features are its own score, its valid prior,
    the mean support over the 3 views, the fraction of supporting views and the 4 best
    per-view supports (0 past the 3 views). The lone detection (no valid prior)
    supports only itself."""
    num_views = 3
    _, bboxes, view_ids, lidar2img, shape, _ = _prior_scene(num_views)
    config = tiny_mv2d_config()['roi_head']
    config['support_embedding'] = dict(gate_px=3.0)
    head = MODELS.build(config)
    assert head.support_cfg == dict(gate_px=3.0, gate_frac=0.5, top_views=4,
                                    logit_skip=False)
    assert head.support_logit is None
    scores = torch.tensor([0.9, 0.5, 0.5, 0.6, 0.5, 0.5, 0.3, 0.5, 0.5, 0.7])
    prior, ok = _priors(head, bboxes, view_ids, lidar2img, shape)
    rois = torch.cat([view_ids[:, None].float(), bboxes], dim=1)
    cam2img = make_geometry(num_views).view_matrices()['cam2img']
    geo = head.gather_rois(rois, [dict(lidar2img=lidar2img.numpy(), cam2img=cam2img,
                                       img_shape=shape)], num_views)
    queries = torch.tensor([0, len(bboxes) - 1])
    features = head.support_features(prior[queries], ok[queries], queries, rois, scores,
                                     geo)
    assert ok[queries].tolist() == [True, False]
    assert features.shape == (2, 8) and features.dtype == torch.float32
    assert features[0].tolist() == pytest.approx(
        [0.9, 1.0, (0.9 + 0.6 + 0.3) / 3, 1.0, 0.9, 0.6, 0.3, 0.0])
    assert features[1].tolist() == pytest.approx(
        [0.7, 0.0, 0.7 / 3, 1 / 3, 0.7, 0.0, 0.0, 0.0])
    # the encoder maps the rows to the decoder's width (that the decoded outputs follow
    # them: test_support_embedding_lets_the_decoder_read_the_views_support)
    content = head.support_encoder(features)
    assert content.shape == (2, head.bbox_head.embed_dims)
    for bad, match in ((dict(gate_pxx=3.0), 'gate_pxx'), (dict(top_views=0), 'top_views'),
                       (dict(gate_px=0.0), 'gate_px'), (dict(logit_skip=1), 'logit_skip')):
        config['support_embedding'] = bad
        with pytest.raises(ValueError, match=match):
            MODELS.build(config)


def test_support_logit_skip_adds_a_linear_map_of_the_support_to_every_layer():
    """``support_embedding.logit_skip``: the class logits of every decoder layer are the
    decoder's plus ``W @ support_features + b``. It starts at zero (the same logits as a
    head without it, same weights), a hand-set map adds exactly its value, and the
    gradients of the logits reach it."""
    torch.manual_seed(0)
    num_views = 3
    _, bboxes, view_ids, lidar2img, shape, _ = _prior_scene(num_views)
    config = tiny_mv2d_config()['roi_head']
    heads = {}
    for skip in (False, True):
        config['support_embedding'] = dict(gate_px=3.0, logit_skip=skip)
        torch.manual_seed(0)
        heads[skip] = MODELS.build(config)
        heads[skip].init_weights()
        heads[skip].eval()
    head = heads[True]
    # building the map drew nothing from the generator: the same seed, the same weights
    plain_state, state = heads[False].state_dict(), head.state_dict()
    assert sorted(set(state) - set(plain_state)) == ['support_logit.bias',
                                                     'support_logit.weight']
    assert all(torch.equal(value, state[key]) for key, value in plain_state.items())
    assert head.support_logit.weight.shape == (1, 8)
    rois = torch.cat([view_ids[:, None].float(), bboxes], dim=1)
    cam2img = make_geometry(num_views).view_matrices()['cam2img']
    metas = [dict(lidar2img=lidar2img.numpy(), img_shape=shape, cam2img=cam2img)]
    dims = head.bbox_roi_extractor.out_channels
    feats = [torch.randn(num_views, dims, shape[0] // s, shape[1] // s)
             for s in head.bbox_roi_extractor.featmap_strides]
    scores = torch.tensor([0.9, 0.5, 0.5, 0.6, 0.5, 0.5, 0.3, 0.5, 0.5, 0.7])
    with torch.no_grad():
        plain = heads[False](feats, rois, metas, num_views, scores)
        start = head(feats, rois, metas, num_views, scores)
        assert torch.equal(start['all_cls_scores'], plain['all_cls_scores'])
        weight = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.5, 0.0, 0.0, 0.0]])
        head.support_logit.weight.copy_(weight)
        head.support_logit.bias.fill_(-0.25)
        skipped = head(feats, rois, metas, num_views, scores, explain=True)
        query_rois = skipped['evidence'].query_rois
        prior, ok = _priors(head, bboxes, view_ids, lidar2img, shape)
        features = head.support_features(prior[query_rois], ok[query_rois], query_rois,
                                         rois, scores,
                                         head.gather_rois(rois, metas, num_views))
    added = skipped['all_cls_scores'] - start['all_cls_scores']        # (L, Q, 1)
    for layer in added:
        assert torch.allclose(layer, features @ weight.T - 0.25, atol=1e-5)
    # the query of finding 0, whose head is view 0's detection (scores 0.9 / 0.6 / 0.3
    # in its 3 views; its features: test_support_features_hand_computed)
    assert 0 in query_rois.tolist() and ok[0]
    own = query_rois.tolist().index(0)
    assert added[0, own, 0].item() == pytest.approx(
        0.9 + 2.0 * (0.9 + 0.6 + 0.3) / 3 + 0.5 * 0.9 - 0.25, abs=1e-5)
    # the logits' gradients reach the map
    head.train()
    out = head(feats, rois, metas, num_views, scores)
    out['all_cls_scores'].sigmoid().sum().backward()
    assert head.support_logit.weight.grad.abs().sum() > 0


def test_view_support_scores_per_view_and_their_mean():
    """``view_support_scores`` is the per-view table whose mean is ``view_support``."""
    geometry = XrayGeometry(num_views=4, image_size=(100, 100))
    lidar2img = torch.from_numpy(geometry.view_matrices()['lidar2img'])
    point = torch.tensor([[10.0, -5.0, 8.0], [1e4, 1e4, 1e4]])
    uv = project_points(lidar2img, point[:1].double())[0][:, 0]
    boxes = torch.tensor([[u - 2, v - 2, u + 2, v + 2] for u, v in uv[[0, 2]].tolist()],
                         dtype=torch.float32)
    scores, views = torch.tensor([0.8, 0.4]), torch.tensor([0, 2])
    for rule in (dict(), dict(gate_px=3.0, gate_frac=0.5)):
        table = view_support_scores(point, lidar2img, boxes, scores, views, **rule)
        assert table.flatten().tolist() == pytest.approx([0.8, 0.0, 0.4, 0.0] + [0.0] * 4)
        assert torch.equal(table.mean(dim=1),
                           view_support(point, lidar2img, boxes, scores, views, **rule))
    assert view_support_scores(point, lidar2img, boxes[:0], scores[:0],
                               views[:0]).shape == (2, 4)


def test_view_support_gate_rule_against_a_loop():
    """The gate rule on random scenes (repeated boxes, so distances and scores tie) equals
    a plain loop over views, centres and detections: the nearest detection within its
    gate, the best score among equally near ones, 0 behind the source."""
    geometry = XrayGeometry(num_views=5, image_size=(64, 64))
    lidar2img = torch.from_numpy(geometry.view_matrices()['lidar2img'])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        centres = (torch.rand(6, 3, generator=gen) - 0.5) * 60
        corner = torch.randint(0, 60, (25, 2), generator=gen).double()
        boxes = torch.cat([corner, corner + torch.randint(1, 12, (25, 2), generator=gen)], 1)
        views = torch.randint(0, 5, (25,), generator=gen)
        # 10 of them twice (same box and view, another score): exactly equal distances
        boxes, views = torch.cat([boxes, boxes[:10]]), torch.cat([views, views[:10]])
        scores = torch.randint(1, 5, (35,), generator=gen).double() / 5
        got = view_support(centres, lidar2img, boxes, scores, views, gate_px=3.0,
                           gate_frac=0.5)
        uv, depth = project_points(lidar2img[:, None], centres.double()[None, :, None])
        expected = []
        for k in range(len(centres)):
            total = 0.0
            for v in range(5):
                found = []                               # (distance, -score)
                for r in range(len(boxes)):
                    x0, y0, x1, y1 = boxes[r].tolist()
                    dist = math.dist(uv[v, k, 0].tolist(), ((x0 + x1) / 2, (y0 + y1) / 2))
                    if views[r] == v and depth[v, k, 0] > 0 and \
                            dist <= max(3.0, 0.5 * max(x1 - x0, y1 - y0)):
                        found.append((dist, -scores[r].item()))
                total += -min(found)[1] if found else 0.0
            expected.append(total / 5)
        assert got.tolist() == pytest.approx(expected)


def test_objectness_support_hand_computed():
    """Support = mean over the views of the map sampled at the centre's projection, the
    map's cells placed where mmdet's anchor grid puts their anchors (cell ``(i, j)`` at
    ``(j s, i s)``, not at the cell's middle): on a ramp ``a_v u + b_v v`` over the anchor
    centres bilinear sampling is exact, so the support is ``mean_v(a_v u_v + b_v v_v)``;
    a view counts 0 where the centre projects outside it or lies behind its source."""
    from mmdet.models.task_modules.prior_generators import AnchorGenerator
    height, width = 80, 100                                      # (H, W), not square
    geometry = XrayGeometry(num_views=4, image_size=(height, width))
    lidar2img = torch.from_numpy(geometry.view_matrices()['lidar2img'])
    point = torch.tensor([[10.0, -5.0, 8.0]])
    uv = project_points(lidar2img, point.double())[0][:, 0].float()     # (4, 2) px
    stride = 4
    priors = AnchorGenerator(strides=[stride], ratios=[0.5, 1.0, 2.0], scales=[1])
    cells = (height // stride, width // stride)                  # (h, w) = (20, 25)
    centres = priors.single_level_grid_priors(cells, 0, device='cpu').view(
        cells[0], cells[1], 3, 4)[:, :, 0]                       # (h, w, 4) anchor boxes
    cu = (centres[..., 0] + centres[..., 2]) / 2                 # (h, w) img px
    cv = (centres[..., 1] + centres[..., 3]) / 2
    a = torch.tensor([0.004, 0.002, 0.0, 0.001])
    b = torch.tensor([0.0, 0.005, 0.003, 0.002])
    maps = ObjectnessMaps(a[:, None, None] * cu + b[:, None, None] * cv,
                          (float(stride), float(stride)), (0.0, 0.0))
    support = objectness_support(point, lidar2img, maps, (height, width))
    expected = (a * uv[:, 0] + b * uv[:, 1]).mean()
    assert support.tolist() == pytest.approx([float(expected)], abs=1e-6)
    # an origin shifted by half a cell (the cells' middles) reads another value
    shifted = objectness_support(point, lidar2img, maps._replace(origin_px=(2.0, 2.0)),
                                 (height, width))
    assert abs(float(shifted[0] - expected)) > 1e-3
    constant = maps._replace(
        maps=torch.tensor([0.2, 0.4, 0.6, 0.8])[:, None, None].expand(4, *cells))
    assert objectness_support(point, lidar2img, constant, (height, width)).tolist() == \
        pytest.approx([0.5])
    # behind view 0's source, on its central ray: it projects into view 0 (depth < 0),
    # which counts 0, and in front of the opposite source into view 2 (0.6), 1 and 3 miss
    behind = torch.from_numpy(2 * geometry.source_position(0))[None].float()
    uv0, depth0 = project_points(lidar2img[0], behind.double())
    assert depth0[0] < 0 and 0 <= uv0[0, 0] < width and 0 <= uv0[0, 1] < height
    assert objectness_support(behind, lidar2img, constant, (height, width)).tolist() == \
        pytest.approx([0.6 / 4])
    # far away it leaves every view; in views of 30 x 30 px the point is outside all four
    assert objectness_support(point + 1e4, lidar2img, constant, (height, width)).tolist() == \
        [0.0]
    assert (uv >= 30).any(dim=1).all()
    assert objectness_support(point, lidar2img, constant, (30, 30)).tolist() == [0.0]
    assert objectness_support(point[:0], lidar2img, constant, (height, width)).shape == (0, )


def test_objectness_support_by_size_hand_computed():
    """Each view reads the level whose anchor side is nearest, on a log scale, to the
    side of the box's projection: with anchors of 1 and 4 px (the switch at 2 px), a
    1 mm box (~0.25 px in these 8 mm-pixel views) reads the 1 px level in every view, a
    20 mm box (~5 px) the 4 px level, and an 8 mm box -- 2.10, 2.12, 2.03 and 1.98 px
    -- the 4 px level in views 0-2 and the 1 px level in view 3; one level is
    :func:`objectness_support` of the centres; a level without its anchor side is
    refused."""
    height, width = 80, 100
    geometry = XrayGeometry(num_views=4, image_size=(height, width))
    lidar2img = torch.from_numpy(geometry.view_matrices()['lidar2img'])
    cells = (height // 4, width // 4)
    fine_values = torch.tensor([0.2, 0.4, 0.6, 0.8])
    coarse_values = torch.tensor([0.1, 0.3, 0.5, 0.7])
    fine = ObjectnessMaps(fine_values[:, None, None].expand(4, *cells).clone(), (4.0, 4.0),
                          (0.0, 0.0), 1.0)
    coarse = ObjectnessMaps(coarse_values[:, None, None].expand(4, *cells).clone(),
                            (4.0, 4.0), (0.0, 0.0), 4.0)
    boxes = torch.tensor([[10.0, -5.0, 8.0, side, side, side, 0.0]
                          for side in (1.0, 20.0, 8.0)], dtype=torch.float64)
    projected = project_boxes3d(lidar2img, boxes[None].expand(4, -1, -1))      # (V, K, 4)
    sides = ((projected[..., 2] - projected[..., 0]) *
             (projected[..., 3] - projected[..., 1])).sqrt()
    assert (sides[:, 0] < 0.3).all() and (sides[:, 1] > 4.9).all()
    assert (sides[:3, 2] > 2.02).all() and sides[3, 2] < 1.98        # the premise above
    support = objectness_support_by_size(boxes, lidar2img, [fine, coarse], (height, width))
    expected = [float(fine_values.mean()), float(coarse_values.mean()),
                float((coarse_values[:3].sum() + fine_values[3]) / 4)]
    assert support.tolist() == pytest.approx(expected, abs=1e-6)
    # the levels' order does not matter
    assert objectness_support_by_size(boxes, lidar2img, [coarse, fine],
                                      (height, width)).tolist() == pytest.approx(expected,
                                                                                 abs=1e-6)
    # one level: objectness_support of the centres, whatever the box size
    for maps in (fine, coarse):
        assert torch.allclose(
            objectness_support_by_size(boxes, lidar2img, [maps], (height, width)),
            objectness_support(boxes[:, :3], lidar2img, maps, (height, width)))
    assert objectness_support_by_size(boxes[:0], lidar2img, [fine, coarse],
                                      (height, width)).shape == (0, )
    with pytest.raises(ValueError, match='every level needs its anchor_px'):
        objectness_support_by_size(boxes, lidar2img, [fine, coarse._replace(
            anchor_px=float('nan'))], (height, width))
    with pytest.raises(ValueError, match='at least one level'):
        objectness_support_by_size(boxes, lidar2img, [], (height, width))


def test_search_rays_moves_lonely_boxes_to_the_views_agreement():
    """``objectness_support.search_depths``: a box ``refine_to_detections`` could not
    re-triangulate (``confirmed`` False) moves along the ray through its source
    detection's centre to the depth where the other views' objectness peaks -- maps
    with a Gaussian (sigma 2 px) at the projections of a point P: with 301 depths over
    the tiny config's 150-450 mm (1 mm apart) it lands within 1.5 mm of P, on the source
    detection's ray; a confirmed box, the extents,
    scores and labels stay; on empty maps (no depth scores higher than another) it
    stays too; without the setting nothing moves; the setting needs
    ``refine_to_detections``."""
    num_views, lidar2img, point, uv = _four_view_point()
    height = width = 100
    cells_v, cells_u = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                      torch.arange(width, dtype=torch.float64), indexing='ij')
    peaks = torch.stack([torch.exp(-((cells_u - u) ** 2 + (cells_v - v) ** 2) / (2 * 2.0 ** 2))
                         for u, v in uv.tolist()])                          # (V, h, w)
    maps = {0: ObjectnessMaps(peaks.float(), (1.0, 1.0), (0.0, 0.0), 4.0)}
    scene = 1
    source_view = 2
    u, v = uv[source_view].tolist()
    query_rois = torch.tensor([[scene * num_views + source_view, u - 3, v - 3, u + 3, v + 3],
                               [scene * num_views + 0, 10.0, 10.0, 16.0, 16.0]],
                              dtype=torch.float64)
    far = [60.0, 60.0, -60.0]
    pred = dict(bboxes=torch.tensor([far + [4., 4., 4., 0.], far + [4., 4., 4., 0.]],
                                    dtype=torch.float64),
                scores=torch.tensor([0.6, 0.5]), labels=torch.tensor([0, 0]),
                query_ids=torch.tensor([0, 1]), confirmed=torch.tensor([False, True]))
    meta = dict(lidar2img=lidar2img, img_shape=(height, width))
    head = MODELS.build(dict(tiny_mv2d_config()['roi_head'], test_cfg=dict(
        refine_to_detections=dict(gate_px=3.0),
        objectness_support=dict(weight=0.5, levels=[0], search_depths=301))))
    assert head.box_correlation.depth_range == (150.0, 450.0)
    out = head.search_rays(pred, meta, query_rois, num_views, maps)
    moved = out['bboxes'][0, :3]
    assert torch.linalg.norm(moved - point[0].double()) < 1.5
    # on the source detection's ray: it projects onto the RoI's centre in the source view
    uv_moved = project_points(torch.from_numpy(lidar2img[source_view]), moved[None])[0][0]
    assert torch.allclose(uv_moved, torch.tensor([u, v], dtype=torch.float64), atol=1e-6)
    assert torch.equal(out['bboxes'][1], pred['bboxes'][1])
    assert torch.equal(out['bboxes'][:, 3:], pred['bboxes'][:, 3:])
    for key in ('scores', 'labels', 'query_ids', 'confirmed'):
        assert torch.equal(out[key], pred[key])
    plain = MODELS.build(dict(tiny_mv2d_config()['roi_head'], test_cfg=dict(
        objectness_support=dict(weight=0.5, levels=[0]))))
    assert plain.search_rays(pred, meta, query_rois, num_views, maps) is pred
    flat = {0: maps[0]._replace(maps=torch.zeros_like(maps[0].maps))}
    assert torch.equal(head.search_rays(pred, meta, query_rois, num_views, flat)['bboxes'],
                       pred['bboxes'])
    with pytest.raises(ValueError, match='objectness maps on level 0'):
        head.search_rays(pred, meta, query_rois, num_views, {})
    with pytest.raises(ValueError, match='search_depths .* needs test_cfg.refine_to_detections'):
        MODELS.build(dict(tiny_mv2d_config()['roi_head'], test_cfg=dict(
            objectness_support=dict(weight=0.5, levels=[0], search_depths=8))))


def test_objectness_support_settings_checked_at_build():
    """Bad ``objectness_support`` settings stop the build with one line naming the
    setting."""
    head = tiny_mv2d_config()['roi_head']
    for cfg, match in ((dict(weight=1.5, levels=[0]), 'objectness_support.weight must be in'),
                       (dict(levels=[0]), 'objectness_support.weight must be in'),
                       (dict(weight=0.5), 'levels must be a non-empty list'),
                       (dict(weight=0.5, levels=[]), 'levels must be a non-empty list'),
                       (dict(weight=0.5, levels=0), 'levels must be a non-empty list'),
                       (dict(weight=0.5, levels=[0, -1]), 'levels must be a non-empty list'),
                       (dict(weight=0.5, levels=[0, 0]), 'levels must be a non-empty list'),
                       (dict(weight=0.5, levels=[True]), 'levels must be a non-empty list'),
                       (dict(weight=0.5, levels=[0], search_depths=1), 'search_depths must be'),
                       (dict(weight=0.5, levels=[0], search_depths=8.5),
                        'search_depths must be')):
        with pytest.raises(ValueError, match=match):
            MODELS.build(dict(head, test_cfg=dict(objectness_support=cfg)))


def test_view_support_settings_checked_at_build():
    """Bad ``view_support`` settings stop the build with one line naming the setting."""
    head = tiny_mv2d_config()['roi_head']
    for cfg, match in ((dict(weight=1.5), 'view_support.weight must be in'),
                       (dict(weight=0.5, gate_px=-1.0), 'view_support.gate_px must be >= 0'),
                       (dict(weight=0.5, gate_px=3.0, gate_frac=-0.5),
                        'view_support.gate_frac must be >= 0'),
                       (dict(weight=0.5, gate_px=3.0, margin_px=2.0), 'set one'),
                       (dict(weight=0.5, gate_frac=0.5), 'gate_frac needs gate_px'),
                       (dict(weight=0.5, margin_px=2.0, gate_px=3.0),
                        'set one, got margin_px, gate_px'),
                       (dict(weight=0.5, objectness_level=0), 'is now its own step')):
        with pytest.raises(ValueError, match=match):
            MODELS.build(dict(head, test_cfg=dict(view_support=cfg)))


# -- position encoding, decoder, grid mask ---------------------------------------------
def test_depth_bins_uniform_and_linear_increasing():
    from projects.mv2d_xray.mv2d_xray.models.positional_encoding import depth_bins
    uniform = depth_bins((100.0, 500.0), 5, dtype=torch.float64)
    assert torch.allclose(uniform, torch.tensor([100., 200., 300., 400., 500.],
                                                dtype=torch.float64))
    lid = depth_bins((100.0, 500.0), 8, lid=True)
    gaps = lid.diff()
    assert lid[0] == 100.0 and lid[-1] < 500.0 and lid.dtype == torch.float32
    assert torch.allclose(gaps.diff(), gaps.diff()[:1].expand(6)) and gaps[0] > 0


def test_gather_rows_is_indexing_with_a_backward_that_repeats_bit_for_bit():
    # MV2D's queries read the tokens of shared RoIs: many repeated indices. Advanced
    # indexing's CPU backward adds their rows in an order that varies between runs (on 2
    # threads 30 of 30 repeats of this case differed from the first), so seeded trainings
    # drifted apart.
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(100, 49, 64, generator=generator)
    index = torch.randint(0, 100, (60, 8), generator=generator)
    upstream = torch.randn(60, 8, 49, 64, generator=generator)

    def gradient(gather):
        leaf = features.clone().requires_grad_(True)
        (gather(leaf, index) * upstream).sum().backward()
        return leaf.grad

    assert torch.equal(gather_rows(features, index), features[index])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = gradient(gather_rows)
        repeats = [gradient(gather_rows) for _ in range(20)]
        reference = gradient(lambda leaf, rows: leaf[rows])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(first, again) for again in repeats)
    # the same sums as the indexing's, up to the order of the additions
    assert torch.allclose(first, reference, atol=1e-5)
    counts = torch.bincount(index.flatten(), minlength=100)
    manual = torch.zeros_like(features)
    for flat, row in enumerate(index.flatten().tolist()):
        manual[row] += upstream.flatten(0, 1)[flat]
    assert torch.allclose(first, manual, atol=1e-5) and (counts > 1).any()


def test_positional_encoding_samples_the_viewing_rays():
    geometry = XrayGeometry(num_views=4, image_size=(128, 128))
    lidar2img = torch.from_numpy(geometry.view_matrices()['lidar2img'])
    pe = MODELS.build(dict(type='MV2DXrayPositionalEncoding', embed_dims=8,
                           depth_num=5, depth_range=(100., 500.),
                           sine_num_feats=4))
    bboxes = torch.tensor([[10., 20., 38., 41.], [60., 60., 67., 70.]])
    cells = roi_cell_centres(bboxes, (7, 7))
    assert cells.shape == (2, 49, 2)
    assert torch.allclose(cells[0, 0], torch.tensor([12., 21.5]))
    assert torch.allclose(cells[0, 8], torch.tensor([16., 24.5]))
    view_ids = torch.tensor([1, 3])
    points = pe.frustum_points(cells.double(),
                               torch.linalg.inv(lidar2img[view_ids]))
    uv, depth = project_points(lidar2img[view_ids][:, None],
                               points.flatten(1, 2).view(2, 49, 5, 3))
    assert torch.allclose(uv, cells.double()[:, :, None].expand_as(uv),
                          atol=1e-6)
    assert torch.allclose(depth[0, 0], torch.linspace(100, 500, 5).double())
    out = pe(torch.randn(2, 49, 8), cells, torch.linalg.inv(lidar2img[view_ids]),
             view_ids, 4, torch.tensor([[128., 128.]] * 2))
    assert out.shape == (2, 49, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_frustum_points_equal_the_inverse_matrix_formula(dtype):
    """The frustum points (lifted with ``unproject_points``) are the earlier formula
    ``d * (M @ [u, v, 1]) + t``, ``[M | t]`` the top rows of ``img2lidar``, at every
    depth bin (linear-increasing bins: not evenly spaced)."""
    geometry = XrayGeometry(num_views=4, image_size=(128, 128))
    img2lidar = torch.linalg.inv(torch.from_numpy(
        geometry.view_matrices()['lidar2img']))[torch.tensor([0, 3, 2])]
    pe = MODELS.build(dict(type='MV2DXrayPositionalEncoding', embed_dims=8,
                           depth_num=6, depth_range=(120., 480.), lid=True,
                           sine_num_feats=4))
    cell_uv = torch.rand(3, 5, 2, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64).to(dtype) * 128
    points = pe.frustum_points(cell_uv, img2lidar)
    depth = torch.tensor([120. + 360. / 42 * k * (k + 1) for k in range(6)],
                         dtype=torch.float64)
    uv1 = torch.cat([cell_uv.double(), torch.ones(3, 5, 1, dtype=torch.float64)], -1)
    rays = torch.einsum('rij,rpj->rpi', img2lidar[:, :3, :3], uv1)
    old = rays[:, :, None] * depth[None, None, :, None] + img2lidar[:, None, None, :3, 3]
    assert points.shape == (3, 5, 6, 3) and points.dtype == dtype
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    assert torch.allclose(points.double(), old, atol=tol, rtol=0)


def test_footprints_equal_the_view_to_view_formula_and_mask_the_source():
    """Views 0 and 5 face each other (300 mm to the isocentre): view 0's rays reach
    view 5's source at depth 600 mm and pass behind it at 700 mm, where a projection
    is inf / NaN. Those slabs are zeros (no NaN leaks through the mask) and the valid
    ones equal the composed ``lidar2img_5 @ inv(lidar2img_0)`` mapping."""
    geometry = XrayGeometry(num_views=10, image_size=(128, 128))
    lidar2img = torch.from_numpy(geometry.view_matrices()['lidar2img'])
    bboxes = torch.tensor([[64., 64., 72., 70.], [30., 40., 44., 52.]])
    view_ids = torch.tensor([0, 0])
    correlation = MV2DXrayBoxCorrelation(num_depth=7, depth_range=(100., 700.))
    corners = correlation.slab_corners(bboxes, view_ids, lidar2img)
    prints = correlation.footprints(corners, lidar2img[5], (128, 128))
    # the box corner (64, 64) on view 0's central ray lands on view 5's source
    on_source = unproject_points(lidar2img[0], torch.tensor([[64., 64.]]).double(),
                                 torch.tensor([600.]).double())
    assert not torch.isfinite(project_points(lidar2img[5], on_source)[0]).all()
    assert torch.isfinite(prints).all()
    # the earlier formula: one composed matrix, depth clamped before the division
    trans = lidar2img[5] @ torch.linalg.inv(lidar2img[0])
    depth = torch.arange(100., 701., 100., dtype=torch.float64)
    x1, y1, x2, y2 = bboxes.double().unbind(-1)
    corners = torch.stack([torch.stack(c, -1) for c in
                           ((x1, y1), (x2, y1), (x1, y2), (x2, y2))], 1)  # (R, 4, 2)
    hom = torch.cat([corners[:, None] * depth[None, :, None, None],
                     depth[None, :, None, None].expand(2, -1, 4, 1),
                     torch.ones(2, 7, 4, 1, dtype=torch.float64)], -1)
    proj = torch.einsum('ij,rdpj->rdpi', trans[:3], hom)
    z = proj[..., 2]
    uv = proj[..., :2] / z.clamp(min=1.0)[..., None]
    slab_uv = torch.cat([uv[:, :-1], uv[:, 1:]], 2)
    ok = torch.cat([z[:, :-1], z[:, 1:]], 2).gt(1.0).all(-1)
    low = torch.minimum(slab_uv.amin(2).clamp(min=0), torch.tensor([128., 128.]).double())
    high = torch.minimum(slab_uv.amax(2).clamp(min=0), torch.tensor([128., 128.]).double())
    ok &= (high > low).all(-1)
    old = torch.cat([low, high], -1).float() * ok[..., None]
    assert ok[:, :4].all() and not ok[:, 4:].any()
    assert torch.allclose(prints, old, atol=1e-4, rtol=0)


def test_decoder_keeps_scenes_and_padding_apart():
    torch.manual_seed(0)
    decoder = MODELS.build(dict(type='MV2DXrayTransformer', num_layers=2,
                                embed_dims=8, num_heads=2,
                                feedforward_channels=16))
    decoder.init_weights()
    decoder.eval()
    query_pos = torch.randn(4, 8)
    key, key_pos = torch.randn(4, 6, 8), torch.randn(4, 6, 8)
    padding = torch.zeros(4, 6, dtype=torch.bool)
    padding[:, 4:] = True
    scenes = torch.tensor([0, 0, 1, 1])
    mask = scenes[:, None] != scenes[None]
    out = decoder(query_pos, key, key_pos, padding, mask)
    assert out.shape == (2, 4, 8)
    key2 = key.clone()
    key2[2:] += 5.0           # another scene's tokens
    key2[:, 4:] += 5.0        # padding tokens
    out2 = decoder(query_pos, key2, key_pos, padding, mask)
    assert torch.allclose(out[:, :2], out2[:, :2], atol=1e-5)
    assert not torch.allclose(out[:, 2:], out2[:, 2:], atol=1e-3)


def test_grid_mask():
    grid = MODELS.build(dict(type='XrayGridMask', prob=1.0, rotate=10))
    imgs = torch.ones(2, 3, 32, 32)
    grid.train()
    masked = grid(imgs)
    assert masked.shape == imgs.shape
    assert 0 < (masked == 0).float().mean() < 1
    assert torch.equal(masked[0], masked[1])
    grid.eval()
    assert torch.equal(grid(imgs), imgs)

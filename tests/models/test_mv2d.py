"""End-to-end tests of the MV2D detector on tiny synthetic scenes (CPU)."""
import copy
import logging

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmdet3d.structures import LiDARInstance3DBoxes
from mmdet.structures.bbox import bbox2roi
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData
from mv2d_test_utils import PC_RANGE, make_batch, make_geometry, tiny_mv2d_config

import projects.mv2d_xray.mv2d_xray  # noqa: F401  (registers the modules)
from projects.mv2d_xray.mv2d_xray.models.config_keys import XrayConfigError

init_default_scope('mmdet3d')
MMLogger.get_current_instance().setLevel(logging.WARNING)


def _build(cfg=None, seed=0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = MODELS.build(cfg or tiny_mv2d_config())
    model.init_weights()
    return model


def _total_loss(model, losses):
    total, _ = model.parse_losses(losses)
    return total


@pytest.mark.parametrize('num_views,view_probes', [(3, False), (10, False), (20, False),
                                                 (10, True)])
def test_loss_forward_backward(num_views, view_probes):
    """Batch of 2 (one scene without findings): every loss term is finite and the
    gradients reach the 2D detector, the query generator and the 3D head (also with the
    RoI head's view probes)."""
    torch.set_num_threads(1)
    cfg = tiny_mv2d_config()
    cfg['roi_head']['view_probes'] = view_probes
    model = _build(cfg)
    model.train()
    probes = []                                  # how many view probes each step made
    make_probes = model.roi_head.probe_rois
    model.roi_head.probe_rois = lambda *a: probes.append(make_probes(*a)) or probes[-1]
    data = model.data_preprocessor(make_batch(num_views, [2, 0], seed=num_views),
                                   True)
    assert data['inputs']['imgs'].shape[:2] == (2, num_views)
    losses = model(**data, mode='loss')
    assert (len(probes) == 1 and len(probes[0][0]) > 0) if view_probes else not probes
    for layer in range(6):
        assert f'l{layer}.loss_cls' in losses and f'l{layer}.loss_bbox' in losses
    for key in ('det_loss_rpn_cls', 'det_loss_cls', 'det_loss_bbox'):
        assert key in losses
    total = _total_loss(model, losses)
    assert torch.isfinite(total)
    # the scene with findings has matched queries: positive box loss
    assert losses['l5.loss_bbox'] > 0
    total.backward()
    grads = {
        name: param.grad
        for name, param in model.named_parameters() if param.grad is not None
    }
    assert all(torch.isfinite(g).all() for g in grads.values())
    for prefix in ('base_detector.backbone', 'base_detector.rpn_head',
                   'roi_head.query_generator', 'roi_head.positional_encoding',
                   'roi_head.bbox_head.transformer',
                   'roi_head.bbox_head.cls_branches.5',
                   'roi_head.bbox_head.reg_branches.5'):
        assert any(name.startswith(prefix) and g.abs().sum() > 0
                   for name, g in grads.items()), prefix


def test_loss_gates_pairs_on_the_queries_valid_priors():
    """``train_cfg.rcnn.match_dist_from='prior'``: the RoI head hands the 3D head the
    queries' priors from its forward pass, NaN where a prior is not valid (every other
    detection's prior is marked not valid here), each scene's matching gets its own
    queries' rows, and a gate of 1e-3 mm then keeps no pair (no box loss)."""
    torch.set_num_threads(1)
    cfg = tiny_mv2d_config()
    cfg['train_cfg']['rcnn'].update(max_match_dist_mm=1e-3, match_dist_from='prior')
    model = _build(cfg)
    model.train()
    roi_head, head, seen = model.roi_head, model.roi_head.bbox_head, {'targets': []}
    forward, triangulate = roi_head.forward, roi_head.triangulate_priors
    loss_by_feat, targets = head.loss_by_feat, head.get_targets_single

    def half_valid(*args):
        points, ok = triangulate(*args)
        return points, ok & (torch.arange(len(ok)) % 2 == 0)

    def record_forward(*args, **kwargs):
        seen['out'] = forward(*args, **kwargs)
        return seen['out']

    def record_loss_by_feat(*args):
        seen['priors'] = args[5]
        return loss_by_feat(*args)

    def record_targets(*args):
        seen['targets'].append(args[4])
        return targets(*args)

    roi_head.triangulate_priors, roi_head.forward = half_valid, record_forward
    head.loss_by_feat, head.get_targets_single = record_loss_by_feat, record_targets
    data = model.data_preprocessor(make_batch(4, [2, 1], seed=5), True)
    losses = model(**data, mode='loss')
    out, priors = seen['out'], seen['priors']
    ok = out['query_prior_ok']
    assert priors.shape == out['query_priors'].shape and ok.any() and (~ok).any()
    assert torch.equal(priors[ok], out['query_priors'][ok])
    assert priors[~ok].isnan().all()
    # per decoder layer, one matching per scene with that scene's queries' priors
    scenes = out['scene_ids'].unique().tolist()
    assert len(seen['targets']) == 6 * len(scenes)
    for call, scene_priors in enumerate(seen['targets']):
        mine = out['scene_ids'] == scenes[call % len(scenes)]
        torch.testing.assert_close(scene_priors, priors[mine], equal_nan=True)
    # no query lies within 1e-3 mm of a finding: no positive, no box loss in any layer
    assert all(float(losses[f'l{layer}.loss_bbox']) == 0 for layer in range(6))


def test_frozen_2d_detector_trains_the_3d_stage_only():
    """``freeze_base_detector``: no 2D losses, no gradients and unchanged BN
    statistics in the 2D detector, gradients in the 3D stage; a 2D-only model
    cannot be frozen."""
    torch.set_num_threads(1)
    cfg = tiny_mv2d_config()
    cfg['freeze_base_detector'] = True
    model = _build(cfg)
    model.train()
    assert not model.base_detector.training and model.roi_head.training
    bn_mean = model.base_detector.backbone.bn1.running_mean.clone()
    data = model.data_preprocessor(make_batch(4, [2, 1], seed=3), True)
    losses = model(**data, mode='loss')
    assert not any(key.startswith('det_') for key in losses)
    _total_loss(model, losses).backward()
    assert all(p.grad is None for p in model.base_detector.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.roi_head.bbox_head.cls_branches.parameters())
    assert torch.equal(model.base_detector.backbone.bn1.running_mean, bn_mean)
    cfg = tiny_mv2d_config()
    cfg.update(roi_head=None, freeze_base_detector=True)
    with pytest.raises(ValueError, match='freeze_base_detector'):
        MODELS.build(cfg)


def test_predict_batch_of_two():
    torch.set_num_threads(1)
    model = _build()
    model.eval()
    num_views = 5
    data = model.data_preprocessor(make_batch(num_views, [3, 1], seed=3), False)
    with torch.no_grad():
        results = model(**data, mode='predict')
    assert len(results) == 2
    for result in results:
        pred = result.pred_instances_3d
        assert isinstance(pred.bboxes_3d, LiDARInstance3DBoxes)
        num = len(pred.scores_3d)
        assert 0 < num <= 50
        assert pred.bboxes_3d.tensor.shape == (num, 7)
        assert pred.labels_3d.shape == (num, ) and (pred.labels_3d == 0).all()
        assert ((pred.scores_3d >= 0) & (pred.scores_3d <= 1)).all()
        assert (pred.scores_3d[:-1] >= pred.scores_3d[1:]).all()
        centres = pred.bboxes_3d.gravity_center
        assert (centres >= torch.tensor(PC_RANGE[:3])).all()
        assert (centres <= torch.tensor(PC_RANGE[3:])).all()
        assert (pred.bboxes_3d.dims > 0).all()
        assert (pred.bboxes_3d.tensor[:, 6] == 0).all()
        pred_2d = result.pred_instances
        assert pred_2d.bboxes.shape == (len(pred_2d), 4)
        assert set(pred_2d.keys()) >= {'bboxes', 'scores', 'labels', 'view_ids'}
        assert ((pred_2d.view_ids >= 0) & (pred_2d.view_ids < num_views)).all()


@pytest.mark.parametrize('rule', [dict(margin_px=2.0), dict(gate_px=3.0, gate_frac=0.5)],
                         ids=['grown-boxes', 'gates'])
def test_view_support_rescores_the_3d_boxes(rule):
    """``test_cfg.rcnn.view_support`` with weight 1: every 3D score is the box's support
    by the scene's own 2D detections (recomputed from the outputs, by either rule), in
    decreasing order; weight 0 gives back the decoder's scores; a misspelled key stops
    the build."""
    from projects.mv2d_xray.mv2d_xray.models import view_support
    torch.set_num_threads(1)
    num_views = 4
    batch = make_batch(num_views, [2], seed=5)
    outputs = {}
    for weight in (None, 0.0, 1.0):
        cfg = tiny_mv2d_config()
        rcnn = cfg['test_cfg'].setdefault('rcnn', dict())
        rcnn.update(nms=None, max_per_scene=100)
        if weight is not None:
            rcnn['view_support'] = dict(weight=weight, **rule)
        model = _build(cfg)
        model.eval()
        data = model.data_preprocessor(copy.deepcopy(batch), False)
        with torch.no_grad():
            outputs[weight] = model(**data, mode='predict')[0]
    plain, same, rescored = outputs[None], outputs[0.0], outputs[1.0]
    assert torch.equal(plain.pred_instances_3d.scores_3d, same.pred_instances_3d.scores_3d)
    pred, pred_2d = rescored.pred_instances_3d, rescored.pred_instances
    assert len(pred_2d) > 0
    lidar2img = torch.as_tensor(np.asarray(rescored.metainfo['lidar2img']))
    support = view_support(pred.bboxes_3d.gravity_center, lidar2img, pred_2d.bboxes,
                           pred_2d.scores, pred_2d.view_ids, **rule)
    assert (support > 0).any()                  # some boxes are supported
    assert torch.allclose(pred.scores_3d, support, atol=1e-6)
    assert (pred.scores_3d[:-1] >= pred.scores_3d[1:]).all()
    assert len(pred.scores_3d) == len(plain.pred_instances_3d.scores_3d)
    cfg = tiny_mv2d_config()
    cfg['test_cfg'].setdefault('rcnn', dict())['view_support'] = dict(weigth=1.0)
    with pytest.raises(XrayConfigError, match='weigth'):
        _build(cfg)
    cfg['test_cfg']['rcnn']['view_support'] = dict(weight=1.5)
    with pytest.raises(ValueError, match=r'weight must be in \[0, 1\], got 1.5'):
        _build(cfg)


def test_objectness_support_rescores_the_3d_boxes():
    """``objectness_support=dict(weight=1, levels=[0])`` end to end on two scenes: every
    3D score is the mean over its scene's views of the RPN's objectness (level 0, best
    anchor, sigmoid) at the box centre's projection, recomputed from the model's own
    maps, in decreasing order; the scores differ from the decoder's; a level the RPN
    lacks stops the build with one line."""
    from projects.mv2d_xray.mv2d_xray.models import objectness_support
    torch.set_num_threads(1)
    num_views = 4
    batch = make_batch(num_views, [2, 1], seed=5)
    outputs = {}
    for weight in (None, 1.0):
        cfg = tiny_mv2d_config()
        rcnn = cfg['test_cfg'].setdefault('rcnn', dict())
        rcnn.update(nms=None, max_per_scene=100)
        if weight is not None:
            rcnn['objectness_support'] = dict(weight=weight, levels=[0])
        model = _build(cfg)
        model.eval()
        data = model.data_preprocessor(copy.deepcopy(batch), False)
        rpn_passes = []
        rpn_head = model.base_detector.rpn_head    # its shared conv runs once per level
        hook = rpn_head.rpn_conv.register_forward_hook(lambda *_: rpn_passes.append(1))
        with torch.no_grad():
            outputs[weight] = model(**data, mode='predict')
            hook.remove()
            # the maps reuse the detections' RPN pass: each level through the RPN once
            assert len(rpn_passes) == rpn_head.prior_generator.num_levels
            if weight is not None:
                feats = model.extract_feat(data['inputs']['imgs'])
                maps = model.objectness_maps(rpn_head(feats)[0], 0)
    assert maps.maps.shape[0] == 2 * num_views and ((maps.maps > 0) & (maps.maps < 1)).all()
    assert maps.stride_px == (4.0, 4.0) and maps.origin_px == (0.0, 0.0)
    for scene, (plain, rescored) in enumerate(zip(outputs[None], outputs[1.0])):
        pred, meta = rescored.pred_instances_3d, rescored.metainfo
        scene_maps = maps._replace(
            maps=maps.maps[scene * num_views:(scene + 1) * num_views])
        support = objectness_support(pred.bboxes_3d.gravity_center,
                                     torch.as_tensor(np.asarray(meta['lidar2img'])),
                                     scene_maps, tuple(meta['img_shape']))
        assert torch.allclose(pred.scores_3d, support, atol=1e-6)
        assert (pred.scores_3d[:-1] >= pred.scores_3d[1:]).all()
        assert len(pred.scores_3d) == len(plain.pred_instances_3d.scores_3d)
        assert not torch.allclose(pred.scores_3d.sort().values,
                                  plain.pred_instances_3d.scores_3d.sort().values)
    cfg = tiny_mv2d_config()
    cfg['test_cfg'].setdefault('rcnn', dict())['objectness_support'] = dict(weight=1.0,
                                                                            levels=[9])
    with pytest.raises(ValueError, match=r'level 9: the 2D stage\'s RPN has'):
        _build(cfg)


def test_objectness_support_weighs_the_view_support_scores():
    """``objectness_support=dict(weight=w, levels=[0, 1])`` end to end on two scenes,
    after ``view_support``: with ``w = 1`` every 3D score is
    :func:`objectness_support_by_size` of its box recomputed from the model's own maps
    of levels 0 and 1 (anchor sides 8 and 16 px: the tiny config's scale-2 anchors at
    strides 4 and 8, whatever their ratio), in decreasing order; with ``w = 0.5`` it is
    the geometric mean of that support and the score without the step, box by box; the
    model computes the maps of every level it reads, in the detections' RPN pass; a level
    the RPN lacks and a misspelled key stop the build."""
    from projects.mv2d_xray.mv2d_xray.models import objectness_support_by_size
    torch.set_num_threads(1)
    num_views = 4
    batch = make_batch(num_views, [2, 1], seed=5)
    outputs = {}
    for weight in (None, 1.0, 0.5):
        cfg = tiny_mv2d_config()
        rcnn = cfg['test_cfg'].setdefault('rcnn', dict())
        rcnn.update(nms=None, max_per_scene=100,
                    view_support=dict(weight=0.5, gate_px=3.0, gate_frac=0.5))
        if weight is not None:
            rcnn['objectness_support'] = dict(weight=weight, levels=[1, 0])
        model = _build(cfg)
        model.eval()
        assert model.roi_head.objectness_levels == (() if weight is None else (0, 1))
        data = model.data_preprocessor(copy.deepcopy(batch), False)
        with torch.no_grad():
            outputs[weight] = model(**data, mode='predict')
            feats = model.extract_feat(data['inputs']['imgs'])
            rpn_scores = model.base_detector.rpn_head(feats)[0]
            levels = [model.objectness_maps(rpn_scores, level) for level in (0, 1)]
    assert [maps.anchor_px for maps in levels] == pytest.approx([8.0, 16.0])
    for scene in range(2):
        plain = outputs[None][scene].pred_instances_3d
        meta = outputs[1.0][scene].metainfo
        scene_maps = [maps._replace(maps=maps.maps[scene * num_views:(scene + 1) * num_views])
                      for maps in levels]
        lidar2img = torch.as_tensor(np.asarray(meta['lidar2img']))
        for weight in (1.0, 0.5):
            pred = outputs[weight][scene].pred_instances_3d
            assert len(pred.scores_3d) == len(plain.scores_3d) > 0
            assert (pred.scores_3d[:-1] >= pred.scores_3d[1:]).all()
            boxes = torch.cat([pred.bboxes_3d.gravity_center, pred.bboxes_3d.tensor[:, 3:]],
                              dim=1)
            support = objectness_support_by_size(boxes.double(), lidar2img, scene_maps,
                                                 tuple(meta['img_shape'])).float()
            # the same boxes as without the step, in another order: pair them
            pairs = torch.cdist(pred.bboxes_3d.tensor[:, :3],
                                plain.bboxes_3d.tensor[:, :3]).argmin(dim=1)
            assert torch.allclose(pred.bboxes_3d.tensor, plain.bboxes_3d.tensor[pairs])
            expected = plain.scores_3d[pairs] ** (1 - weight) * support ** weight
            assert torch.allclose(pred.scores_3d, expected, atol=1e-6)
    assert not torch.allclose(outputs[1.0][0].pred_instances_3d.scores_3d.sort().values,
                              outputs[None][0].pred_instances_3d.scores_3d.sort().values)
    cfg = tiny_mv2d_config()
    cfg['test_cfg'].setdefault('rcnn', dict())['objectness_support'] = dict(weight=1.0,
                                                                            levels=[0, 9])
    with pytest.raises(ValueError, match=r'objectness_support: level 9: the 2D stage\'s RPN'):
        _build(cfg)
    cfg['test_cfg']['rcnn']['objectness_support'] = dict(weight=1.0, level=[0])
    with pytest.raises(XrayConfigError, match=r"objectness_support has no key 'level'"):
        _build(cfg)


def test_search_rays_end_to_end():
    """``objectness_support.search_depths`` in the model on two scenes: the head gets,
    per scene, each query's own RoI (``rois[query_rois]`` of the forward pass, for the
    scene's queries); every box ``refine_to_detections``
    could not re-triangulate comes back on the ray through its RoI's centre in the
    RoI's view (it projects there), the others where they were; the search runs on the
    maps of the configured level."""
    from projects.mv2d_xray.core.geometry import project_points
    torch.set_num_threads(1)
    num_views = 4
    batch = make_batch(num_views, [2, 1], seed=5)
    cfg = tiny_mv2d_config()
    cfg['test_cfg'].setdefault('rcnn', dict()).update(
        nms=None, max_per_scene=100, refine_to_detections=dict(gate_px=3.0),
        objectness_support=dict(weight=0.5, levels=[0], search_depths=16))
    model = _build(cfg)
    model.eval()
    calls, passes = [], []
    search, forward = model.roi_head.search_rays, model.roi_head.forward

    def spy_forward(feats, rois, *args, **kwargs):
        out = forward(feats, rois, *args, **kwargs)
        passes.append((rois, out))
        return out

    def spy(pred, meta, query_rois, views, maps):
        out = search(pred, meta, query_rois, views, maps)
        calls.append((pred, meta, query_rois, maps, out))
        return out

    model.roi_head.search_rays = spy
    model.roi_head.forward = spy_forward
    data = model.data_preprocessor(copy.deepcopy(batch), False)
    with torch.no_grad():
        model(**data, mode='predict')
    assert len(calls) == 2 and len(passes) == 1
    rois, forward_out = passes[0]
    lonely_seen = 0
    for scene, (pred, meta, query_rois, maps, out) in enumerate(calls):
        assert list(maps) == [0] and len(maps[0].maps) == num_views
        assert ((query_rois[:, 0].long() // num_views) == scene).all()
        mine = forward_out['scene_ids'] == scene
        assert torch.equal(query_rois, rois[forward_out['query_rois'][mine]])
        lonely = ~pred['confirmed']
        assert torch.equal(out['bboxes'][~lonely], pred['bboxes'][~lonely])
        lidar2img = torch.as_tensor(np.asarray(meta['lidar2img']), dtype=torch.float64)
        for k in lonely.nonzero(as_tuple=True)[0].tolist():
            roi = query_rois[pred['query_ids'][k]].double()
            view = int(roi[0]) % num_views
            uv = project_points(lidar2img[view], out['bboxes'][k:k + 1, :3].double())[0][0]
            assert torch.allclose(uv, (roi[1:3] + roi[3:5]) / 2, atol=1e-3)
            lonely_seen += 1
    assert lonely_seen > 0          # the scenes hold boxes that were not re-triangulated


def _every_box_model(**rcnn):
    """The tiny model in eval mode with every 2D detection a query and every decoded box
    an output (no score threshold, no NMS, cap 1000), plus the ``test_cfg.rcnn`` settings
    ``rcnn``."""
    cfg = tiny_mv2d_config()
    cfg['test_cfg'].setdefault('rcnn', dict()).update(nms=None, max_per_scene=1000, **rcnn)
    cfg['test_cfg']['detection_proposal'].update(score_thr=0.0)
    model = _build(cfg)
    model.eval()
    return model


def test_refine_radius_puts_centres_on_the_valid_priors():
    """``test_cfg.rcnn.refine_radius_mm=0`` end to end, box by box: the centre of a box
    whose query (named by its explanation) has a valid triangulated prior is exactly
    that prior; every other box keeps its decoded centre; scores do not change."""
    torch.set_num_threads(1)
    num_views = 4
    batch = make_batch(num_views, [2, 1], seed=3)
    outputs, forwards = {}, {}
    for radius in (None, 0.0):
        model = _every_box_model(refine_radius_mm=radius)
        head_forward = model.roi_head.forward
        def record(*args, _radius=radius, **kwargs):
            forwards[_radius] = head_forward(*args, **kwargs)
            return forwards[_radius]
        model.roi_head.forward = record
        data = model.data_preprocessor(copy.deepcopy(batch), False)
        with torch.no_grad():
            outputs[radius] = model.predict(data['inputs'], data['data_samples'],
                                            explain=True)
    out = forwards[0.0]
    num_snapped = 0
    for scene, (plain, snapped) in enumerate(zip(outputs[None], outputs[0.0])):
        mine = out['scene_ids'] == scene
        priors, prior_ok = out['query_priors'][mine], out['query_prior_ok'][mine]
        queries = torch.tensor([e['query'] for e in snapped.explanations])
        assert torch.equal(queries, torch.tensor([e['query'] for e in plain.explanations]))
        before = plain.pred_instances_3d.bboxes_3d.gravity_center
        after = snapped.pred_instances_3d.bboxes_3d.gravity_center
        assert torch.equal(plain.pred_instances_3d.scores_3d,
                           snapped.pred_instances_3d.scores_3d)
        ok = prior_ok[queries]
        assert torch.allclose(after[ok], priors[queries][ok].float(), atol=1e-4)
        assert torch.equal(after[~ok], before[~ok])
        num_snapped += int(ok.sum())
    assert num_snapped > 0, 'no valid prior in this batch: the test checks nothing'


def test_refine_to_detections_end_to_end():
    """``test_cfg.rcnn.refine_to_detections`` end to end: every output box is the decoded
    box re-triangulated from its own scene's 2D detections of its class (as
    :func:`refine_to_detections` computes from the outputs); extents, scores, labels and
    order do not change."""
    from projects.mv2d_xray.mv2d_xray.baselines.triangulation import (TriangulationConfig,
                                                                      refine_to_detections)
    torch.set_num_threads(1)
    num_views = 4
    batch = make_batch(num_views, [2, 1], seed=3)
    outputs = {}
    for refine in (None, dict(gate_px=6.0)):
        model = _every_box_model(refine_to_detections=refine)
        data = model.data_preprocessor(copy.deepcopy(batch), False)
        with torch.no_grad():
            outputs[refine is not None] = model(**data, mode='predict')
    num_moved = 0
    for plain, refined in zip(outputs[False], outputs[True]):
        before, after = plain.pred_instances_3d, refined.pred_instances_3d
        assert torch.equal(before.scores_3d, after.scores_3d)
        assert torch.equal(before.labels_3d, after.labels_3d)
        pred_2d = refined.pred_instances
        expected = refine_to_detections(
            np.asarray(refined.metainfo['lidar2img']), pred_2d.bboxes.double().numpy(),
            pred_2d.scores.double().numpy(), pred_2d.labels.numpy(),
            pred_2d.view_ids.numpy(), before.bboxes_3d.gravity_center.double().numpy(),
            before.labels_3d.numpy(), TriangulationConfig(gate_px=6.0))
        assert torch.allclose(after.bboxes_3d.gravity_center,
                              torch.from_numpy(expected['points']).float(), atol=1e-4)
        assert torch.equal(after.bboxes_3d.dims, before.bboxes_3d.dims)
        num_moved += int((expected['num_views'] >= 2).sum())
    assert num_moved > 0, 'no box has two supporting views: the test checks nothing'


def test_predict_without_detections_is_empty_and_well_formed():
    cfg = tiny_mv2d_config()
    cfg['test_cfg']['detection_proposal']['score_thr'] = 1.0
    model = _build(cfg)
    model.eval()
    data = model.data_preprocessor(make_batch(3, [1, 1]), False)
    with torch.no_grad():
        results = model(**data, mode='predict')
    for result in results:
        assert result.pred_instances_3d.bboxes_3d.tensor.shape == (0, 7)
        assert len(result.pred_instances) == 0


def test_3d_loss_falls_when_fitting_one_batch():
    """A few optimiser steps on one batch lower the 3D losses."""
    torch.set_num_threads(1)
    model = _build(seed=1)
    model.train()
    data = model.data_preprocessor(make_batch(4, [2, 1], seed=5), True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def loss_3d():
        losses = model(**copy.deepcopy(data), mode='loss')
        total = _total_loss(model, losses)
        return total, sum(v for k, v in losses.items() if k.startswith('l'))

    torch.manual_seed(0)
    first = None
    for _ in range(12):
        total, value = loss_3d()
        first = float(value) if first is None else first
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    model.eval()  # no dropout, same detections for the final measurement
    with torch.no_grad():
        _, last = loss_3d()
    assert float(last) < 0.85 * first


def test_roi_head_stays_fp32_under_autocast():
    """Mixed precision: with low-precision features and autocast on (CPU bfloat16
    here; mmcv's CPU nms has no bfloat16 kernel, so the 2D stage runs in fp32), the
    3D head still computes in fp32 and gives finite losses and gradients."""
    torch.set_num_threads(1)
    model = _build()
    model.train()
    num_views = 3
    data = model.data_preprocessor(make_batch(num_views, [2, 1], seed=2), True)
    samples = data['data_samples']
    with torch.no_grad():
        feats = model.extract_feat(data['inputs']['imgs'])
        dets = model.detect_2d(
            feats, model.view_samples(samples, num_views, False),
            model.train_cfg['detection_proposal'])
    rois = bbox2roi([det.bboxes for det in dets])
    assert len(rois) > 0
    feats = [feat.bfloat16().requires_grad_() for feat in feats]
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        losses = model.roi_head.loss(feats, rois,
                                     [s.metainfo for s in samples],
                                     [s.gt_instances_3d for s in samples],
                                     num_views)
    for layer in range(6):
        assert losses[f'l{layer}.loss_cls'].dtype == torch.float32
    total = _total_loss(model, losses)
    assert torch.isfinite(total)
    total.backward()
    grad = model.roi_head.bbox_head.reg_branches[5][-1].weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert feats[0].grad is not None and torch.isfinite(feats[0].grad).all()


def test_tensor_mode_returns_every_layer():
    model = _build()
    model.eval()
    data = model.data_preprocessor(make_batch(3, [1, 0]), False)
    with torch.no_grad():
        cls_scores, codes = model(**data, mode='tensor')
    assert cls_scores.shape[0] == codes.shape[0] == 6
    assert codes.shape[-1] == 6 and cls_scores.shape[-1] == 1


def _flip_by_hand(boxes, height, width, direction):
    """Boxes ``(K, 4)`` of a view of ``height x width`` px mirrored, written out."""
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    if direction in ('horizontal', 'diagonal'):
        x1, x2 = width - x2, width - x1
    if direction in ('vertical', 'diagonal'):
        y1, y2 = height - y2, height - y1
    return torch.stack([x1, y1, x2, y2], dim=1)


@pytest.mark.parametrize('direction', ['horizontal', 'vertical', 'diagonal'])
def test_flipped_views_detect_in_the_unflipped_frame(direction):
    """``detect_2d_flipped`` of views of 40 x 72 px (padded to 64 x 96) whose image
    region was mirrored by hand finds the unmirrored views' own detections, mirrored back
    into the frame it was given: same scores and labels, boxes at ``72 - x`` /
    ``40 - y`` (the image's size, not the padded tensor's)."""
    torch.set_num_threads(1)
    cfg = tiny_mv2d_config()
    cfg['test_cfg']['detection_proposal']['score_thr'] = 0.0
    model = _build(cfg)
    model.eval()
    batch = make_batch(3, [2], geometry=make_geometry(3, image_size=(40, 72)))
    data = model.data_preprocessor(batch, False)
    imgs = data['inputs']['imgs']
    assert imgs.shape[-2:] == (64, 96)
    views = model.view_samples(data['data_samples'], imgs.shape[1], False)
    assert views[0].metainfo['img_shape'] == (40, 72)
    mirrored_imgs = imgs.clone()
    if direction in ('horizontal', 'diagonal'):
        mirrored_imgs[..., :40, :72] = mirrored_imgs[..., :40, :72].flip(-1)
    if direction in ('vertical', 'diagonal'):
        mirrored_imgs[..., :40, :72] = mirrored_imgs[..., :40, :72].flip(-2)
    proposal = model.test_cfg['detection_proposal']
    with torch.no_grad():
        plain = model.detect_2d(model.extract_feat(imgs), views, proposal)
        mirrored = model.detect_2d_flipped(mirrored_imgs, views, proposal, direction)
    assert sum(len(d) for d in plain) > 0
    for det, mirror in zip(plain, mirrored):
        assert torch.equal(det.scores, mirror.scores) and torch.equal(det.labels, mirror.labels)
        assert torch.allclose(_flip_by_hand(det.bboxes, 40, 72, direction), mirror.bboxes,
                              atol=1e-4)


def test_merge_detections_pools_the_passes_as_one_pass():
    """Per view: a box of the second pass overlapping a better one of the first (IoU
    0.82 > the NMS's 0.6) goes, a box elsewhere stays, ranked by score; ``max_per_img``
    cuts the rest (not at all when not positive); boxes of different classes suppress
    each other only with ``class_agnostic``; a view without detections stays empty."""
    from projects.mv2d_xray.mv2d_xray.models.mv2d import MV2DXray

    def dets(boxes, scores, labels):
        return InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            scores=torch.tensor(scores), labels=torch.tensor(labels).long())

    empty = dets([], [], [])
    first = [dets([[0, 0, 10, 10]], [0.9], [0]), empty]
    second = [dets([[1, 0, 11, 10], [50, 50, 60, 60]], [0.8, 0.95], [0, 1]), empty]
    cfg = dict(nms=dict(type='nms', iou_threshold=0.6, class_agnostic=True), max_per_img=5)
    view0, view1 = MV2DXray.merge_detections([first, second], cfg)
    assert view0.bboxes.tolist() == [[50, 50, 60, 60], [0, 0, 10, 10]]
    assert torch.allclose(view0.scores, torch.tensor([0.95, 0.9]))
    assert view0.labels.tolist() == [1, 0] and len(view1) == 0
    top, = MV2DXray.merge_detections([first[:1], second[:1]], dict(cfg, max_per_img=1))
    assert top.bboxes.tolist() == [[50, 50, 60, 60]]
    every, = MV2DXray.merge_detections([first[:1], second[:1]], dict(cfg, max_per_img=-1))
    assert len(every) == 2
    other_class = [dets([[1, 0, 11, 10]], [0.8], [2])]
    per_class = dict(cfg, nms=dict(type='nms', iou_threshold=0.6))
    both, = MV2DXray.merge_detections([first[:1], other_class], per_class)
    assert both.labels.tolist() == [0, 2]
    one, = MV2DXray.merge_detections([first[:1], other_class], cfg)
    assert one.labels.tolist() == [0]


def test_flip_directions_end_to_end_and_checked():
    """``detection_proposal.flip_directions`` in the test step: every scene's 2D
    detections are those of the plain pass and the flipped passes pooled by
    ``merge_detections`` (recomputed here from the parts), they differ from the plain
    pass's, and there are 3D boxes; None turns it off; a direction mmdet does not name,
    a string, a direction named twice or the key in ``train_cfg`` stops the build with
    one line."""
    torch.set_num_threads(1)
    batch = make_batch(3, [2, 1], seed=4)
    flips = ('horizontal', 'vertical')
    outputs, parts = {}, None
    for setting in (None, flips):
        cfg = tiny_mv2d_config()
        cfg['test_cfg']['detection_proposal']['flip_directions'] = setting
        model = _build(cfg)
        model.eval()
        data = model.data_preprocessor(copy.deepcopy(batch), False)
        with torch.no_grad():
            outputs[setting] = model(**data, mode='predict')
            if setting:
                imgs = data['inputs']['imgs']
                views = model.view_samples(data['data_samples'], imgs.shape[1], False)
                proposal = model.test_cfg['detection_proposal']
                parts = [model.detect_2d(model.extract_feat(imgs), views, proposal)] + [
                    model.detect_2d_flipped(imgs, views, proposal, d) for d in flips]
                merged = model.merge_detections(parts, proposal)
    for scene, (plain, flipped) in enumerate(zip(outputs[None], outputs[flips])):
        assert len(flipped.pred_instances_3d.scores_3d) > 0
        for view in range(3):
            kept = flipped.pred_instances[flipped.pred_instances.view_ids == view]
            expected = merged[scene * 3 + view]
            assert torch.equal(kept.bboxes, expected.bboxes)
            assert torch.equal(kept.scores, expected.scores)
        assert not torch.equal(flipped.pred_instances.bboxes, plain.pred_instances.bboxes)
    for setting, message in ((['sideways'], "'sideways' is not a flip direction"),
                             ('horizontal', 'is a list of directions'),
                             (['vertical', 'vertical'], 'names a direction twice')):
        cfg = tiny_mv2d_config()
        cfg['test_cfg']['detection_proposal']['flip_directions'] = setting
        with pytest.raises(XrayConfigError, match=message):
            _build(cfg)
    cfg = tiny_mv2d_config()
    cfg['train_cfg']['detection_proposal'] = dict(
        cfg['train_cfg'].get('detection_proposal', {}), flip_directions=['horizontal'])
    with pytest.raises(XrayConfigError, match="train_cfg.detection_proposal has no key"):
        _build(cfg)

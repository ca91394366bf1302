"""Per-finding cross-view evidence (``MV2DXray.predict(..., explain=True)``) on the tiny
model with random weights (CPU)."""
import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmdet3d.registry import MODELS
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData
from mv2d_test_utils import EMBED_DIMS, make_batch, tiny_mv2d_config

import projects.mv2d_xray.mv2d_xray  # noqa: F401  (registers the modules)
from projects.mv2d_xray.core.geometry import image_aug_matrix, transform_boxes2d
from projects.mv2d_xray.mv2d_xray.models.explanation import explanation_to_original

init_default_scope('mmdet3d')
MMLogger.get_current_instance().setLevel(logging.WARNING)


def _build(test_cfg=None, seed=0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    cfg = tiny_mv2d_config()
    if test_cfg is not None:
        cfg['test_cfg']['rcnn'] = test_cfg
    model = MODELS.build(cfg)
    model.init_weights()
    model.eval()
    return model


def _predict(model, batch, **kwargs):
    """Predict on a copy of ``batch`` (predict writes into the data samples)."""
    data = model.data_preprocessor(copy.deepcopy(batch), False)
    with torch.no_grad():
        return model(**data, mode='predict', **kwargs)


@pytest.mark.parametrize('test_cfg', [
    None,                                          # the tiny config: NMS, cap 50
    dict(score_thr=0.0, max_per_scene=3, nms=None),
    dict(score_thr=0.0, max_per_scene=50,
         nms=dict(type='centre_distance', dist_thr_mm=30.0, merge=True)),
])
def test_explain_leaves_predictions_bit_identical(test_cfg):
    torch.set_num_threads(1)
    model = _build(test_cfg)
    batch = make_batch(5, [3, 1], seed=3)
    plain = _predict(model, batch)
    explained = _predict(model, batch, explain=True)
    assert all('explanations' not in sample for sample in plain)
    for a, b in zip(plain, explained):
        pa, pb = a.pred_instances_3d, b.pred_instances_3d
        assert len(pa) > 0
        assert torch.equal(pa.bboxes_3d.tensor, pb.bboxes_3d.tensor)
        assert torch.equal(pa.scores_3d, pb.scores_3d)
        assert torch.equal(pa.labels_3d, pb.labels_3d)
        assert set(pb.keys()) == {'bboxes_3d', 'scores_3d', 'labels_3d'}
        for key in ('bboxes', 'scores', 'labels', 'view_ids'):
            assert torch.equal(a.pred_instances[key], b.pred_instances[key])
        assert len(b.explanations) == len(pb)


def test_explanations_point_at_their_queries_detections_and_attention():
    """Per output box: its explanation names the query the box was decoded from (the
    box and score equal that query's raw head output), a source detection and attended
    detections that are the scene's 2D detections (source first, one per other view),
    and cross-attention weights that sum to 1 over the attended RoIs (last layer,
    layer mean, every layer; cells sum to their RoI) and over the views."""
    torch.set_num_threads(1)
    model = _build()
    num_views, layers = 5, model.roi_head.bbox_head.num_layers
    batch = make_batch(num_views, [3, 1], seed=3)
    # the raw outputs of every query: the RoI head's forward, recorded during predict
    forwards = []
    head_forward = model.roi_head.forward
    model.roi_head.forward = lambda *a, **k: forwards.append(head_forward(*a, **k)) or \
        forwards[-1]
    results = _predict(model, batch, explain=True)
    assert len(forwards) == 1
    out = forwards[0]
    coder = model.roi_head.bbox_coder
    for scene, result in enumerate(results):
        queries = (out['scene_ids'] == scene).nonzero(as_tuple=True)[0]
        # sigmoid over the scene's queries at once, as the coder does (bit-exact)
        scores = out['all_cls_scores'][-1, queries, 0].sigmoid()
        pred, dets2d = result.pred_instances_3d, result.pred_instances
        assert len(result.explanations) == len(pred) > 0
        for k, expl in enumerate(result.explanations):
            q = queries[expl['query']]
            assert pred.scores_3d[k] == scores[expl['query']]
            box = torch.cat([pred.bboxes_3d.gravity_center[k], pred.bboxes_3d.dims[k]])
            assert torch.allclose(box, coder.decode_bboxes(out['all_codes'][-1, q])[:6])
            views = expl['attended_views']
            num = len(views)
            assert expl['attended_bboxes'].shape == (num, 4)
            assert expl['attended_scores'].shape == (num, )
            assert views[0] == expl['source_view']
            assert torch.equal(expl['attended_bboxes'][0], expl['source_bbox'])
            assert expl['attended_scores'][0] == pytest.approx(expl['source_score'])
            # 'topk_matched:1': at most one relevant detection in each other view
            assert len(set(views.tolist())) == num
            for view, box, score in zip(views, expl['attended_bboxes'],
                                        expl['attended_scores']):
                same = (dets2d.view_ids == view) & (dets2d.bboxes == box).all(dim=1)
                assert same.any() and dets2d.scores[same][0] == score
            one = torch.ones(())
            assert expl['attention'].shape == expl['attention_mean'].shape == (num, )
            assert expl['attention_layers'].shape == (layers, num)
            assert torch.allclose(expl['attention'].sum(), one, atol=1e-5)
            assert torch.allclose(expl['attention_mean'].sum(), one, atol=1e-5)
            assert torch.allclose(expl['attention_layers'].sum(1), torch.ones(layers),
                                  atol=1e-5)
            assert (expl['attention_layers'] >= 0).all()
            assert torch.allclose(expl['attention_layers'][-1], expl['attention'])
            assert expl['attention_cells'].shape == (num, 7, 7)
            assert torch.allclose(expl['attention_cells'].sum((1, 2)),
                                  expl['attention'], atol=1e-6)
            shares = expl['view_attention']
            assert shares.shape == (num_views, )
            assert torch.allclose(shares.sum(), one, atol=1e-5)
            for view in range(num_views):
                assert shares[view] == pytest.approx(
                    float(expl['attention'][views == view].sum()), abs=1e-6)


def _image_features(imgs, strides=(4, 8, 16, 32)):
    """Stand-in for the backbone: each FPN level is the view's image (normalised, the
    mean of its 3 channels) average-pooled to the level's stride, on every channel."""
    gray = imgs.flatten(0, 1).mean(dim=1, keepdim=True)             # (B * V, 1, H, W)
    return tuple(F.avg_pool2d(gray, s).expand(-1, EMBED_DIMS, -1, -1).contiguous()
                 for s in strides)


def _ground_truth_detections(samples, num_views):
    """Stand-in for the 2D stage: every view's ground-truth boxes, score 1."""
    dets = []
    for sample in samples:
        gt = sample.gt_instances
        for view in range(num_views):
            keep = gt.view_ids == view
            dets.append(InstanceData(bboxes=gt.bboxes[keep].float(),
                                     scores=torch.ones(int(keep.sum())),
                                     labels=gt.labels[keep]))
    return dets


def _content_driven_last_layer(model):
    """Make the last decoder layer's cross-attention logits the sum of each key's
    channels (per head): a constant query (``W_q = 0``, ``b_q = 1``) and ``W_k = I``,
    ``b_k = 0``."""
    attn = model.roi_head.bbox_head.transformer.layers[-1].cross_attn.attn
    dims = EMBED_DIMS
    with torch.no_grad():
        attn.in_proj_weight[:dims] = 0.0
        attn.in_proj_bias[:dims] = 1.0
        attn.in_proj_weight[dims:2 * dims] = torch.eye(dims)
        attn.in_proj_bias[dims:2 * dims] = 0.0


@pytest.mark.parametrize('blank_view', [1, 3])
def test_blanked_view_loses_its_share_of_the_attention(blank_view, monkeypatch):
    """Zero one view's image: that view's share of the attention drops, in every
    explanation that attends to it.

    Deterministic by construction, so the test checks the bookkeeping from attention
    cells to RoIs to views rather than what random weights happen to prefer:

    * the 2D stage is replaced by the ground-truth boxes (score 1), so the detections,
      their correlation, the merging and therefore the queries and what each attends
      to are the same with and without the blank view;
    * the features are the image itself (normalised, pooled per FPN level, copied to
      every channel): a zero image is the darkest possible, so every token of the
      blank view has smaller channels than before, and every other token is unchanged;
    * the last layer's attention logit of a key is the sum of its channels (constant
      query, identity key projection), independent of the earlier layers: blanking
      lowers exactly the blank view's logits, so its softmax share must fall (by
      ``exp(-d)``, ``d`` the drop of its logits: about 10 x for a bright finding).

    A wrong cell -> RoI -> view mapping would move the drop to another view.
    """
    torch.set_num_threads(1)
    model = _build(dict(score_thr=-1.0, max_per_scene=1000, nms=None))  # every query
    _content_driven_last_layer(model)
    num_views = 4
    batch = make_batch(num_views, [2], seed=7)
    monkeypatch.setattr(model, 'extract_feat', _image_features)
    monkeypatch.setattr(model, 'detect_2d', lambda feats, view_samples, cfg, **_:
                        _ground_truth_detections(samples, num_views))
    samples = batch['data_samples']
    clean = _predict(model, batch, explain=True)[0].explanations
    blank = copy.deepcopy(batch)
    blank['inputs']['img'][0][blank_view] = 0.0
    blanked = _predict(model, blank, explain=True)[0].explanations
    assert [e['query'] for e in clean] != [] and \
        sorted(e['query'] for e in clean) == sorted(e['query'] for e in blanked)
    blanked = {e['query']: e for e in blanked}
    checked = 0
    for before in clean:
        after = blanked[before['query']]
        assert torch.equal(before['attended_views'], after['attended_views'])
        assert torch.equal(before['attended_bboxes'], after['attended_bboxes'])
        if blank_view not in before['attended_views'].tolist():
            continue
        checked += 1
        share, share_blank = before['view_attention'], after['view_attention']
        assert share[blank_view] > 0.05
        assert share_blank[blank_view] < 0.5 * share[blank_view]
        others = [v for v in before['attended_views'].tolist() if v != blank_view]
        assert (share_blank[others] > share[others]).all()
    assert checked > 0


def test_record_cross_attention_keeps_outputs_and_cleans_up():
    """The recorder gives each layer's head-averaged weights (rows sum to 1, 0 on
    padding), leaves the outputs bit-identical, removes its hooks, and refuses to
    record dropped-out weights in training mode."""
    torch.manual_seed(0)
    decoder = MODELS.build(dict(type='MV2DXrayTransformer', num_layers=2, embed_dims=8,
                                num_heads=2, feedforward_channels=16))
    decoder.init_weights()
    decoder.eval()
    query_pos, key, key_pos = torch.randn(3, 8), torch.randn(3, 6, 8), torch.randn(3, 6, 8)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, 3:] = True
    with torch.no_grad():
        plain = decoder(query_pos, key, key_pos, padding)
        with decoder.record_cross_attention() as weights:
            recorded = decoder(query_pos, key, key_pos, padding)
    assert torch.equal(plain, recorded)
    assert len(weights) == 2 and all(w.shape == (3, 6) for w in weights)
    for w in weights:
        assert torch.allclose(w.sum(1), torch.ones(3), atol=1e-6)
        assert (w[1, 3:] == 0).all() and (w[1, :3] > 0).all()
    assert all(not layer.cross_attn.attn._forward_hooks for layer in decoder.layers)
    decoder.train()
    with pytest.raises(RuntimeError, match='eval mode'):
        with decoder.record_cross_attention():
            decoder(query_pos, key, key_pos, padding)
    assert all(not layer.cross_attn.attn._forward_hooks for layer in decoder.layers)


def test_explanation_to_original_undoes_resize_crop_flip():
    """Boxes of the original views, augmented per view (resize + crop, one view also
    flipped), come back to the original pixels; the other fields are untouched."""
    augs = np.stack([image_aug_matrix(scale=(0.5, 0.5), crop_offset=(4.0, 2.0)),
                     image_aug_matrix(scale=(0.5, 0.25), crop_offset=(0.0, 3.0),
                                      flip_width=40.0)])
    original = np.array([[10.0, 12.0, 30.0, 40.0], [20.0, 16.0, 28.0, 60.0]])
    views = np.array([1, 0])
    augmented = np.stack([transform_boxes2d(augs[v], b) for v, b in zip(views, original)])
    explanation = dict(source_view=1, source_bbox=torch.tensor(augmented[0], dtype=torch.float32),
                       attended_views=torch.as_tensor(views),
                       attended_bboxes=torch.tensor(augmented, dtype=torch.float32),
                       attention=torch.tensor([0.7, 0.3]))
    back = explanation_to_original(explanation, augs)
    np.testing.assert_allclose(back['attended_bboxes'].numpy(), original, atol=1e-4)
    np.testing.assert_allclose(back['source_bbox'].numpy(), original[0], atol=1e-4)
    assert back['attention'] is explanation['attention']
    assert not np.allclose(explanation['attended_bboxes'].numpy(), original)


def test_no_boxes_no_explanations():
    """Without 2D detections, and without a 3D stage, every sample gets an empty
    ``explanations`` list next to its empty 3D predictions."""
    cfg = tiny_mv2d_config()
    cfg['test_cfg']['detection_proposal']['score_thr'] = 1.0
    no_dets = MODELS.build(cfg)
    cfg = tiny_mv2d_config()
    cfg['roi_head'] = None
    no_3d = MODELS.build(cfg)
    for model in (no_dets, no_3d):
        model.eval()
        results = _predict(model, make_batch(3, [1, 1]), explain=True)
        assert [r.explanations for r in results] == [[], []]
        assert all(len(r.pred_instances_3d) == 0 for r in results)


def test_view_probe_mask_uses_the_flag_then_the_missing_2d_score():
    """``attended_probes`` decides where present (a NaN score is then no probe); a dict
    without it (by hand, or read back from JSON) marks the entries without a score."""
    from projects.mv2d_xray.mv2d_xray.models.explanation import view_probe_mask
    scores = torch.tensor([0.9, float('nan'), 0.4, float('nan')])
    assert view_probe_mask(dict(attended_scores=scores, attention=torch.ones(4))).tolist() \
        == [False, True, False, True]
    flagged = dict(attended_scores=scores, attention=torch.ones(4),
                   attended_probes=torch.tensor([False, False, True, False]))
    assert view_probe_mask(flagged).tolist() == [False, False, True, False]
    assert view_probe_mask(dict(attention=torch.ones(3))).tolist() == [False] * 3

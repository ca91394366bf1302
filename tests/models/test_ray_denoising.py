"""Ray denoising (``model.train_cfg.rcnn.ray_denoising``): the sampled points on
hand-made geometry, the head's fixed-target losses against a direct computation, and
the whole model's loss with it."""
import copy
import logging

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mv2d_test_utils import IMAGE_SIZE, make_batch, make_geometry, tiny_mv2d_config

import projects.mv2d_xray.mv2d_xray  # noqa: F401  (registers the modules)
from projects.mv2d_xray.core.geometry import project_points
from projects.mv2d_xray.mv2d_xray.models.config_keys import XrayConfigError
from projects.mv2d_xray.mv2d_xray.models.ray_denoising import (check_ray_denoising,
                                                               sample_ray_points)

init_default_scope('mmdet3d')
MMLogger.get_current_instance().setLevel(logging.WARNING)


def _lidar2img(num_views):
    geometry = make_geometry(num_views)
    return torch.from_numpy(np.stack([geometry.lidar2img(v) for v in range(num_views)]))


def _source(num_views, view):
    return torch.from_numpy(make_geometry(num_views).source_position(view))


def test_ray_points_lie_on_the_source_rays_off_the_finding():
    """Per finding and ray: one positive near the centre, the negatives on the ray from
    that view's source through the centre (same pixel in that view, elsewhere in the
    others), each at least radius + offset_mm[0] from the centre; a finding no view sees
    gets no point."""
    lidar2img = _lidar2img(6)
    boxes = torch.tensor([[10.0, -20.0, 5.0, 12.0, 8.0, 10.0, 0.0],
                          [-30.0, 25.0, -10.0, 20.0, 20.0, 20.0, 0.0],
                          [0.0, 0.0, 5000.0, 10.0, 10.0, 10.0, 0.0]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    out = sample_ray_points(boxes, lidar2img, IMAGE_SIZE, num_rays=2, num_negatives=3,
                            offset_mm=(10.0, 40.0), pos_noise_mm=1.0, generator=gen)
    assert len(out.points) == 2 * 2 * 4                 # the third finding: no view
    assert (out.gt_index < 2).all()
    assert int(out.positive.sum()) == 4
    radius = boxes[:, 3:6].amax(dim=1) / 2
    for gt in range(2):
        mine = out.gt_index == gt
        assert len(set(out.source_view[mine].tolist())) == 2   # two distinct views
        centre = boxes[gt, :3]
        pos = out.points[mine & out.positive]
        assert (pos - centre).norm(dim=1).max() < 5.0           # 1 mm noise per axis
        for view in out.source_view[mine].unique().tolist():
            neg = out.points[mine & ~out.positive & (out.source_view == view)]
            assert len(neg) == 3
            dist = (neg - centre).norm(dim=1)
            assert (dist >= radius[gt] + 10.0 - 1e-6).all()
            assert (dist <= (radius[gt] + 40.0) * 1.2).all()  # depth offset, oblique ray
            uv_c, _ = project_points(lidar2img[view], centre[None])
            uv_n, _ = project_points(lidar2img[view], neg)
            assert torch.allclose(uv_n, uv_c.expand_as(uv_n), atol=1e-6)
            # on the ray: the source, the centre and the point are collinear
            src = _source(6, view)
            ray = (centre - src) / (centre - src).norm()
            off = neg - src
            assert (off - (off @ ray)[:, None] * ray).norm(dim=1).max() < 1e-6
            other = (view + 1) % 6                               # a view 60 deg away
            uv_o, _ = project_points(lidar2img[other], neg)
            uv_oc, _ = project_points(lidar2img[other], centre[None])
            # >= 16 mm off the centre, 2x magnified, 6.25 mm pixels: >= 4 px x sin 60 deg
            assert ((uv_o - uv_oc).norm(dim=1) > 3.0).all()


def test_ray_points_take_every_view_when_fewer_than_num_rays_see_it():
    lidar2img = _lidar2img(3)
    boxes = torch.tensor([[0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 0.0]], dtype=torch.float64)
    out = sample_ray_points(boxes, lidar2img, IMAGE_SIZE, num_rays=5, num_negatives=0,
                            offset_mm=(10.0, 20.0), pos_noise_mm=0.0)
    assert sorted(out.source_view.tolist()) == [0, 1, 2]
    assert out.positive.all() and torch.allclose(out.points, boxes[:, :3].expand(3, 3))
    empty = sample_ray_points(boxes[:0], lidar2img, IMAGE_SIZE, 2, 3, (10.0, 20.0), 1.0)
    assert empty.points.shape == (0, 3) and len(empty.gt_index) == 0


@pytest.mark.parametrize('cfg,message', [
    (dict(num_ray=2), "did you mean 'num_rays'"),
    (dict(num_rays=0), 'num_rays must be an integer >= 1'),
    (dict(num_negatives=-1), 'num_negatives must be an integer >= 0'),
    (dict(offset_mm=(30.0, 10.0)), 'offset_mm must be (low, high)'),
    (dict(pos_noise_mm=-1.0), 'pos_noise_mm must be >= 0'),
    (dict(loss_weight=0.0), 'loss_weight > 0'),
])
def test_bad_ray_denoising_settings_are_refused(cfg, message):
    with pytest.raises(ValueError, match=None) as info:
        check_ray_denoising(cfg)
    assert message in str(info.value)
    assert 'model.train_cfg.rcnn.ray_denoising' in str(info.value)
    if 'did you mean' in message:
        assert isinstance(info.value, XrayConfigError)


def test_defaults_are_filled_in():
    assert check_ray_denoising(None) is None
    cfg = check_ray_denoising(dict(num_rays=1))
    assert cfg['num_rays'] == 1 and cfg['num_negatives'] == 3
    assert cfg['offset_mm'] == (10.0, 60.0)
    # whole floats (as a command line may give them) become the integers sampling needs
    cfg = check_ray_denoising(dict(num_rays=2.0, num_negatives=1.0))
    assert type(cfg['num_rays']) is int and type(cfg['num_negatives']) is int
    out = sample_ray_points(torch.tensor([[0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 0.0]]),
                            _lidar2img(3), IMAGE_SIZE, cfg['num_rays'], cfg['num_negatives'],
                            cfg['offset_mm'], cfg['pos_noise_mm'])
    assert len(out.points) == 2 * 2


def test_denoising_loss_against_a_direct_computation():
    """Fixed targets: the focal loss over every query and the weighted L1 over the
    positives, both averaged over the positives, per layer times the layer weight and
    ``loss_weight``."""
    torch.manual_seed(0)
    head = MODELS.build(tiny_mv2d_config(num_layers=2)['roi_head']['bbox_head'] |
                        dict(train_cfg=None))
    labels = torch.tensor([0, 1, 1, 0, 1])                   # 1 = background
    boxes = torch.tensor([[10.0, 0.0, -5.0, 8.0, 9.0, 10.0]] * 5)
    cls = torch.randn(2, 5, 1)
    codes = torch.rand(2, 5, 6)
    losses = head.denoising_loss(cls, codes, labels, boxes, [1.0, 0.5], loss_weight=2.0)
    targets = head.bbox_coder.encode(boxes)
    weights = head.code_weights
    for layer, w in enumerate([1.0, 0.5]):
        p = cls[layer, :, 0].sigmoid()
        t = (labels == 0).float()
        pt = p * t + (1 - p) * (1 - t)
        alpha = 0.25 * t + 0.75 * (1 - t)
        focal = -(alpha * (1 - pt) ** 2 * torch.log(pt)).sum() / 2 * 2.0   # weight 2
        l1 = ((codes[layer] - targets).abs() * weights)[labels == 0].sum() / 2 * 0.25
        assert torch.isclose(losses[f'l{layer}.loss_cls_dn'], focal * w * 2.0, rtol=1e-4)
        assert torch.isclose(losses[f'l{layer}.loss_bbox_dn'], l1 * w * 2.0, rtol=1e-5)


def _dn_model(**dn):
    cfg = tiny_mv2d_config()
    cfg['roi_head']['support_embedding'] = dict(gate_px=3.0)
    cfg['train_cfg']['rcnn']['ray_denoising'] = dict(dict(num_rays=2, num_negatives=2), **dn)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def test_the_model_trains_with_ray_denoising():
    """The denoising terms join the loss (finite, backward reaches the decoder and the
    support encoder), a scene without findings adds no query, and fitting one batch
    lowers them."""
    torch.set_num_threads(1)
    model = _dn_model()
    model.train()
    queries = []
    decode = model.roi_head.decode
    model.roi_head.decode = lambda *a: queries.append(len(a[0])) or decode(*a)
    data = model.data_preprocessor(make_batch(4, [2, 0], seed=4), True)
    losses = model(**copy.deepcopy(data), mode='loss')
    for layer in range(6):
        assert f'l{layer}.loss_cls_dn' in losses and f'l{layer}.loss_bbox_dn' in losses
    assert queries[-1] == 2 * 2 * 3                  # 2 findings x 2 rays x (1 + 2)
    assert losses['l5.loss_bbox_dn'] > 0
    # the denoising terms alone reach the decoder, the support encoder and the classifier
    sum(v for k, v in losses.items() if k.endswith('_dn')).backward()
    for prefix in ('roi_head.bbox_head.transformer', 'roi_head.support_encoder',
                   'roi_head.bbox_head.cls_branches.5'):
        assert any(name.startswith(prefix) and p.grad is not None and p.grad.abs().sum() > 0
                   for name, p in model.named_parameters()), prefix
    model.zero_grad()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def dn_loss():
        torch.manual_seed(0)                          # the same points every step
        out = model(**copy.deepcopy(data), mode='loss')
        return model.parse_losses(out)[0], sum(v for k, v in out.items() if k.endswith('_dn'))

    def measured():                                   # the same mode before and after
        model.eval()
        with torch.no_grad():
            value = float(dn_loss()[1])
        model.train()
        return value

    first = measured()
    for _ in range(10):
        total, _ = dn_loss()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert measured() < 0.85 * first


def test_a_batch_without_findings_gives_zero_denoising_terms(monkeypatch):
    """Zero terms, still computed through the head's loss, which averages the positives'
    count over the processes of a distributed run: every process must join."""
    torch.set_num_threads(1)
    model = _dn_model()
    model.train()
    averaged = []
    import projects.mv2d_xray.mv2d_xray.models.cross_attention_head as head_module
    monkeypatch.setattr(head_module, 'reduce_mean',
                        lambda t: averaged.append(float(t)) or t)
    data = model.data_preprocessor(make_batch(3, [0], seed=2), True)
    losses = model(**data, mode='loss')
    assert all(float(losses[f'l{layer}.loss_cls_dn']) == 0.0 for layer in range(6))
    assert all(float(losses[f'l{layer}.loss_bbox_dn']) == 0.0 for layer in range(6))
    # one averaging per layer of the matched queries' loss, one for the denoising loss
    assert averaged == [0.0] * 7
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)

"""XrayContextRoIExtractor: RoI features read from a window grown about the box."""
import pytest
import torch
from mmdet3d.registry import MODELS
from mmengine.registry import init_default_scope

import projects.mv2d_xray.mv2d_xray  # noqa: F401  (registers the modules)
from projects.mv2d_xray.mv2d_xray.models.config_keys import XrayConfigError

init_default_scope('mmdet3d')


def _extractor(context_scale, featmap_strides=(4, 8)):
    return MODELS.build(
        dict(type='XrayContextRoIExtractor', context_scale=context_scale,
             roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2),
             out_channels=1, featmap_strides=list(featmap_strides)))


def _feats():
    """Level 0 (stride 4, 64 px): 1 inside the 32 x 32 px square at (16, 16)-(48, 48) and 0
    around it; level 1 (stride 8) 5 everywhere, so reading it would show."""
    level0 = torch.zeros(1, 1, 16, 16)
    level0[..., 4:12, 4:12] = 1.0
    return (level0, torch.full((1, 1, 8, 8), 5.0))


def test_scale_one_reads_the_box_alone():
    rois = torch.tensor([[0.0, 20.0, 20.0, 44.0, 44.0]])    # inside the square
    out = _extractor(1.0)(_feats(), rois)
    assert out.shape == (1, 1, 7, 7)
    assert torch.allclose(out, torch.ones_like(out))


def test_grown_window_reads_the_surroundings_on_the_box_level():
    # a 24 px box grown 2x reads 48 px about (32, 32): (8, 8)-(56, 56), feature cells
    # 1.5-13.5 of level 0; per row of the 7 x 7 samples 0, 0.82, 1, 1, 1, 0.82, 0 (the
    # square covers cells 4-11), mean 0.44
    rois = torch.tensor([[0.0, 20.0, 20.0, 44.0, 44.0]])
    out = _extractor(2.0)(_feats(), rois)[0, 0]
    assert out[3, 3] == pytest.approx(1.0)
    assert out[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert out.mean().item() == pytest.approx(0.44, abs=0.01)


def test_level_chosen_from_the_box_as_detected():
    # 100 px box: level 0 (< 112 px); grown 2x to 200 px it would map to level 1 if the
    # level were chosen after growing. Level 0 reads the square (1 at the centre, 0 around
    # it), level 1 would read 5.
    rois = torch.tensor([[0.0, -18.0, -18.0, 82.0, 82.0]])
    out = _extractor(2.0)(_feats(), rois)
    assert out.max() <= 1.0 + 1e-6
    assert out[0, 0, 3, 3] == pytest.approx(1.0)


def test_one_level_grows_the_window_too():
    # mmdet's one-level path returns before its own rescaling; the window still grows
    rois = torch.tensor([[0.0, 20.0, 20.0, 44.0, 44.0]])
    out = _extractor(2.0, featmap_strides=(4, ))(_feats()[:1], rois)[0, 0]
    assert out[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert out[3, 3] == pytest.approx(1.0)


def test_a_callers_factor_multiplies_the_setting():
    rois = torch.tensor([[0.0, 26.0, 26.0, 38.0, 38.0]])    # 12 px box
    feats = _feats()
    assert torch.allclose(_extractor(2.0)(feats, rois, roi_scale_factor=2.0),
                          _extractor(4.0)(feats, rois))


@pytest.mark.parametrize('bad', [0.5, 0, -2.0, '2', None, True, float('inf'), float('nan')])
def test_a_scale_under_one_or_not_a_number_is_refused(bad):
    with pytest.raises(XrayConfigError, match='context_scale'):
        _extractor(bad)

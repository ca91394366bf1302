"""XrayPartialEMA: the 3D head averaged, the 2D stage (and its BatchNorm statistics) as
trained -- checked against a hand-computed average, and built by mmengine's EMAHook."""
import pytest
import torch
from mmengine.hooks import EMAHook
from mmengine.registry import DefaultScope
from torch import nn

from projects.mv2d_xray.mv2d_xray.engine import XrayPartialEMA


class TwoStage(nn.Module):
    """A stand-in for MV2DXray's naming: a `base_detector` with BatchNorm, a head."""

    def __init__(self):
        super().__init__()
        self.base_detector = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)


def set_weights(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_the_head_is_averaged_and_the_2d_stage_followed():
    torch.manual_seed(0)
    model = TwoStage()
    set_weights(model, 1.0)
    ema = XrayPartialEMA(model, momentum=0.25)
    ema.update_parameters(model)            # step 0: mmengine copies every weight
    set_weights(model, 5.0)
    model.train()
    model.base_detector(torch.randn(8, 3))  # BatchNorm's running statistics move
    ema.update_parameters(model)            # step 1: 1 + 0.25 * (5 - 1) = 2
    averaged = ema.module
    for p in averaged.head.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 2.0))
    for p in averaged.base_detector.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 5.0))
    bn, bn_avg = model.base_detector[1], averaged.base_detector[1]
    torch.testing.assert_close(bn_avg.running_mean, bn.running_mean)
    torch.testing.assert_close(bn_avg.running_var, bn.running_var)
    # a third step, with the weights of the 2D stage changed again
    set_weights(model, 9.0)
    ema.update_parameters(model)            # 2 + 0.25 * (9 - 2) = 3.75
    torch.testing.assert_close(averaged.head.weight, torch.full((2, 4), 3.75))
    torch.testing.assert_close(averaged.base_detector[0].weight, torch.full((4, 3), 9.0))


def test_a_prefix_that_names_no_parameter_is_refused():
    with pytest.raises(ValueError, match='no parameter of TwoStage'):
        XrayPartialEMA(TwoStage(), follow_prefixes=('base_detecter.', ))
    with pytest.raises(ValueError, match='at least one'):
        XrayPartialEMA(TwoStage(), follow_prefixes=())


def test_mmengine_ema_hook_builds_it_by_name():
    class Runner:
        model = TwoStage()

    hook = EMAHook(ema_type='XrayPartialEMA', momentum=0.5,
                   follow_prefixes=('base_detector.', ))
    with DefaultScope.overwrite_default_scope('mmdet3d'):
        hook.before_run(Runner)
    assert isinstance(hook.ema_model, XrayPartialEMA)
    assert hook.ema_model.momentum == 0.5
    assert set(hook.ema_model.followed) == {
        'base_detector.0.weight', 'base_detector.0.bias', 'base_detector.1.weight',
        'base_detector.1.bias'
    }
    assert set(hook.ema_model.avg_parameters) == {'head.weight', 'head.bias'}

"""An exponential moving average of some of a model's weights, for mmengine's EMAHook."""
from typing import Dict, Optional, Sequence

import torch
from mmdet3d.registry import MODELS
from mmengine.model import ExponentialMovingAverage
from torch import nn


@MODELS.register_module()
class XrayPartialEMA(ExponentialMovingAverage):
    """mmengine's :class:`~mmengine.model.ExponentialMovingAverage` that averages every
    parameter except those named under ``follow_prefixes``, which it copies from the
    trained model at each update instead.

    Why: mmengine's EMAHook averages the whole model, and by default copies the buffers
    (BatchNorm's running statistics) from the trained model. For a 2D stage trained on
    with the 3D head (``freeze_base_detector=False``) whose BatchNorm layers keep
    learning their statistics, the averaged convolutions then meet statistics measured
    on other weights (on the blades' val, over two trainings, its detections triangulated
    0.029 CPM lower than the same trainings' own last weights', and MV2D scored 0.010
    lower; README, blades ablations ``ema002``). With
    ``follow_prefixes=('base_detector.',)`` the 2D stage is kept as trained and only the
    3D head (query generator, decoder, heads) is averaged.

    Use it through the hook::

        custom_hooks = [dict(type='EMAHook', ema_type='XrayPartialEMA',
                             momentum=0.002, follow_prefixes=('base_detector.',))]

    Args:
        model (nn.Module): The model to average (the hook passes the trained model).
        momentum (float): Each update moves an averaged weight this fraction of the
            way to the trained one. Defaults to 0.0002 (mmengine's).
        interval (int): Update every this many calls. Defaults to 1.
        device (torch.device, optional): Where to keep the average.
        update_buffers (bool): Average the buffers too (mmengine's meaning); the
            followed ones are copied either way. Defaults to False.
        follow_prefixes (Sequence[str]): Parameter (and, with ``update_buffers``,
            buffer) names starting with one of these are copied, not averaged.
            Defaults to ``('base_detector.',)``, MV2D's 2D stage.
    """

    def __init__(self,
                 model: nn.Module,
                 momentum: float = 0.0002,
                 interval: int = 1,
                 device: Optional[torch.device] = None,
                 update_buffers: bool = False,
                 follow_prefixes: Sequence[str] = ('base_detector.', )) -> None:
        super().__init__(model, momentum, interval, device, update_buffers)
        prefixes = tuple(follow_prefixes)
        if not prefixes or not all(isinstance(p, str) and p for p in prefixes):
            raise ValueError('XrayPartialEMA: follow_prefixes must name at least one '
                             f'non-empty parameter prefix, got {follow_prefixes!r}')
        if not any(name.startswith(prefixes) for name in self.avg_parameters):
            raise ValueError(f'XrayPartialEMA: no parameter of {type(model).__name__} '
                             f'starts with follow_prefixes {prefixes}')
        self.followed: Dict[str, torch.Tensor] = {
            name: p for name, p in self.avg_parameters.items() if name.startswith(prefixes)
        }
        self.avg_parameters = {
            name: p for name, p in self.avg_parameters.items() if name not in self.followed
        }

    def update_parameters(self, model: nn.Module) -> None:
        """Average the other weights as mmengine does, then copy the followed ones."""
        super().update_parameters(model)
        source = model.state_dict() if self.update_buffers else dict(model.named_parameters())
        for name, p_followed in self.followed.items():
            p_followed.data.copy_(source[name].data.to(p_followed.device))

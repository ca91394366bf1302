"""RoI features with context: mmdet's single-level RoI extractor on boxes grown about
their centre before RoI-align.

A 3-6 mm nodule projects to a 3.6-7 px box, one or two cells of the stride-4 level that
mmdet maps it to; RoI-align then samples its 7 x 7 grid inside those cells, so the R-CNN
judges the blob without what surrounds it. In a chest projection what tells a nodule from
a vessel seen end-on (both blobs in one view) is around it: a vessel continues as a line.
mmdet's ``SingleRoIExtractor.forward`` takes a ``roi_scale_factor`` for this, but its RoI
heads never pass one; this subclass makes it a setting. The level is still chosen from
the box as detected (mmdet maps before it rescales), and the boxes the head regresses and
returns are not changed: only the features it reads come from the larger window.
"""
import math
from typing import Optional, Tuple

from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet3d.registry import MODELS
from torch import Tensor

from projects.mv2d_xray.mv2d_xray.models.config_keys import XrayConfigError


@MODELS.register_module()
class XrayContextRoIExtractor(SingleRoIExtractor):
    """mmdet's ``SingleRoIExtractor`` reading each RoI grown ``context_scale`` times
    about its centre (width and height; mmdet's ``roi_rescale``).

    In a 2D stage's ``roi_head`` (built in mmdet's scope, :class:`MV2DXrayTwoStage2D`)
    name it with its scope: ``bbox_roi_extractor=dict(type='mmdet3d.XrayContextRoIExtractor',
    context_scale=2.0, ...)``; the MV2D config whose frozen 2D stage makes the test-time
    detections must name it too. It has no weights: checkpoints load either way.

    Args:
        context_scale (float): the factor, >= 1 (1: mmdet's extractor as it is).
        **kwargs: ``SingleRoIExtractor``'s (``roi_layer``, ``out_channels``,
            ``featmap_strides``, ``finest_scale``).
    """

    def __init__(self, context_scale: float = 1.0, **kwargs) -> None:
        if (isinstance(context_scale, bool) or not isinstance(context_scale, (int, float))
                or not 1.0 <= context_scale < math.inf):
            raise XrayConfigError(
                f'bbox_roi_extractor.context_scale must be a finite number >= 1 (1: no context), '
                f'not {context_scale!r}')
        super().__init__(**kwargs)
        self.context_scale = float(context_scale)

    def forward(self, feats: Tuple[Tensor], rois: Tensor,
                roi_scale_factor: Optional[float] = None) -> Tensor:
        """RoI features ``(K, C, out_size, out_size)`` of ``rois`` ``(K, 5)`` (batch
        index, x1, y1, x2, y2 in input px) from ``feats`` (per level ``(N, C, h, w)``);
        a caller's ``roi_scale_factor`` multiplies ``context_scale``."""
        scale = self.context_scale * (1.0 if roi_scale_factor is None else roi_scale_factor)
        if scale == 1.0:
            return super().forward(feats, rois)
        if len(feats) == 1:   # mmdet's one-level path returns before it rescales
            return super().forward(feats, self.roi_rescale(rois, scale))
        return super().forward(feats, rois, roi_scale_factor=scale)

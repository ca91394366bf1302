"""Box coding of the 3D head: axis-aligned boxes in ``ct`` mm <-> regression codes.

The code of a box ``[x, y, z, dx, dy, dz]`` (gravity centre and full extents, mm, ``ct``
frame, yaw = 0) is

    ``[(x - x0) / (x1 - x0), (y - y0) / (y1 - y0), (z - z0) / (z1 - z0),
       log dx, log dy, log dz]``

with ``pc_range = [x0, y0, z0, x1, y1, z1]`` (mm). The centre part lives in ``[0, 1]``
inside ``pc_range``; the head predicts it PETR-style as ``sigmoid(delta +
inverse_sigmoid(reference))``, so decoded centres never leave ``pc_range`` (the RoI
head's ``test_cfg.refine_radius_mm`` may later move one onto a prior outside it). Sizes are
log-mm (a 10 % size error costs ~0.1 whatever the nodule size). No yaw: the boxes are
axis-aligned in ``ct`` and regressing ``sin/cos`` of a constant would only add noise
(the earlier X-ray port regressed 8 numbers for 6 degrees of freedom).

How strongly a centre error counts against a size error is set by the head's
``code_weights`` (see :class:`MV2DXrayCrossAttentionHead`), not here.
"""
from typing import Dict, Sequence

import torch
from mmdet3d.registry import TASK_UTILS
from mmdet.models.task_modules import BaseBBoxCoder
from torch import Tensor

from projects.mv2d_xray.core.geometry import denormalize_points, normalize_points

#: Smallest box extent (mm) accepted by :meth:`MV2DXrayNMSFreeCoder.encode`; guards
#: ``log`` against zero-size annotations.
MIN_EXTENT_MM = 1e-2
#: Largest log-extent decoded (exp(8) mm ~ 3 m): keeps untrained predictions finite.
MAX_LOG_EXTENT = 8.0


@TASK_UTILS.register_module()
class MV2DXrayNMSFreeCoder(BaseBBoxCoder):
    """Encode ``ct`` boxes to 6-d codes and decode the head's outputs to boxes.

    Decoding is DETR-style "NMS-free": sigmoid scores of every query and class, sorted.
    The score threshold, the duplicate suppression (:func:`centre_distance_nms`) and
    the cap on the number of boxes follow in the RoI head (its ``test_cfg``). No
    centre-range filter: decoded centres are sigmoid-bounded inside ``pc_range``.

    Args:
        pc_range (Sequence[float]): ``[x0, y0, z0, x1, y1, z1]`` in ct mm, the region
            predicted centres can take; derive it from the dataset geometry (about
            +-250 mm covers a chest CT).
        num_classes (int): Number of classes. Defaults to 1.
    """

    code_size = 6

    def __init__(self,
                 pc_range: Sequence[float],
                 num_classes: int = 1) -> None:
        super().__init__()
        if len(pc_range) != 6 or not all(
                pc_range[i + 3] > pc_range[i] for i in range(3)):
            raise ValueError(f'pc_range must be [x0, y0, z0, x1, y1, z1] with '
                             f'x1 > x0 etc. (mm), got {pc_range}')
        self.pc_range = [float(v) for v in pc_range]
        self.num_classes = int(num_classes)

    # -- centres -------------------------------------------------------------------------
    def normalize_points(self, points: Tensor) -> Tensor:
        """``(..., 3)`` ct points in mm -> ``(..., 3)`` pc_range-normalised (``[0, 1]``
        inside ``pc_range``; not clamped)."""
        return normalize_points(points, self.pc_range)

    def denormalize_points(self, points: Tensor) -> Tensor:
        """Inverse of :meth:`normalize_points`: ``(..., 3)`` -> ct mm."""
        return denormalize_points(points, self.pc_range)

    # -- boxes ---------------------------------------------------------------------------
    def encode(self, bboxes: Tensor) -> Tensor:
        """``(M, >=6)`` boxes ``[x, y, z, dx, dy, dz, ...]`` (gravity centre, mm) ->
        ``(M, 6)`` codes."""
        centre = self.normalize_points(bboxes[:, :3])
        log_dims = bboxes[:, 3:6].clamp(min=MIN_EXTENT_MM).log()
        return torch.cat([centre, log_dims], dim=-1)

    def decode_bboxes(self, codes: Tensor) -> Tensor:
        """``(..., 6)`` codes -> ``(..., 7)`` boxes ``[x, y, z, dx, dy, dz, 0]``
        (gravity centre, mm, yaw 0)."""
        centre = self.denormalize_points(codes[..., :3])
        dims = codes[..., 3:6].clamp(max=MAX_LOG_EXTENT).exp()
        return torch.cat([centre, dims, torch.zeros_like(dims[..., :1])], dim=-1)

    def decode(self, cls_scores: Tensor, codes: Tensor) -> Dict[str, Tensor]:
        """Decode one scene's queries: every query and class, by decreasing score.

        Args:
            cls_scores (Tensor): ``(Q, num_classes)`` logits.
            codes (Tensor): ``(Q, 6)`` box codes.

        Returns:
            dict: ``bboxes`` ``(Q * num_classes, 7)`` (gravity centres and extents,
            ct mm), ``scores``, ``labels`` and ``query_ids`` (the query each row
            comes from, an index into ``cls_scores``) ``(Q * num_classes,)``, sorted
            by decreasing score.
        """
        scores = cls_scores.sigmoid().flatten()
        scores, index = scores.topk(scores.numel())
        labels = index % self.num_classes
        query_ids = torch.div(index, self.num_classes, rounding_mode='floor')
        bboxes = self.decode_bboxes(codes[query_ids])
        return dict(bboxes=bboxes, scores=scores, labels=labels, query_ids=query_ids)

"""Box coding of the 3D head: axis-aligned boxes in ``ct`` mm <-> regression codes.

The code of a box ``[x, y, z, dx, dy, dz]`` (gravity centre and full extents, mm, ``ct``
frame, yaw = 0) is

    ``[(x - x0) / (x1 - x0), (y - y0) / (y1 - y0), (z - z0) / (z1 - z0),
       log dx, log dy, log dz]``

with ``pc_range = [x0, y0, z0, x1, y1, z1]`` (mm). The centre part lives in ``[0, 1]``
inside ``pc_range``; the head predicts it PETR-style as ``sigmoid(delta +
inverse_sigmoid(reference))``, so predicted centres never leave ``pc_range``. Sizes are
log-mm (a 10 % size error costs ~0.1 whatever the nodule size). No yaw: the boxes are
axis-aligned in ``ct`` and regressing ``sin/cos`` of a constant would only add noise
(the earlier X-ray port regressed 8 numbers for 6 degrees of freedom).

How strongly a centre error counts against a size error is set by the head's
``code_weights`` (see :class:`MV2DXrayCrossAttentionHead`), not here.
"""
from typing import Dict, Optional, Sequence

import torch
from mmdet.models.task_modules import BaseBBoxCoder
from torch import Tensor

from mmdet3d.registry import TASK_UTILS

#: Smallest box extent (mm) accepted by :meth:`MV2DXrayNMSFreeCoder.encode`; guards
#: ``log`` against zero-size annotations.
MIN_EXTENT_MM = 1e-2
#: Largest log-extent decoded (exp(8) mm ~ 3 m): keeps untrained predictions finite.
MAX_LOG_EXTENT = 8.0


@TASK_UTILS.register_module()
class MV2DXrayNMSFreeCoder(BaseBBoxCoder):
    """Encode ``ct`` boxes to 6-d codes and decode the head's outputs to boxes.

    Decoding is DETR-style "NMS-free": sigmoid scores, top-``max_num`` over
    queries x classes, an optional score threshold and a centre-range filter.
    (Duplicate queries of the same finding from different views are handled after
    decoding, see :func:`center_distance_nms`.)

    Args:
        pc_range (Sequence[float]): ``[x0, y0, z0, x1, y1, z1]`` in mm, the region
            predicted centres can take; derive it from the dataset geometry (about
            +-250 mm covers a chest CT).
        post_center_range (Sequence[float], optional): ``[x0, y0, z0, x1, y1, z1]``
            in mm; decoded boxes whose centre falls outside are dropped. Defaults
            to None (keep all).
        max_num (int): Maximum number of boxes per scene. Defaults to 300.
        score_threshold (float, optional): Drop boxes scoring at or below this.
            Defaults to None.
        num_classes (int): Number of classes. Defaults to 1.
    """

    code_size = 6

    def __init__(self,
                 pc_range: Sequence[float],
                 post_center_range: Optional[Sequence[float]] = None,
                 max_num: int = 300,
                 score_threshold: Optional[float] = None,
                 num_classes: int = 1,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if len(pc_range) != 6 or not all(
                pc_range[i + 3] > pc_range[i] for i in range(3)):
            raise ValueError(f'pc_range must be [x0, y0, z0, x1, y1, z1] with '
                             f'x1 > x0 etc. (mm), got {pc_range}')
        if post_center_range is not None and len(post_center_range) != 6:
            raise ValueError('post_center_range must have 6 values, got '
                             f'{post_center_range}')
        self.pc_range = [float(v) for v in pc_range]
        self.post_center_range = (None if post_center_range is None else
                                  [float(v) for v in post_center_range])
        self.max_num = int(max_num)
        self.score_threshold = score_threshold
        self.num_classes = int(num_classes)

    # -- centres -------------------------------------------------------------------------
    def _range(self, ref: Tensor):
        rng = ref.new_tensor(self.pc_range)
        return rng[:3], rng[3:] - rng[:3]

    def normalize_points(self, points: Tensor) -> Tensor:
        """``(..., 3)`` ct points in mm -> ``(..., 3)`` pc_range-normalised (``[0, 1]``
        inside ``pc_range``; not clamped)."""
        low, extent = self._range(points)
        return (points - low) / extent

    def denormalize_points(self, points: Tensor) -> Tensor:
        """Inverse of :meth:`normalize_points`."""
        low, extent = self._range(points)
        return points * extent + low

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
        """Decode one scene's queries.

        Args:
            cls_scores (Tensor): ``(Q, num_classes)`` logits.
            codes (Tensor): ``(Q, 6)`` box codes.

        Returns:
            dict: ``bboxes`` ``(K, 7)`` (gravity centres, mm), ``scores`` ``(K,)``
            and ``labels`` ``(K,)``, sorted by decreasing score.
        """
        scores = cls_scores.sigmoid().flatten()
        num = min(self.max_num, scores.numel())
        scores, index = scores.topk(num)
        labels = index % self.num_classes
        bboxes = self.decode_bboxes(codes[index // self.num_classes])
        keep = torch.ones_like(scores, dtype=torch.bool)
        if self.score_threshold is not None:
            keep &= scores > self.score_threshold
        if self.post_center_range is not None:
            rng = bboxes.new_tensor(self.post_center_range)
            keep &= (bboxes[:, :3] >= rng[:3]).all(-1)
            keep &= (bboxes[:, :3] <= rng[3:]).all(-1)
        return dict(bboxes=bboxes[keep], scores=scores[keep], labels=labels[keep])

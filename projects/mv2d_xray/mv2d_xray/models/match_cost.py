"""L1 matching cost between 3D box codes (mmdet 3.x match-cost interface).

mmdet's own ``BBoxL1Cost`` cannot be used: it converts 4-d image boxes and divides by
the image size. The classification cost needs nothing new: mmdet's ``FocalLossCost``
(``binary_input=False``) is already right for sigmoid outputs (``pos - neg`` cost of the
GT class, lowest for high-score queries).
"""
from typing import Optional

import torch
from mmdet3d.registry import TASK_UTILS
from mmengine.structures import InstanceData
from torch import Tensor


@TASK_UTILS.register_module()
class MV2DXrayBBox3DL1Cost:
    """``weight * sum_k |pred_k - gt_k|`` between every prediction and GT code.

    The codes (see :class:`MV2DXrayNMSFreeCoder`) should already carry the head's
    per-dimension ``code_weights``, so matching and the L1 loss weigh centre and size
    errors alike.

    Args:
        weight (float): Scale of the cost. Defaults to 1.0.
    """

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    def __call__(self,
                 pred_instances: InstanceData,
                 gt_instances: InstanceData,
                 img_meta: Optional[dict] = None,
                 **kwargs) -> Tensor:
        """Args:
            pred_instances (InstanceData): ``bboxes`` ``(Q, D)`` predicted codes.
            gt_instances (InstanceData): ``bboxes`` ``(M, D)`` GT codes.

        Returns:
            Tensor: ``(Q, M)`` cost.
        """
        return torch.cdist(pred_instances.bboxes, gt_instances.bboxes,
                           p=1) * self.weight

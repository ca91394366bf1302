"""One-to-one (Hungarian) assignment of 3D queries to GT boxes.

A thin layer over mmdet's :class:`~mmdet.models.task_modules.HungarianAssigner` (which
sums the configured match costs and runs scipy's ``linear_sum_assignment``). It adds
what the 3D head needs: the costs are built from mmdet3d's registry (so both
``mmdet.FocalLossCost`` and our ``MV2DXrayBBox3DL1Cost`` resolve without a default
scope), and non-finite predictions are sanitised first -- scipy refuses a cost matrix
with NaN/inf, and one diverged query must not crash a training run.
"""
from typing import List, Optional, Union

import torch
from mmdet3d.registry import TASK_UTILS
from mmdet.models.task_modules import AssignResult, HungarianAssigner
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData


@TASK_UTILS.register_module()
class MV2DXrayHungarianAssigner3D(HungarianAssigner):
    """Hungarian assigner for 3D box codes.

    Args:
        match_costs (dict | list[dict]): Match cost configs, summed. Typically
            ``[dict(type='mmdet.FocalLossCost', weight=2.0),
            dict(type='MV2DXrayBBox3DL1Cost', weight=0.25)]``: the focal
            classification cost of a sigmoid head (lower for higher scores) plus the
            L1 distance of the (code-weighted) box codes.
    """

    def __init__(self, match_costs: Union[List[Union[dict, ConfigDict]], dict,
                                          ConfigDict]) -> None:
        if isinstance(match_costs, (dict, ConfigDict)):
            match_costs = [match_costs]
        if len(match_costs) == 0:
            raise ValueError('match_costs must not be empty')
        self.match_costs = [TASK_UTILS.build(cost) for cost in match_costs]

    def assign(self,
               pred_instances: InstanceData,
               gt_instances: InstanceData,
               img_meta: Optional[dict] = None,
               **kwargs) -> AssignResult:
        """Match predictions to GT.

        Args:
            pred_instances (InstanceData): ``scores`` ``(Q, num_classes)`` logits and
                ``bboxes`` ``(Q, D)`` codes.
            gt_instances (InstanceData): ``labels`` ``(M,)`` and ``bboxes``
                ``(M, D)`` codes.
            img_meta (dict, optional): Unused; kept for the mmdet interface.

        Returns:
            AssignResult: ``gt_inds`` (0 = background, i + 1 = GT i) and ``labels``.
        """
        clean = InstanceData()
        for key, value in pred_instances.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                value = torch.nan_to_num(value.detach(), nan=0.0, posinf=1e4,
                                         neginf=-1e4)
            clean[key] = value
        return super().assign(clean, gt_instances, img_meta=img_meta, **kwargs)

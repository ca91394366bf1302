"""The 2D stage: an mmdet two-stage detector whose losses and detections run on
features computed once and shared with the 3D head.

mmdet's ``TwoStageDetector.loss`` / ``predict`` call ``extract_feat`` themselves; MV2D
needs the same backbone/FPN features for the RoI-aligned 3D queries, so this subclass
splits both into ``*_by_feat`` methods that take the features. Everything else
(backbone, neck, RPN, RoI head, configs, checkpoints) is plain mmdet, so Faster R-CNN
and other two-stage detectors (Cascade R-CNN, ...) fit.
"""
from typing import Dict, Tuple

import torch
from mmdet3d.registry import MODELS
from mmdet.models.detectors import TwoStageDetector
from mmdet.structures import SampleList
from mmdet.utils import InstanceList
from mmengine.config import ConfigDict
from mmengine.registry import DefaultScope
from torch import Tensor


@MODELS.register_module()
class MV2DXrayTwoStage2D(TwoStageDetector):
    """mmdet two-stage detector with feature-sharing entry points.

    Configured exactly like ``mmdet.FasterRCNN`` (``backbone``, ``neck``,
    ``rpn_head``, ``roi_head``, ``train_cfg`` with ``rpn`` / ``rpn_proposal`` /
    ``rcnn``, ``test_cfg`` with ``rpn`` / ``rcnn``). The sub-modules are built in
    mmdet's registry scope, so an mmdet config can be pasted as it is: unprefixed
    types resolve, and so do mmdet's implicit defaults (e.g. ``MaxIoUAssigner``'s
    ``BboxOverlaps2D``), which mmdet3d's scope does not know.
    """

    def __init__(self, *args, **kwargs) -> None:
        with DefaultScope.overwrite_default_scope('mmdet'):
            super().__init__(*args, **kwargs)

    def loss_by_feat(self, x: Tuple[Tensor],
                     batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """RPN and R-CNN losses (mmdet's ``TwoStageDetector.loss`` after
        ``extract_feat``).

        Args:
            x (tuple[Tensor]): Multi-level features, each ``(N, C, H, W)`` with
                ``N`` = batch x views.
            batch_data_samples (list[DetDataSample]): One per image, with
                ``gt_instances`` (``bboxes``, ``labels``) and ``ignored_instances``.

        Returns:
            dict[str, Tensor]: ``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``,
            ``loss_bbox``, ``acc``.
        """
        losses = dict()
        proposal_cfg = self.train_cfg.get('rpn_proposal', self.test_cfg.rpn)
        rpn_data_samples = []
        for sample in batch_data_samples:
            # the RPN is class-agnostic: same boxes, labels 0 (copies, so the
            # R-CNN still sees the real labels)
            rpn_sample = sample.clone()
            rpn_sample.gt_instances = sample.gt_instances.clone()
            rpn_sample.gt_instances.labels = torch.zeros_like(
                sample.gt_instances.labels)
            rpn_data_samples.append(rpn_sample)
        rpn_losses, rpn_results_list = self.rpn_head.loss_and_predict(
            x, rpn_data_samples, proposal_cfg=proposal_cfg)
        for key in list(rpn_losses):
            if 'loss' in key and 'rpn' not in key:
                rpn_losses[f'rpn_{key}'] = rpn_losses.pop(key)
        losses.update(rpn_losses)
        losses.update(
            self.roi_head.loss(x, rpn_results_list, batch_data_samples))
        return losses

    def predict_by_feat(self, x: Tuple[Tensor], batch_data_samples: SampleList,
                        rcnn_test_cfg: dict) -> InstanceList:
        """Detections of every image, in input-image pixels (no rescaling).

        Args:
            x (tuple[Tensor]): Multi-level features.
            batch_data_samples (list[DetDataSample]): One per image (metainfo
                ``img_shape``, ``pad_shape``, ``batch_input_shape``,
                ``scale_factor``).
            rcnn_test_cfg (dict): ``score_thr``, ``nms``, ``max_per_img`` of the
                R-CNN stage (MV2D's ``detection_proposal``); extra keys are ignored.

        Returns:
            list[InstanceData]: per image ``bboxes`` ``(K, 4)``, ``scores``,
            ``labels``.
        """
        rpn_results_list = self.rpn_head.predict(
            x, batch_data_samples, rescale=False)
        batch_img_metas = [sample.metainfo for sample in batch_data_samples]
        return self.roi_head.predict_bbox(
            x, batch_img_metas, rpn_results_list,
            rcnn_test_cfg=ConfigDict(rcnn_test_cfg), rescale=False)

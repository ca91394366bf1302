"""The 2D stage: an mmdet two-stage detector whose losses and detections run on
features computed once and shared with the 3D head.

mmdet's ``TwoStageDetector.loss`` / ``predict`` call ``extract_feat`` themselves; MV2D
needs the same backbone/FPN features for the RoI-aligned 3D queries, so this subclass
splits both into ``*_by_feat`` methods that take the features. Everything else
(backbone, neck, RPN, RoI head, configs, checkpoints) is plain mmdet, so Faster R-CNN
and other two-stage detectors (Cascade R-CNN, ...) fit.

Mixed precision: under autocast (``--amp``: fp16/bf16 on CUDA, bf16 on the CPU) the
backbone, the FPN and the RPN's convolutions run in the autocast dtype; the rest of the
2D stage runs in fp32 with autocast disabled (:func:`fp32_region`, inputs cast with
``.float()``): the RPN's proposal decoding + NMS, and the R-CNN (RoI-align, its FCs,
its losses in training, decoding + NMS at test time). mmcv's CPU ops have float32
kernels only (``nms``: "expected scalar type Float but found BFloat16"; ``RoIAlign``:
"not implemented for 'BFloat16'"), and box coordinates of a 1024 px image lose whole
pixels in bf16 (8 bits of mantissa: steps of 4 px above 512 px). One code path on every
device: the R-CNN is small next to the backbone on N full views (its fp32 cost is the
sampled RoIs -- 512 per view -- through two FCs).
"""
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch
from mmdet3d.registry import MODELS
from mmdet.models.detectors import TwoStageDetector
from mmdet.models.utils import unpack_gt_instances
from mmdet.structures import SampleList
from mmdet.utils import InstanceList
from mmengine.config import ConfigDict
from mmengine.registry import DefaultScope
from torch import Tensor


@contextmanager
def fp32_region(device: torch.device):
    """Disable autocast on ``device``'s type (a no-op without autocast); callers cast
    their inputs with ``.float()``."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _float(tensors):
    """Nested lists/tuples of tensors with every floating tensor as float32."""
    if isinstance(tensors, Tensor):
        return tensors.float() if tensors.is_floating_point() else tensors
    if isinstance(tensors, (list, tuple)):
        return type(tensors)(_float(t) for t in tensors)
    return tensors


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
        # mmdet's ``rpn_head.loss_and_predict``, with the proposals made in fp32
        gt_instances, gt_ignore, img_metas = unpack_gt_instances(rpn_data_samples)
        outs = self.rpn_head(x)
        rpn_losses = self.rpn_head.loss_by_feat(*outs, gt_instances, img_metas, gt_ignore)
        with fp32_region(x[0].device):
            rpn_results_list = self.rpn_head.predict_by_feat(
                *_float(outs), batch_img_metas=img_metas, cfg=proposal_cfg)
        for key in list(rpn_losses):
            if 'loss' in key and 'rpn' not in key:
                rpn_losses[f'rpn_{key}'] = rpn_losses.pop(key)
        losses.update(rpn_losses)
        with fp32_region(x[0].device):   # RoI-align in fp32 (module docstring)
            losses.update(
                self.roi_head.loss(_float(tuple(x)), rpn_results_list, batch_data_samples))
        return losses

    def predict_by_feat(self, x: Tuple[Tensor], batch_data_samples: SampleList,
                        rcnn_test_cfg: dict,
                        rpn_outs: Optional[Tuple[List[Tensor], List[Tensor]]] = None
                        ) -> InstanceList:
        """Detections of every image, in input-image pixels (no rescaling).

        Args:
            x (tuple[Tensor]): Multi-level features.
            batch_data_samples (list[DetDataSample]): One per image (metainfo
                ``img_shape``, ``pad_shape``, ``batch_input_shape``,
                ``scale_factor``).
            rcnn_test_cfg (dict): ``score_thr``, ``nms``, ``max_per_img`` of the
                R-CNN stage (MV2D's ``detection_proposal``); extra keys are ignored.
            rpn_outs (tuple, optional): ``self.rpn_head(x)`` (per level class scores
                ``(N, A, h, w)`` and box deltas) when the caller computed it already;
                computed here otherwise.

        Returns:
            list[InstanceData]: per image ``bboxes`` ``(K, 4)``, ``scores``,
            ``labels``.
        """
        return self.detect_from_proposals(
            x, batch_data_samples, self.propose_by_feat(x, batch_data_samples, rpn_outs),
            rcnn_test_cfg)

    def propose_by_feat(self, x: Tuple[Tensor], batch_data_samples: SampleList,
                        rpn_outs: Optional[Tuple[List[Tensor], List[Tensor]]] = None
                        ) -> InstanceList:
        """The RPN's test-time proposals of every image (``test_cfg.rpn``: its
        ``nms_pre``, NMS and ``max_per_img``), in input-image pixels, ranked by
        decreasing objectness; ``rpn_outs`` as in :meth:`predict_by_feat`.

        Returns:
            list[InstanceData]: per image ``bboxes`` ``(K, 4)`` and ``scores`` ``(K,)``.
        """
        batch_img_metas = [sample.metainfo for sample in batch_data_samples]
        outs = self.rpn_head(x) if rpn_outs is None else rpn_outs
        with fp32_region(x[0].device):   # decoding and NMS in fp32 (module docstring)
            return self.rpn_head.predict_by_feat(
                *_float(outs), batch_img_metas=batch_img_metas, rescale=False)

    def detect_from_proposals(self, x: Tuple[Tensor], batch_data_samples: SampleList,
                              proposals: InstanceList, rcnn_test_cfg: dict
                              ) -> InstanceList:
        """The R-CNN's detections of every image from :meth:`propose_by_feat`'s
        ``proposals`` (not changed); arguments and result as in :meth:`predict_by_feat`."""
        batch_img_metas = [sample.metainfo for sample in batch_data_samples]
        with fp32_region(x[0].device):   # RoI-align and NMS in fp32 (module docstring)
            return self.roi_head.predict_bbox(
                _float(tuple(x)), batch_img_metas, proposals,
                rcnn_test_cfg=ConfigDict(rcnn_test_cfg), rescale=False)

"""MV2D ("Object as Query", ICCV 2023) for multi-view X-ray: the detector.

Data flow for a batch of ``B`` scenes with ``V`` views each:

1. ``imgs (B, V, 3, H, W)`` -> ``(B * V, 3, H, W)`` -> backbone + FPN of the 2D detector
   (optionally GridMask in training);
2. 2D stage (:class:`MV2DXrayTwoStage2D`, Faster R-CNN by default): its RPN and R-CNN
   losses on the per-view GT boxes, then (without gradients) per-view detections with
   ``detection_proposal`` settings; in training, GT boxes the detector missed are added
   (``complement_2d_gt``) so every finding yields queries;
3. 3D stage (:class:`MV2DXrayRoIHead`): one query per detection, sparse multi-view
   attention, 3D boxes in ``ct`` mm.

Losses (the paper's ``L = L_2D + 0.1 L_3D``):

* ``det_loss_rpn_cls`` + ``det_loss_rpn_bbox`` + ``det_loss_cls`` + ``det_loss_bbox``:
  the 2D detector's own losses at their mmdet weights (1 each): ``L_2D``;
* ``l{i}.loss_cls`` and ``l{i}.loss_bbox`` for every decoder layer ``i`` (6), each with
  its own Hungarian matching: ``stage_loss_weights[i] * (w_cls * focal + w_reg * L1)``
  with ``loss_cls`` = sigmoid focal loss (alpha 0.25, gamma 2) and ``loss_bbox`` = L1 on
  code-weighted box codes. The configs in ``configs/mv2d_xray`` use the paper's weights:
  ``stage_loss_weights = [0.1] * 6``, ``w_cls = 0.25``, ``w_reg = 1.0``, with matching
  costs that mirror them (``FocalLossCost`` 0.25, ``MV2DXrayBBox3DL1Cost`` 1.0); the
  head's defaults are those of MV2D's configs (``w_cls = 2.0``, ``w_reg = 0.25``).

Inference: the 2D detections may pool the views' passes as they are and flipped
(``test_cfg.detection_proposal.flip_directions``, :meth:`detect_2d_flipped`, then one
NMS: :meth:`merge_detections`); the last layer's queries are decoded NMS-free, then
``test_cfg.rcnn`` optionally holds the centres near the queries' priors
(``refine_radius_mm``), re-triangulates them from the supporting 2D detections of their
class (``refine_to_detections``), moves a box no second view's detection confirms along
its ray to where the RPN's objectness of every view peaks (``objectness_support.
search_depths``), rescores by the views' 2D support (``view_support``: by their
detections) and by the RPN's objectness in every view (``objectness_support``,
:meth:`objectness_maps`), keeps the scores above ``score_thr``, suppresses the
duplicates of a finding coming from different views by centre distance (``nms``, see
:func:`centre_distance_nms`) and keeps the best ``max_per_scene``.

Explanations: ``predict(..., explain=True)`` (or ``model(**data, mode='predict',
explain=True)``) returns the same predictions and attaches to every sample
``explanations``, one dict per box of ``pred_instances_3d`` (same order): the 2D
detection the box's query was lifted from, the relevant detections of the other views it
attended to, and the decoder's cross-attention over them and over the views (the format
is documented in :mod:`projects.mv2d_xray.mv2d_xray.models.explanation`).
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmcv.ops import batched_nms
from mmdet3d.models.detectors import Base3DDetector
from mmdet3d.registry import MODELS
from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox2roi, bbox_flip, bbox_overlaps
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor

from projects.mv2d_xray.mv2d_xray.models.config_keys import (CENTRE_NMS_KEYS,
                                                             DETECTION_PROPOSAL_KEYS,
                                                             FLIP_DIRECTIONS,
                                                             MV2D_TEST_CFG_KEYS,
                                                             MV2D_TRAIN_CFG_KEYS,
                                                             OBJECTNESS_SUPPORT_KEYS,
                                                             RCNN_TEST_CFG_KEYS,
                                                             RCNN_TRAIN_CFG_KEYS,
                                                             REFINE_TO_DETECTIONS_KEYS,
                                                             TEST_DETECTION_PROPOSAL_KEYS,
                                                             VIEW_SUPPORT_KEYS,
                                                             XrayConfigError, check_keys)
from projects.mv2d_xray.mv2d_xray.models.grid_mask import XrayGridMask
from projects.mv2d_xray.mv2d_xray.models.post_processing import ObjectnessMaps
from projects.mv2d_xray.mv2d_xray.models.stored_detections import StoredDetections


@MODELS.register_module()
class MV2DXray(Base3DDetector):
    """MV2D on X-ray views.

    Args:
        base_detector (dict): The 2D detector, e.g. ``dict(type='MV2DXrayTwoStage2D',
            backbone=dict(type='mmdet.ResNet', ...), neck=dict(type='mmdet.FPN', ...),
            rpn_head=..., roi_head=..., train_cfg=..., test_cfg=...)``.
        roi_head (dict, optional): :class:`MV2DXrayRoIHead` config. None switches the
            3D stage off: the model trains and predicts the 2D detector alone
            (``pred_instances_3d`` empty), with the same parameter names, so its
            checkpoint initialises a full model through ``load_from`` (the 2D-stage
            pre-training configs).
        neck (dict, optional): Extra neck applied to the detector's features before
            the 3D head (MV2D re-projects one FPN level). Defaults to None: the
            detector's FPN levels are used directly.
        use_grid_mask (dict, optional): :class:`XrayGridMask` arguments; None (the
            default) disables it.
        freeze_base_detector (bool): Keep the 2D detector as loaded (from a 2D-stage
            checkpoint): no gradients, BN in eval mode, no 2D losses; only the 3D
            stage trains. The paper trains both jointly (False, the default); on a
            small dataset the 3D classifier learns on fixed features and fails to
            while they drift (measured on the demo: jointly trained, the 3D scores
            stayed flat at 0.22 and the val CPM was 0.18; frozen, 0.32 with the top
            prediction on LIDC-IDRI-0001's nodule), and each step is about 2x
            cheaper.
        train_cfg (dict): ``detection_proposal`` (R-CNN test settings for the
            detections that become queries: ``score_thr``, ``nms``, ``max_per_img``,
            plus ``min_bbox_size`` in px), ``complement_2d_gt`` (IoU below which a
            GT box is added as a detection; <= 0 disables) and ``rcnn`` (the 3D
            head's ``assigner`` and ``stage_loss_weights``), and ``detections_file``
            (a path or a list of paths, optional): the training queries come from these
            2D detections (:class:`StoredDetections`, ``dets2d.json`` of 2D stages that
            did not train on the cases: cross-fitting) rather than from the 2D stage's
            own; its features are used as before.
        test_cfg (dict): ``detection_proposal`` (as above, plus ``flip_directions``:
            mmdet's ``'horizontal'`` / ``'vertical'`` / ``'diagonal'``, each an extra
            pass of the 2D stage over the flipped views, pooled with the plain pass by
            the same NMS and ``max_per_img``; none by default; :meth:`predict` only, the
            tensor mode's raw outputs come from the plain pass) and ``rcnn``
            (``refine_radius_mm``, ``refine_to_detections``, ``view_support``,
            ``score_thr``, ``nms``, ``max_per_scene``: see :class:`MV2DXrayRoIHead`).
        data_preprocessor (dict, optional): Typically ``Det3DDataPreprocessor``.
        init_cfg (dict, optional): Defaults to None.
    """

    def __init__(self,
                 base_detector: dict,
                 roi_head: Optional[dict],
                 neck: Optional[dict] = None,
                 use_grid_mask: Optional[dict] = None,
                 freeze_base_detector: bool = False,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg=None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        # mmdet reads its configs by attribute (``train_cfg.rpn``): ConfigDict
        self.base_detector = MODELS.build(ConfigDict(base_detector))
        self.neck = MODELS.build(neck) if neck is not None else None
        self.train_cfg = train_cfg if train_cfg is not None else dict()
        self.test_cfg = test_cfg if test_cfg is not None else dict()
        self._check_cfg_keys()
        self.roi_head = None
        if roi_head is not None:
            roi_head = copy.deepcopy(dict(roi_head))
            roi_head.update(train_cfg=self.train_cfg.get('rcnn'),
                            test_cfg=self.test_cfg.get('rcnn'))
            self.roi_head = MODELS.build(roi_head)
        self.check_objectness_levels()
        self.grid_mask = (XrayGridMask(**use_grid_mask)
                          if use_grid_mask is not None else None)
        self.freeze_base_detector = freeze_base_detector
        self._stored_detections: Optional[StoredDetections] = None
        if freeze_base_detector:
            if self.roi_head is None:
                raise ValueError('freeze_base_detector needs a 3D stage (roi_head)')
            self.base_detector.requires_grad_(False)

    def _check_cfg_keys(self) -> None:
        """A key of ``train_cfg`` / ``test_cfg`` (and of their ``detection_proposal``
        and ``rcnn``) that this model does not read is an :class:`XrayConfigError`."""
        check_keys(self.train_cfg, MV2D_TRAIN_CFG_KEYS, 'model.train_cfg')
        check_keys(self.test_cfg, MV2D_TEST_CFG_KEYS, 'model.test_cfg')
        check_keys(self.train_cfg.get('detection_proposal'), DETECTION_PROPOSAL_KEYS,
                   'model.train_cfg.detection_proposal')
        proposal_test = self.test_cfg.get('detection_proposal')
        check_keys(proposal_test, TEST_DETECTION_PROPOSAL_KEYS,
                   'model.test_cfg.detection_proposal')
        self._check_flip_directions((proposal_test or dict()).get('flip_directions'))
        check_keys(self.train_cfg.get('rcnn'), RCNN_TRAIN_CFG_KEYS, 'model.train_cfg.rcnn')
        check_keys(self.test_cfg.get('rcnn'), RCNN_TEST_CFG_KEYS, 'model.test_cfg.rcnn')
        rcnn_test = self.test_cfg.get('rcnn') or dict()
        check_keys(rcnn_test.get('view_support'), VIEW_SUPPORT_KEYS,
                   'model.test_cfg.rcnn.view_support')
        check_keys(rcnn_test.get('objectness_support'), OBJECTNESS_SUPPORT_KEYS,
                   'model.test_cfg.rcnn.objectness_support')
        check_keys(rcnn_test.get('refine_to_detections'), REFINE_TO_DETECTIONS_KEYS,
                   'model.test_cfg.rcnn.refine_to_detections')
        nms = rcnn_test.get('nms')
        if isinstance(nms, dict) and nms.get('type', 'centre_distance') == 'centre_distance':
            check_keys(nms, CENTRE_NMS_KEYS, 'model.test_cfg.rcnn.nms')

    @staticmethod
    def _check_flip_directions(flips) -> None:
        """``test_cfg.detection_proposal.flip_directions``: None / empty (off) or a list of
        distinct :data:`FLIP_DIRECTIONS`; anything else is an :class:`XrayConfigError`."""
        where = 'model.test_cfg.detection_proposal.flip_directions'
        if not flips:
            return
        if isinstance(flips, str):
            raise XrayConfigError(f'{where} is a list of directions, e.g. [{flips!r}], '
                                  f'not the string {flips!r}')
        for direction in flips:
            if direction not in FLIP_DIRECTIONS:
                raise XrayConfigError(f'{where}: {direction!r} is not a flip direction '
                                      f'({", ".join(FLIP_DIRECTIONS)})')
        if len(set(flips)) < len(flips):
            raise XrayConfigError(f'{where} names a direction twice: {list(flips)}')

    def train(self, mode: bool = True) -> 'MV2DXray':
        """Set the mode; a frozen 2D detector stays in eval mode (BN statistics)."""
        super().train(mode)
        if self.freeze_base_detector:
            self.base_detector.eval()
        return self

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def view_samples(batch_data_samples: List[Det3DDataSample],
                     num_views: int, with_gt: bool) -> List[DetDataSample]:
        """One mmdet sample per view (scene-major), with that view's 2D GT when
        ``with_gt``: what the 2D stage's heads take (``(B * num_views)`` samples)."""
        view_samples = []
        for sample in batch_data_samples:
            meta = sample.metainfo
            img_shape = tuple(meta['img_shape'])                     # (H, W)
            pad_shape = tuple(meta.get('pad_shape', img_shape))
            view_meta = dict(
                img_shape=img_shape, pad_shape=pad_shape,
                batch_input_shape=tuple(meta.get('batch_input_shape', pad_shape)),
                scale_factor=(1.0, 1.0))
            gts = sample.get('gt_instances', None) if with_gt else None
            ignored = sample.get('ignored_instances', None) if with_gt else None
            for view in range(num_views):
                view_sample = DetDataSample(metainfo=view_meta)
                if with_gt:
                    view_sample.gt_instances = MV2DXray._select_view(gts, view)
                    view_sample.ignored_instances = MV2DXray._select_view(
                        ignored, view)
                view_samples.append(view_sample)
        return view_samples

    @staticmethod
    def _select_view(instances: Optional[InstanceData],
                     view: int) -> InstanceData:
        """``bboxes`` / ``labels`` of one view from flattened all-view instances."""
        if instances is None or len(instances) == 0 or \
                'view_ids' not in instances:
            return InstanceData(bboxes=torch.zeros((0, 4)),
                                labels=torch.zeros((0, ), dtype=torch.long))
        keep = instances.view_ids == view
        return InstanceData(bboxes=instances.bboxes[keep].float(),
                            labels=instances.labels[keep].long())

    def extract_feat(self, imgs: Tensor) -> Tuple[Tensor]:
        """``(B, V, 3, H, W)`` -> the 2D detector's multi-level features, each
        ``(B * V, C, h, w)``; GridMask in training if configured."""
        imgs = imgs.flatten(0, 1)
        if self.grid_mask is not None and self.training:
            imgs = self.grid_mask(imgs)
        return self.base_detector.extract_feat(imgs)

    def _feats_3d(self, feats: Tuple[Tensor]) -> Tuple[Tensor]:
        return tuple(self.neck(feats)) if self.neck is not None else feats

    @torch.no_grad()
    def detect_2d(self, feats: Tuple[Tensor], view_samples: List[DetDataSample],
                  cfg: dict,
                  rpn_outs: Optional[Tuple[List[Tensor], List[Tensor]]] = None
                  ) -> List[InstanceData]:
        """Per-view detections (``bboxes``, ``scores``, ``labels``) with a
        ``detection_proposal`` config; boxes thinner than ``min_bbox_size`` px are
        dropped. ``rpn_outs``: the RPN's outputs on ``feats`` if already computed."""
        dets = self.base_detector.predict_by_feat(feats, view_samples, cfg,
                                                  rpn_outs=rpn_outs)
        min_size = cfg.get('min_bbox_size', 0)
        if min_size > 0:
            for i, det in enumerate(dets):
                size = det.bboxes[:, 2:4] - det.bboxes[:, 0:2]
                dets[i] = det[(size >= min_size).all(dim=1)]
        return dets

    @torch.no_grad()
    def detect_2d_flipped(self, imgs: Tensor, view_samples: List[DetDataSample], cfg: dict,
                          direction: str) -> List[InstanceData]:
        """Per-view detections of the views flipped in ``direction`` (a test-time
        augmentation, ``detection_proposal.flip_directions``), as :meth:`detect_2d`'s.

        Args:
            imgs (Tensor): ``(B, V, 3, H, W)`` network input; each view is flipped within
                its own ``img_shape`` (the padding right and below stays where it is), so
                the flipped view keeps the frame of the unflipped one.
            view_samples (list[DetDataSample]): :meth:`view_samples` (one per view).
            cfg (dict): a ``detection_proposal`` config.
            direction (str): ``'horizontal'`` (x), ``'vertical'`` (y) or ``'diagonal'``
                (both; mmdet's ``bbox_flip`` names).

        Returns:
            list[InstanceData]: per view ``bboxes`` ``(K, 4)`` mapped back into the
            unflipped view's img px, ``scores``, ``labels``.
        """
        dims = dict(horizontal=(-1, ), vertical=(-2, ), diagonal=(-2, -1))[direction]
        views = imgs.flatten(0, 1)                                    # (B * V, 3, H, W)
        flipped = views.clone()
        for view, sample in enumerate(view_samples):
            height, width = sample.metainfo['img_shape']
            flipped[view, :, :height, :width] = views[view, :, :height, :width].flip(dims)
        dets = self.detect_2d(self.extract_feat(flipped.unflatten(0, imgs.shape[:2])),
                              view_samples, cfg)
        for det, sample in zip(dets, view_samples):
            det.bboxes = bbox_flip(det.bboxes, sample.metainfo['img_shape'], direction)
        return dets

    @staticmethod
    def merge_detections(passes: Sequence[List[InstanceData]], cfg: dict
                         ) -> List[InstanceData]:
        """Per view, the detections of several passes (the views as they are and
        flipped) pooled and cut down as one pass's are: ``cfg['nms']`` (mmcv's
        ``batched_nms``, per class unless the config says ``class_agnostic``; with the
        scores it returns, a soft NMS's decayed ones), then the ``max_per_img`` best (all
        when it is not positive, as mmdet's ``multiclass_nms``).

        Args:
            passes (Sequence[list[InstanceData]]): per pass, per view ``bboxes``
                ``(K, 4)`` img px, ``scores`` ``(K,)``, ``labels`` ``(K,)``.
            cfg (dict): a ``detection_proposal`` config.

        Returns:
            list[InstanceData]: per view, ranked by decreasing score.
        """
        merged = []
        for views in zip(*passes):
            dets = InstanceData.cat(list(views))
            if len(dets):
                kept, keep = batched_nms(dets.bboxes, dets.scores, dets.labels, cfg['nms'])
                dets = dets[keep]
                dets.scores = kept[:, -1]
                if cfg['max_per_img'] > 0:
                    dets = dets[:cfg['max_per_img']]
            merged.append(dets)
        return merged

    def objectness_maps(self, rpn_cls_scores: Sequence[Tensor],
                        level: int) -> ObjectnessMaps:
        """The RPN's objectness on one FPN level, for the 3D stage's
        ``objectness_support.levels`` (read in every view).

        Args:
            rpn_cls_scores (Sequence[Tensor]): the RPN's class scores per FPN level,
                each ``(B * V, A, h, w)`` (the first output of
                ``base_detector.rpn_head(feats)``, the pass the 2D detections use).
            level (int): which level (0: the finest, stride 4 in the configs); checked
                at build time (:meth:`check_objectness_levels`).

        Returns:
            ObjectnessMaps: ``maps`` ``(B * V, h, w)`` in [0, 1], per feature cell the
            best of its anchors' sigmoid scores, with the cells' stride and origin and
            the anchors' side (geometric mean over the level's anchors) in img px, from
            the RPN's anchor generator.
        """
        priors = self.base_detector.rpn_head.prior_generator
        base = priors.base_anchors[level]                           # (A, 4), one cell
        origin = ((base[:, 0] + base[:, 2]) / 2).mean(), ((base[:, 1] + base[:, 3]) / 2).mean()
        sides = ((base[:, 2] - base[:, 0]) * (base[:, 3] - base[:, 1])).sqrt()
        return ObjectnessMaps(maps=rpn_cls_scores[level].float().sigmoid().amax(dim=1),
                              stride_px=tuple(float(s) for s in priors.strides[level]),
                              origin_px=tuple(float(o) for o in origin),
                              anchor_px=float(sides.log().mean().exp()))

    def check_objectness_levels(self) -> None:
        """At build time: the levels ``test_cfg.rcnn.objectness_support.levels`` reads are
        levels of the RPN, and the RPN scores with a sigmoid (one objectness per
        anchor)."""
        levels = self.roi_head.objectness_levels if self.roi_head is not None else ()
        if not levels:
            return
        rpn_head = getattr(self.base_detector, 'rpn_head', None)
        if rpn_head is None or not getattr(rpn_head, 'use_sigmoid_cls', False):
            raise ValueError('test_cfg.rcnn.objectness_support reads a sigmoid RPN\'s '
                             'objectness; this 2D stage has none')
        num_levels = rpn_head.prior_generator.num_levels
        for level in levels:
            if level >= num_levels:
                raise ValueError(f'test_cfg.rcnn.objectness_support: level {level}: the 2D '
                                 f'stage\'s RPN has {num_levels} levels (0 .. {num_levels - 1})')

    def stored_detections(self) -> StoredDetections:
        """The detections of ``train_cfg.detections_file``, read on first use (a test
        run, which never reads them, does not need the files)."""
        if self._stored_detections is None:
            self._stored_detections = StoredDetections(self.train_cfg['detections_file'])
        return self._stored_detections

    @staticmethod
    def complement_2d_gt(dets: List[InstanceData],
                         view_samples: List[DetDataSample], iou_thr: float,
                         min_size: float = 0.0) -> List[InstanceData]:
        """Add (with score 1) the GT boxes of each view whose best IoU with the
        detections is below ``iou_thr``, so every finding gets queries."""
        out = []
        for det, sample in zip(dets, view_samples):
            gt = sample.gt_instances
            gt_boxes = gt.bboxes.to(det.bboxes)
            size = gt_boxes[:, 2:4] - gt_boxes[:, 0:2]
            missed = (size >= min_size).all(dim=1)
            if len(det) and len(gt_boxes):
                missed &= bbox_overlaps(gt_boxes, det.bboxes).amax(dim=1) < iou_thr
            extra = InstanceData(
                bboxes=gt_boxes[missed],
                scores=gt_boxes.new_ones(int(missed.sum())),
                labels=gt.labels[missed].to(det.labels.device))
            out.append(InstanceData.cat([det, extra]) if len(extra) else det)
        return out

    @staticmethod
    def _rois(dets: List[InstanceData]) -> Tuple[Tensor, Tensor, Tensor]:
        """``(R, 5)`` RoIs ``[image index, x1, y1, x2, y2]``, ``(R,)`` 2D scores and
        ``(R,)`` 2D labels of the per-image detections."""
        return (bbox2roi([det.bboxes for det in dets]),
                torch.cat([det.scores for det in dets]),
                torch.cat([det.labels for det in dets]))

    @staticmethod
    def _ensure_queries(dets: List[InstanceData], num_views: int,
                        img_shape: Tuple[int, int]) -> List[InstanceData]:
        """Give every scene at least one detection (a box at the centre of its first
        view): a scene without queries would drop out of the 3D losses."""
        height, width = img_shape
        for start in range(0, len(dets), num_views):
            if sum(len(d) for d in dets[start:start + num_views]):
                continue
            det = dets[start]
            half = max(min(height, width) / 16.0, 1.0)
            box = det.bboxes.new_tensor([[width / 2 - half, height / 2 - half,
                                          width / 2 + half, height / 2 + half]])
            dets[start] = InstanceData(bboxes=box, scores=box.new_zeros(1),
                                       labels=det.labels.new_zeros(1))
        return dets

    # -- modes ---------------------------------------------------------------------------
    def loss(self, batch_inputs_dict: dict,
             batch_data_samples: List[Det3DDataSample]) -> Dict[str, Tensor]:
        """2D and 3D losses.

        Args:
            batch_inputs_dict (dict): ``imgs`` ``(B, V, 3, H, W)``.
            batch_data_samples (list[Det3DDataSample]): metainfo ``lidar2img``,
                ``cam2img`` ``(V, 4, 4)``, ``img_shape``...; ``gt_instances_3d``
                (``bboxes_3d``, ``labels_3d``); ``gt_instances`` (``bboxes``,
                ``labels``, ``view_ids``) and ``ignored_instances`` of all views.

        Returns:
            dict[str, Tensor]: ``det_*`` (2D) and ``l{i}.loss_*`` (3D) terms.
        """
        imgs = batch_inputs_dict['imgs']
        num_views = imgs.shape[1]
        metas = [sample.metainfo for sample in batch_data_samples]
        view_samples = self.view_samples(batch_data_samples, num_views, True)
        for view_sample in view_samples:
            view_sample.gt_instances = view_sample.gt_instances.to(imgs.device)
            view_sample.ignored_instances = \
                view_sample.ignored_instances.to(imgs.device)
        if self.freeze_base_detector:
            with torch.no_grad():
                feats = self.extract_feat(imgs)
            losses = dict()
        else:
            feats = self.extract_feat(imgs)
            losses = {
                f'det_{key}': value for key, value in
                self.base_detector.loss_by_feat(feats, view_samples).items()
            }
        if self.roi_head is None:  # 2D stage only
            return losses
        cfg = self.train_cfg['detection_proposal']
        if self.train_cfg.get('detections_file'):     # cross-fitted detections
            dets = [det for meta in metas
                    for det in self.stored_detections().for_case(meta, imgs.device)]
        else:
            dets = self.detect_2d(feats, view_samples, cfg)
        if self.train_cfg.get('complement_2d_gt', -1) > 0:
            dets = self.complement_2d_gt(dets, view_samples,
                                         self.train_cfg['complement_2d_gt'],
                                         cfg.get('min_bbox_size', 0))
        dets = self._ensure_queries(dets, num_views, metas[0]['img_shape'])
        rois, roi_scores, _ = self._rois(dets)
        losses.update(
            self.roi_head.loss(self._feats_3d(feats), rois, metas,
                               [s.gt_instances_3d for s in batch_data_samples],
                               num_views, roi_scores))
        return losses

    def predict(self, batch_inputs_dict: dict,
                batch_data_samples: List[Det3DDataSample],
                explain: bool = False,
                **kwargs) -> List[Det3DDataSample]:
        """3D detections and the 2D detections they came from.

        Args:
            batch_inputs_dict (dict): ``imgs`` ``(B, V, 3, H, W)``.
            batch_data_samples (list[Det3DDataSample]): metainfo ``lidar2img``,
                ``cam2img`` ``(V, 4, 4)``, ``img_shape``...
            explain (bool): Also attach ``explanations`` to every sample (eval mode
                only; the predictions do not change). Defaults to False.

        Returns:
            list[Det3DDataSample]: each with ``pred_instances_3d``
            (``bboxes_3d`` gravity-centred LiDAR-type boxes in ct mm, ``scores_3d``,
            ``labels_3d``) and ``pred_instances`` (``bboxes`` ``(K, 4)``, ``scores``,
            ``labels``, ``view_ids`` of all views); with ``explain``, also
            ``explanations``: a list with one dict per box of ``pred_instances_3d``
            (:func:`~projects.mv2d_xray.mv2d_xray.models.explanation.explain_query`:
            ``source_view`` / ``source_bbox`` / ``source_score``, ``attended_views``
            ``(A,)``, ``attended_bboxes`` ``(A, 4)`` (img px of the network input),
            ``attended_scores`` (NaN for view probes), ``attention`` /
            ``attention_mean`` ``(A,)``,
            ``attention_layers`` ``(L, A)``, ``attention_cells`` ``(A, S_h, S_w)``,
            ``view_attention`` ``(V,)``); empty without the 3D stage.
        """
        imgs = batch_inputs_dict['imgs']
        num_views = imgs.shape[1]
        metas = [sample.metainfo for sample in batch_data_samples]
        view_samples = self.view_samples(batch_data_samples, num_views, False)
        feats = self.extract_feat(imgs)
        levels = self.roi_head.objectness_levels if self.roi_head is not None else ()
        # one RPN pass for the detections and, when the 3D stage's rescoring reads it, the
        # objectness; without gradients, as detect_2d's own pass
        rpn_outs = None
        if levels:
            with torch.no_grad():
                rpn_outs = self.base_detector.rpn_head(feats)
        proposal_cfg = self.test_cfg['detection_proposal']
        dets = self.detect_2d(feats, view_samples, proposal_cfg, rpn_outs=rpn_outs)
        flips = proposal_cfg.get('flip_directions') or ()
        if flips:
            dets = self.merge_detections(
                [dets] + [self.detect_2d_flipped(imgs, view_samples, proposal_cfg, direction)
                          for direction in flips], proposal_cfg)
        explanations = [[] for _ in batch_data_samples]
        if self.roi_head is None:  # 2D stage only: no 3D boxes
            results_3d = [
                InstanceData(bboxes_3d=LiDARInstance3DBoxes(
                    imgs.new_zeros((0, 7)), box_dim=7, with_yaw=False),
                             scores_3d=imgs.new_zeros((0, )),
                             labels_3d=imgs.new_zeros((0, ), dtype=torch.long))
                for _ in batch_data_samples
            ]
        else:
            rois, roi_scores, roi_labels = self._rois(dets)
            objectness = {level: self.objectness_maps(rpn_outs[0], level)
                          for level in levels}
            results_3d = self.roi_head.predict(self._feats_3d(feats), rois,
                                               metas, num_views, roi_scores,
                                               explain=explain, roi_labels=roi_labels,
                                               objectness=objectness)
            if explain:
                results_3d, explanations = results_3d
        results_2d = []
        for start in range(0, len(dets), num_views):
            views = dets[start:start + num_views]
            scene = InstanceData.cat([
                InstanceData(bboxes=d.bboxes, scores=d.scores, labels=d.labels,
                             view_ids=d.labels.new_full((len(d), ), view))
                for view, d in enumerate(views)
            ])
            results_2d.append(scene)
        samples = self.add_pred_to_datasample(batch_data_samples, results_3d,
                                              results_2d)
        if explain:
            for sample, scene_explanations in zip(samples, explanations):
                sample.explanations = scene_explanations
        return samples

    def _forward(self, batch_inputs_dict: dict,
                 batch_data_samples: Optional[List[Det3DDataSample]] = None,
                 **kwargs) -> Tuple[Tensor, Tensor]:
        """Raw head outputs ``(all_cls_scores, all_codes)`` (tensor mode); without
        the 3D stage, the 2D detector's features."""
        imgs = batch_inputs_dict['imgs']
        num_views = imgs.shape[1]
        metas = [sample.metainfo for sample in batch_data_samples]
        view_samples = self.view_samples(batch_data_samples, num_views, False)
        feats = self.extract_feat(imgs)
        if self.roi_head is None:
            return feats
        dets = self.detect_2d(feats, view_samples,
                              self.test_cfg['detection_proposal'])
        dets = self._ensure_queries(dets, num_views, metas[0]['img_shape'])
        rois, roi_scores, _ = self._rois(dets)
        out = self.roi_head(self._feats_3d(feats), rois, metas, num_views,
                            roi_scores)
        return out['all_cls_scores'], out['all_codes']

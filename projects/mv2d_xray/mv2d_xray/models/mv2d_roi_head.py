"""MV2D's 3D RoI head (MV2DS, the sparse variant): 2D detections -> 3D boxes.

For the detections of all views of a batch of scenes:

1. RoI-align their features (an mmdet ``SingleRoIExtractor``; with the detector's FPN
   levels, small findings are read at stride 4);
2. generate one 3D reference point per detection (:class:`MV2DXrayQueryGenerator`);
3. encode the 3D position of every RoI cell (:class:`MV2DXrayPositionalEncoding`);
4. select each detection's relevant detections in the other views
   (:class:`MV2DXrayBoxCorrelation`);
5. decode: queries self-attend within their scene and cross-attend to the RoI tokens of
   their relevant detections (:class:`MV2DXrayCrossAttentionHead`).

All of it runs in fp32 with autocast disabled on the features' device (MV2D's
``force_fp32``): depths of hundreds of mm and inverse projection matrices do not
survive fp16. Scenes are independent and may hold any number of views and detections.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet3d.registry import MODELS, TASK_UTILS
from mmdet3d.structures import LiDARInstance3DBoxes, get_box_type
from .post_processing import center_distance_nms


def roi_cell_centres(bboxes: Tensor, roi_size: Tuple[int, int]) -> Tensor:
    """Image coordinates of the RoI-align bin centres (``aligned=True``).

    Args:
        bboxes (Tensor): ``(R, 4)`` boxes in px.
        roi_size (tuple[int, int]): ``(S_h, S_w)``.

    Returns:
        Tensor: ``(R, S_h * S_w, 2)`` ``(u, v)``, row-major like the flattened RoI.
    """
    size_h, size_w = roi_size
    frac_w = (torch.arange(size_w, device=bboxes.device) + 0.5) / size_w
    frac_h = (torch.arange(size_h, device=bboxes.device) + 0.5) / size_h
    x1, y1, x2, y2 = bboxes.float().unbind(-1)
    u = x1[:, None] + (x2 - x1)[:, None] * frac_w[None]         # (R, S_w)
    v = y1[:, None] + (y2 - y1)[:, None] * frac_h[None]         # (R, S_h)
    return torch.stack(torch.broadcast_tensors(u[:, None, :], v[:, :, None]),
                       dim=-1).flatten(1, 2)


def _as_hw(shape) -> Tuple[int, int]:
    """``(H, W)`` from an ``img_shape`` meta (a pair, or one pair per view)."""
    if isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return int(shape[0]), int(shape[1])


@MODELS.register_module()
class MV2DXrayRoIHead(BaseModule):
    """The 3D part of MV2D.

    Args:
        bbox_roi_extractor (dict): e.g. ``dict(type='mmdet.SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=256, featmap_strides=[4, 8, 16, 32])``.
        query_generator (dict): :class:`MV2DXrayQueryGenerator` config.
        positional_encoding (dict): :class:`MV2DXrayPositionalEncoding` config.
        box_correlation (dict): :class:`MV2DXrayBoxCorrelation` config.
        bbox_head (dict): :class:`MV2DXrayCrossAttentionHead` config.
        force_fp32 (bool): Run with autocast disabled. Defaults to True.
        train_cfg (dict, optional): ``assigner`` (passed to the head) and
            ``stage_loss_weights`` (one per decoder layer).
        test_cfg (dict, optional): ``score_thr`` (default 0), ``max_per_scene``
            (default 300) and ``nms`` (None, or ``dict(type='center_distance',
            dist_thr_mm=..., inside_box=True, merge=False)``, see
            :func:`center_distance_nms`).
        init_cfg (dict, optional): Defaults to None.
    """

    def __init__(self,
                 bbox_roi_extractor: dict,
                 query_generator: dict,
                 positional_encoding: dict,
                 box_correlation: dict,
                 bbox_head: dict,
                 force_fp32: bool = True,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.bbox_roi_extractor = MODELS.build(bbox_roi_extractor)
        self.query_generator = MODELS.build(query_generator)
        self.positional_encoding = MODELS.build(positional_encoding)
        self.box_correlation = TASK_UTILS.build(box_correlation)
        bbox_head = dict(bbox_head)
        bbox_head.update(train_cfg=train_cfg, test_cfg=test_cfg)
        self.bbox_head = MODELS.build(bbox_head)
        self.force_fp32 = force_fp32
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg if test_cfg is not None else dict()
        output_size = bbox_roi_extractor['roi_layer']['output_size']
        self.roi_size = ((output_size, output_size)
                         if isinstance(output_size, int) else tuple(output_size))
        layers = self.bbox_head.num_layers
        self.stage_loss_weights = list(
            (train_cfg or dict()).get('stage_loss_weights', [1.0] * layers))

    @property
    def bbox_coder(self):
        """The head's box coder (owner of ``pc_range``)."""
        return self.bbox_head.bbox_coder

    @staticmethod
    def _stack_meta(batch_img_metas: List[dict], key: str,
                    device: torch.device) -> Tensor:
        """``(B, V, 4, 4)`` float64 matrices from the metas."""
        mats = []
        for meta in batch_img_metas:
            mat = np.asarray(meta[key], dtype=np.float64)
            if mat.shape[-2:] == (3, 3):  # intrinsics stored 3x3: eye-pad
                padded = np.broadcast_to(np.eye(4), mat.shape[:-2] + (4, 4)).copy()
                padded[..., :3, :3] = mat
                mat = padded
            mats.append(mat)
        return torch.from_numpy(np.stack(mats)).to(device)

    def forward(self, feats: Sequence[Tensor], rois: Tensor,
                batch_img_metas: List[dict], num_views: int) -> Dict[str, Tensor]:
        """Run the 3D head on the detections of a batch.

        Args:
            feats (Sequence[Tensor]): Multi-level features, each
                ``(B * num_views, C, H, W)`` (scene-major, view-minor).
            rois (Tensor): ``(R, 5)`` ``[image index, x1, y1, x2, y2]`` with image
                index ``= scene * num_views + view``; ``R >= 1``.
            batch_img_metas (list[dict]): One per scene: ``lidar2img``,
                ``cam2img`` (``(num_views, 4, 4)``), ``img_shape`` ``(H, W)``.
            num_views (int): Views per scene.

        Returns:
            dict: ``all_cls_scores`` ``(L, R, num_classes)``, ``all_codes``
            ``(L, R, 6)``, ``scene_ids`` ``(R,)``, ``ref_points`` ``(R, 3)`` (ct
            mm), ``corr`` / ``corr_mask`` ``(R, M)`` (global RoI indices).
        """
        device = rois.device
        num_scenes = len(batch_img_metas)
        lidar2img_all = self._stack_meta(batch_img_metas, 'lidar2img', device)
        cam2img_all = self._stack_meta(batch_img_metas, 'cam2img', device)
        img_index = rois[:, 0].long()
        scene_ids = torch.div(img_index, num_views, rounding_mode='floor')
        view_ids = img_index % num_views
        lidar2img = lidar2img_all.flatten(0, 1)[img_index]
        cam2img = cam2img_all.flatten(0, 1)[img_index]
        bboxes = rois[:, 1:].float()
        shapes = [_as_hw(meta['img_shape']) for meta in batch_img_metas]
        img_hw = bboxes.new_tensor(shapes)[scene_ids]

        with torch.autocast(device_type=device.type, enabled=not self.force_fp32):
            if self.force_fp32:
                feats = [feat.float() for feat in feats]
            num_levels = self.bbox_roi_extractor.num_inputs
            roi_feats = self.bbox_roi_extractor(feats[:num_levels], rois.float())
            ref_points, _ = self.query_generator(roi_feats, bboxes, lidar2img,
                                                 cam2img)
            ref_norm = self.bbox_coder.normalize_points(ref_points).clamp(0, 1)

            tokens = roi_feats.flatten(2).transpose(1, 2)       # (R, P, C)
            cell_uv = roi_cell_centres(bboxes, self.roi_size)
            pos = self.positional_encoding(tokens, cell_uv,
                                           torch.linalg.inv(lidar2img),
                                           view_ids, num_views, img_hw)

            corr, corr_mask = self.correlate(bboxes, scene_ids, view_ids,
                                             lidar2img_all, shapes, num_scenes)
            num_rois, num_corr = corr.shape
            key = tokens[corr].flatten(1, 2)                    # (R, M * P, C)
            key_pos = pos[corr].flatten(1, 2)
            padding = (~corr_mask)[:, :, None].expand(
                num_rois, num_corr, tokens.shape[1]).flatten(1)
            all_cls_scores, all_codes = self.bbox_head(ref_norm, scene_ids, key,
                                                       key_pos, padding)
        return dict(all_cls_scores=all_cls_scores, all_codes=all_codes,
                    scene_ids=scene_ids, ref_points=ref_points, corr=corr,
                    corr_mask=corr_mask)

    def correlate(self, bboxes: Tensor, scene_ids: Tensor, view_ids: Tensor,
                  lidar2img_all: Tensor, shapes: List[Tuple[int, int]],
                  num_scenes: int) -> Tuple[Tensor, Tensor]:
        """Box correlation per scene, returned with global RoI indices.

        Returns:
            tuple[Tensor, Tensor]: ``(R, M)`` indices and valid mask; column 0 is
            the RoI itself.
        """
        num_rois = len(bboxes)
        corr_list, mask_list = [None] * num_scenes, [None] * num_scenes
        index_list = []
        for scene in range(num_scenes):
            index = (scene_ids == scene).nonzero(as_tuple=True)[0]
            index_list.append(index)
            if len(index) == 0:
                continue
            corr, mask = self.box_correlation(bboxes[index], view_ids[index],
                                              lidar2img_all[scene], shapes[scene])
            corr_list[scene], mask_list[scene] = index[corr], mask
        width = max(m.shape[1] for m in mask_list if m is not None)
        corr = torch.arange(num_rois, device=bboxes.device)[:, None].repeat(
            1, width)
        mask = torch.zeros((num_rois, width), dtype=torch.bool,
                           device=bboxes.device)
        for index, scene_corr, scene_mask in zip(index_list, corr_list,
                                                 mask_list):
            if scene_corr is None:
                continue
            corr[index, :scene_corr.shape[1]] = scene_corr
            mask[index, :scene_mask.shape[1]] = scene_mask
        return corr, mask

    def loss(self, feats: Sequence[Tensor], rois: Tensor,
             batch_img_metas: List[dict],
             batch_gt_instances_3d: List[InstanceData],
             num_views: int) -> Dict[str, Tensor]:
        """3D losses of every decoder layer (``l{i}.loss_cls``, ``l{i}.loss_bbox``,
        already multiplied by ``stage_loss_weights``).

        Args:
            feats, rois, batch_img_metas, num_views: see :meth:`forward`.
            batch_gt_instances_3d (list[InstanceData]): per scene ``bboxes_3d``
                and ``labels_3d``.
        """
        out = self.forward(feats, rois, batch_img_metas, num_views)
        return self.bbox_head.loss_by_feat(out['all_cls_scores'],
                                           out['all_codes'], out['scene_ids'],
                                           batch_gt_instances_3d,
                                           self.stage_loss_weights)

    def predict(self, feats: Sequence[Tensor], rois: Tensor,
                batch_img_metas: List[dict],
                num_views: int) -> List[InstanceData]:
        """3D detections per scene.

        Args:
            feats, rois, batch_img_metas, num_views: see :meth:`forward`
                (``R`` may be 0).

        Returns:
            list[InstanceData]: per scene ``bboxes_3d`` (the meta's
            ``box_type_3d``, LiDAR boxes by default, yaw 0), ``scores_3d`` and
            ``labels_3d``.
        """
        num_scenes = len(batch_img_metas)
        if len(rois) == 0:
            preds = [None] * num_scenes
        else:
            out = self.forward(feats, rois, batch_img_metas, num_views)
            preds = self.bbox_head.predict_by_feat(out['all_cls_scores'][-1],
                                                   out['all_codes'][-1],
                                                   out['scene_ids'], num_scenes)
        results = []
        for meta, pred in zip(batch_img_metas, preds):
            if pred is None:
                pred = dict(bboxes=rois.new_zeros((0, 7)),
                            scores=rois.new_zeros((0, )),
                            labels=rois.new_zeros((0, ), dtype=torch.long))
            results.append(self._postprocess(pred, meta))
        return results

    def _postprocess(self, pred: dict, meta: dict) -> InstanceData:
        """Score threshold, duplicate suppression, ``max_per_scene``, box type."""
        cfg = self.test_cfg
        keep = pred['scores'] > cfg.get('score_thr', 0.0)
        pred = {key: value[keep] for key, value in pred.items()}
        nms = cfg.get('nms', None)
        if nms is not None:
            nms = dict(nms)
            nms_type = nms.pop('type', 'center_distance')
            if nms_type != 'center_distance':
                raise ValueError(f"test_cfg.nms.type must be 'center_distance', "
                                 f'got {nms_type!r}')
            pred = center_distance_nms(pred['bboxes'], pred['scores'],
                                       pred['labels'], **nms)
        max_num = cfg.get('max_per_scene', 300)
        pred = {key: value[:max_num] for key, value in pred.items()}
        box_type = meta.get('box_type_3d', LiDARInstance3DBoxes)
        if isinstance(box_type, str):
            box_type = get_box_type(box_type)[0]
        result = InstanceData()
        result.bboxes_3d = box_type(pred['bboxes'], box_dim=7, with_yaw=False,
                                    origin=(0.5, 0.5, 0.5))
        result.scores_3d = pred['scores']
        result.labels_3d = pred['labels']
        return result

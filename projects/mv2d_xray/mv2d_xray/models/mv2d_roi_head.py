"""MV2D's 3D RoI head (MV2DS, the sparse variant): 2D detections -> 3D boxes.

For the detections of all views of a batch of scenes:

1. RoI-align their features (an mmdet ``SingleRoIExtractor``; with the detector's FPN
   levels, small findings are read at stride 4);
2. encode the 3D position of every RoI cell (:class:`MV2DXrayPositionalEncoding`);
3. select each detection's relevant detections in the other views
   (:class:`MV2DXrayBoxCorrelation`);
4. triangulate a depth prior for each detection from the box centres of its relevant
   detections (robust linear least squares, :func:`triangulate_points`);
5. optionally merge the detections of one finding into one query (``merge_dist_mm``);
6. generate one 3D reference point per query (:class:`MV2DXrayQueryGenerator`,
   residual to the prior);
7. optionally add *view probes* (``view_probes``): a query with a valid prior also reads
   every view where it has no relevant detection, at the prior's projection
   (:meth:`MV2DXrayRoIHead.probe_rois`), so a finding the 2D stage missed in some views
   is still seen there;
8. optionally give each query the views' support of its prior as its initial content
   (``support_embedding``, :meth:`MV2DXrayRoIHead.support_features`);
9. decode: queries self-attend within their scene and cross-attend to the RoI tokens of
   their relevant detections (and probes) (:class:`MV2DXrayCrossAttentionHead`).

In training, ``train_cfg.rcnn.ray_denoising`` adds queries with fixed targets at each
finding's centre and along its rays (:mod:`.ray_denoising`,
:meth:`MV2DXrayRoIHead.ray_denoising_loss`), decoded apart from the matched ones.

Steps 4, 5, 7 and 8 are ours, not MV2D's. MV2D regresses each query's depth from one view's
RoI feature and leaves duplicates (one query per view of the same object) to its
one-to-one matching, which works with nuScenes' 6 barely overlapping cameras and long
schedules. In X-ray every finding is seen in all N views: N near-identical queries
compete for one positive, so the classifier cannot learn which to score and a depth
regressed from one projection is tens of mm off (measured with true 2D boxes on
synthetic scenes: after 1100 iterations the top-scoring query of a finding sat ~30 mm
from it while its best query was within 5 mm). The
views' geometry already fixes the depth of a finding that two views detect; the
network then learns a residual, and one query per finding gets a clean target.

With ``explain=True`` (:meth:`predict`), every output box also comes with its evidence:
the detection its query was lifted from, the relevant detections it attended to and the
decoder's cross-attention over them (:mod:`.explanation`); the boxes are the same.

All of it -- RoI-align, geometry, query generation, the decoder, the Hungarian matching
and the losses -- runs in fp32 with autocast disabled on the features' device (MV2D's
``force_fp32``; the features are cast with ``.float()``): depths of hundreds of mm and
inverse projection matrices do not survive fp16 or bf16, and mmcv's CPU RoI-align has
no bf16 kernel. Under ``--amp`` only the 2D backbone, FPN and RPN convolutions run in
half precision (:mod:`.two_stage_2d`). Scenes are independent and may hold any number of
views and detections.

At test time (``test_cfg``), the decoded boxes can be held near their queries' priors
(``refine_radius_mm``), re-triangulated from the 2D detections that support them
(``refine_to_detections``), rescored by their views' 2D support (``view_support``), thresholded,
suppressed and capped (:meth:`MV2DXrayRoIHead.select`).
"""
import math
import sys
from contextlib import nullcontext
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmdet3d.registry import MODELS, TASK_UTILS
from mmdet3d.structures import LiDARInstance3DBoxes, get_box_type
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor, nn
from torch.nn.utils import skip_init

from projects.mv2d_xray.core.clustering import greedy_clusters
from projects.mv2d_xray.core.geometry import (project_boxes3d, project_points, ray_planes,
                                              seen_in_image, triangulate_points,
                                              unproject_points)
from projects.mv2d_xray.mv2d_xray.baselines.triangulation import (TriangulationConfig,
                                                                  refine_to_detections)
from projects.mv2d_xray.mv2d_xray.models.config_keys import SUPPORT_EMBEDDING_KEYS, check_keys
from projects.mv2d_xray.mv2d_xray.models.explanation import QueryEvidence, explain_query
from projects.mv2d_xray.mv2d_xray.models.post_processing import (ObjectnessMaps,
                                                                 centre_distance_nms,
                                                                 objectness_support_by_size,
                                                                 view_support,
                                                                 view_support_scores)
from projects.mv2d_xray.mv2d_xray.models.ray_denoising import (check_ray_denoising,
                                                               sample_ray_points)


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


def gather_rows(features: Tensor, index: Tensor) -> Tensor:
    """``features[index]`` along dim 0 for any shape of ``index``, with a backward that
    sums the same way in every run.

    Why not ``features[index]``: advanced indexing's backward is ``index_put_`` with
    ``accumulate=True``, which on a CPU with several threads adds the rows of repeated
    indices in an order that differs between runs (every query that reads an RoI repeats
    its index), so two trainings with the same seed drift apart (README, *The
    chest benchmark from nothing with the averaged weights*). ``index_select``'s backward
    (``index_add_``) adds them in index order on a CPU; the forward is the same gather.
    PyTorch's ``use_deterministic_algorithms`` list names it the other way round on CUDA
    (``index_select``'s backward nondeterministic there, indexing's only on the CPU), but a
    CUDA training is not repeatable by default anyway (cuDNN); mmengine's
    ``randomness=dict(deterministic=True)`` makes both paths deterministic on both devices.

    Args:
        features (Tensor): ``(N, ...)``, e.g. ``(R, P, C)`` RoI tokens.
        index (Tensor): integer indices into dim 0, any shape ``S``.

    Returns:
        Tensor: ``(*S, ...)``.
    """
    return features.index_select(0, index.reshape(-1)).unflatten(0, index.shape)


class RoIGeometry(NamedTuple):
    """Where the ``R`` RoIs of a batch of ``B`` scenes of ``V`` views come from
    (:meth:`MV2DXrayRoIHead.gather_rois`)."""
    #: ``(R, 4)`` float32 boxes ``[x1, y1, x2, y2]``, img frame of their views (px).
    bboxes: Tensor
    #: ``(R,)`` image of each RoI, ``scene * V + view``.
    img_index: Tensor
    #: ``(R,)`` scene of each RoI.
    scene_ids: Tensor
    #: ``(R,)`` view of each RoI.
    view_ids: Tensor
    #: ``(R, 4, 4)`` float64 ct -> img of each RoI's view.
    lidar2img: Tensor
    #: ``(R, 4, 4)`` float64 cam -> img (intrinsics) of each RoI's view.
    cam2img: Tensor
    #: ``(B, V, 4, 4)`` float64 ct -> img of every view of every scene.
    views_lidar2img: Tensor
    #: ``(H, W)`` of each scene's (unpadded) images, px.
    img_shapes: List[Tuple[int, int]]
    #: ``V``.
    num_views: int


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
        triangulate_prior (bool): Triangulate each detection's depth prior from its
            relevant detections (step 4); otherwise the generator's anchor depth.
            Defaults to True.
        prior_outlier_mm (float): Scale of the robust (Huber) weights of the
            triangulation: a partner ray further than this from the point counts
            less. Defaults to 10.
        prior_min_ray_angle_deg (float): A prior needs rays at least this far apart
            (else the anchor depth is used). Defaults to 15.
        prior_min_partners (int): A prior needs this many relevant detections that
            agree with it: two rays always pass near each other (that is why the
            correlation picked the partner), a third one confirms. Defaults to 2.
        merge_dist_mm (float, optional): Merge detections whose triangulated priors
            are closer than this into the query of the best-scoring one (step 5);
            None keeps one query per detection, as MV2D. Defaults to None.
        view_probes (bool): Let each query with a valid prior also attend to a box
            (its own detection's size) at the prior's projection in every view of its
            scene where it has no relevant detection, the prior is in front of the
            source and projects inside the image (step 7, :meth:`probe_rois`). In
            training, ``complement_2d_gt`` adds the GT boxes the detector missed, so
            true findings rarely get probes there; at test time they do. Defaults to
            False (MV2D: the relevant detections only).
        support_embedding (dict, optional): Give each query, as its initial content, an
            embedding (two fc layers) of how the scene's 2D detections support its prior
            (step 8, :meth:`support_features`): ``dict(gate_px=3.0, gate_frac=0.5,
            top_views=4, logit_skip=False)`` -- the association gate of
            ``view_support``, how many of the best-supporting views' scores enter and
            whether they also enter the class logits (below). MV2D's query starts empty
            and reads the views through the softmax of its cross-attention, which
            normalises the number of views that hold the finding away; this counts them.
            Train it with ``complement_2d_gt`` off: GT boxes added with score 1 in every
            view where the detector missed a finding would give the training's true
            findings a support they never have at test time. With ``logit_skip=True``
            the same features also enter the classifier directly: a linear map of them
            (zero at the start) is added to every decoder layer's class logits, so the
            decoder learns what to add to the support rather than having to carry it
            through its layers.
            Defaults to None (MV2D: queries start at zero).
        force_fp32 (bool): Run with autocast disabled. Defaults to True.
        train_cfg (dict, optional): ``assigner`` (passed to the head),
            ``stage_loss_weights`` (one per decoder layer) and ``ray_denoising`` (None,
            or ``dict(num_rays=2, num_negatives=3, offset_mm=(10, 60), pos_noise_mm=2,
            loss_weight=1)``: training queries at each finding and along its rays,
            :meth:`ray_denoising_loss`).
        test_cfg (dict, optional): the post-processing of the decoded boxes, in this
            order: ``refine_radius_mm`` (None, or keep each decoded centre within this
            distance of its query's valid triangulated prior, :meth:`limit_refinement`;
            0 puts it at the prior), ``refine_to_detections`` (None, or
            ``dict(gate_px=3, gate_frac=0.5, min_views=2)``, optionally ``max_move_mm``:
            :meth:`refine_on_detections`), ``objectness_support.search_depths`` (None,
            or an int: :meth:`search_rays`), ``view_support`` (:meth:`rescore`: ``dict(
            weight=w)`` with one rule, ``margin_px`` or ``gate_px`` / ``gate_frac``, and
            optionally ``per_class`` and ``class_support``),
            ``objectness_support`` (:meth:`rescore_by_objectness`: ``dict(weight=w,
            levels=[0], search_depths=None)``), then
            (:meth:`select`) ``score_thr`` (keep scores
            above it; default 0), ``nms`` (None, or ``dict(type='centre_distance',
            dist_thr_mm=..., inside_box=True, merge=False, class_agnostic=False,
            cross_class_ratio=None)``, see
            :func:`centre_distance_nms`) and ``max_per_scene`` (keep the best
            ones; default 300). The only score threshold and cap of the 3D stage.
        init_cfg (dict, optional): Defaults to None.
    """

    def __init__(self,
                 bbox_roi_extractor: dict,
                 query_generator: dict,
                 positional_encoding: dict,
                 box_correlation: dict,
                 bbox_head: dict,
                 triangulate_prior: bool = True,
                 prior_outlier_mm: float = 10.0,
                 prior_min_ray_angle_deg: float = 15.0,
                 prior_min_partners: int = 2,
                 merge_dist_mm: Optional[float] = None,
                 view_probes: bool = False,
                 support_embedding: Optional[dict] = None,
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
        bbox_head.update(train_cfg=train_cfg)
        self.bbox_head = MODELS.build(bbox_head)
        self.triangulate_prior = triangulate_prior
        self.prior_outlier_mm = prior_outlier_mm
        self.prior_min_ray_angle_deg = prior_min_ray_angle_deg
        self.prior_min_partners = prior_min_partners
        self.merge_dist_mm = merge_dist_mm
        self.view_probes = bool(view_probes)
        self.support_cfg = self.check_support_embedding(support_embedding)
        self.support_encoder = self.support_logit = None
        if self.support_cfg is not None:
            dims = self.bbox_head.embed_dims
            num_features = self.num_support_features(self.support_cfg)
            self.support_encoder = nn.Sequential(nn.Linear(num_features, dims),
                                                 nn.ReLU(inplace=True), nn.Linear(dims, dims))
            if self.support_cfg['logit_skip']:
                # zero at the start: the classifier begins as without the skip; built
                # without the default init, which would draw from the global generator
                # and change every other random start of a run with the same seed
                self.support_logit = skip_init(nn.Linear, num_features,
                                               self.bbox_head.num_classes)
                nn.init.zeros_(self.support_logit.weight)
                nn.init.zeros_(self.support_logit.bias)
        self.force_fp32 = force_fp32
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg if test_cfg is not None else dict()
        refine_radius_mm = self.test_cfg.get('refine_radius_mm', None)
        if refine_radius_mm is not None and not float(refine_radius_mm) >= 0.0:
            raise ValueError('test_cfg.refine_radius_mm must be None or >= 0, got '
                             f'{refine_radius_mm}')
        if refine_radius_mm is not None and not triangulate_prior:
            raise ValueError('test_cfg.refine_radius_mm holds centres near the queries\' '
                             'triangulated priors: it needs triangulate_prior=True')
        self.check_view_support(self.test_cfg.get('view_support', None))
        view_support_cfg = self.test_cfg.get('view_support', None) or dict()
        # per_class: row c lists the weight of each detection class for a box of class c
        self.class_support = (self.class_support_matrix(
            view_support_cfg, self.bbox_head.num_classes).tolist()
            if view_support_cfg.get('per_class', False) else None)
        self.check_objectness_support(self.test_cfg.get('objectness_support', None))
        if ((self.test_cfg.get('objectness_support', None) or dict()).get('search_depths')
                is not None and self.test_cfg.get('refine_to_detections', None) is None):
            raise ValueError('test_cfg.objectness_support.search_depths searches the rays '
                             "of the boxes refine_to_detections cannot re-triangulate: it "
                             'needs test_cfg.refine_to_detections')
        self.refine_cfg = self.refine_settings(self.test_cfg.get('refine_to_detections', None))
        self.refine_max_move_mm = self.refine_max_move(
            self.test_cfg.get('refine_to_detections', None))
        output_size = bbox_roi_extractor['roi_layer']['output_size']
        self.roi_size = ((output_size, output_size)
                         if isinstance(output_size, int) else tuple(output_size))
        self.ray_denoising_cfg = check_ray_denoising(
            (train_cfg or dict()).get('ray_denoising', None))
        layers = self.bbox_head.num_layers
        self.stage_loss_weights = list(
            (train_cfg or dict()).get('stage_loss_weights', [1.0] * layers))

    @property
    def objectness_levels(self) -> Tuple[int, ...]:
        """The FPN levels whose RPN objectness ``objectness_support`` reads, ascending;
        empty when none (the detector then computes no objectness maps)."""
        cfg = self.test_cfg.get('objectness_support', None) or dict()
        return tuple(sorted(cfg.get('levels', ())))

    @property
    def bbox_coder(self):
        """The head's box coder (owner of ``pc_range``)."""
        return self.bbox_head.bbox_coder

    def forward(self, feats: Sequence[Tensor], rois: Tensor,
                batch_img_metas: List[dict], num_views: int,
                roi_scores: Optional[Tensor] = None,
                explain: bool = False) -> Dict[str, Tensor]:
        """Run the 3D head on the detections of a batch.

        Args:
            feats (Sequence[Tensor]): Multi-level features, each
                ``(B * num_views, C, H, W)`` (scene-major, view-minor).
            rois (Tensor): ``(R, 5)`` ``[image index, x1, y1, x2, y2]`` (px) with
                image index ``= scene * num_views + view``; ``R >= 1``.
            batch_img_metas (list[dict]): One per scene: ``lidar2img``,
                ``cam2img`` (``(num_views, 4, 4)``), ``img_shape`` ``(H, W)``.
            num_views (int): Views per scene.
            roi_scores (Tensor, optional): ``(R,)`` 2D scores; they order the
                merging (best first). Defaults to the RoI order.
            explain (bool): Also return the queries' evidence (the decoder's
                cross-attention is recorded; the outputs do not change). Defaults to
                False.

        Returns:
            dict: for the ``Q`` queries, ``all_cls_scores`` ``(L, Q,
            num_classes)`` logits, ``all_codes`` ``(L, Q, 6)`` box codes (``L``
            decoder layers), ``scene_ids`` ``(Q,)``, the queries' triangulated priors
            ``query_priors`` ``(Q, 3)`` (ct mm), their validity ``query_prior_ok``
            ``(Q,)`` and the RoI each query comes from, ``query_rois`` ``(Q,)``
            (indices into ``rois``); with ``explain``, also ``evidence`` (:class:`QueryEvidence`).
        """
        geo = self.gather_rois(rois, batch_img_metas, num_views)
        with torch.autocast(device_type=rois.device.type, enabled=not self.force_fp32):
            if self.force_fp32:
                feats = [feat.float() for feat in feats]
            roi_feats, tokens, pos = self.encode_rois(feats, rois, geo)
            corr, corr_mask = self.correlate(geo.bboxes, geo.scene_ids, geo.view_ids,
                                             geo.views_lidar2img, geo.img_shapes,
                                             len(batch_img_metas))
            prior_points, prior_ok = self.triangulate_priors(
                geo.bboxes, geo.views_lidar2img.flatten(0, 1), geo.img_index, corr,
                corr_mask)
            query_rois = self.merge_queries(prior_points, prior_ok, geo.scene_ids,
                                            roi_scores)
            ref_points = self.generate_queries(roi_feats, geo, prior_points, query_rois)
            scene_ids = geo.scene_ids[query_rois]
            query_corr, query_mask = corr[query_rois], corr_mask[query_rois]
            roi_bboxes, roi_view_ids, scores = geo.bboxes, geo.view_ids, roi_scores
            if self.view_probes:
                probes, slots, slot_mask = self.probe_rois(
                    prior_points[query_rois], prior_ok[query_rois], query_rois,
                    query_corr, query_mask, geo)
                if len(probes):
                    probe_geo = self.gather_rois(probes, batch_img_metas, num_views)
                    _, probe_tokens, probe_pos = self.encode_rois(feats, probes, probe_geo)
                    tokens = torch.cat([tokens, probe_tokens])
                    pos = torch.cat([pos, probe_pos])
                    query_corr = torch.cat([query_corr, slots + len(rois)], dim=1)
                    query_mask = torch.cat([query_mask, slot_mask], dim=1)
                    roi_bboxes = torch.cat([roi_bboxes, probe_geo.bboxes])
                    roi_view_ids = torch.cat([roi_view_ids, probe_geo.view_ids])
                    if scores is not None:     # a probe is no detection: no 2D score
                        scores = torch.cat([scores, scores.new_full((len(probes), ),
                                                                    float('nan'))])
            content = support = None
            if self.support_encoder is not None:
                support = self.support_features(prior_points[query_rois],
                                                prior_ok[query_rois], query_rois, rois,
                                                roi_scores, geo)
                content = self.support_encoder(support)
            recorder = (self.bbox_head.record_cross_attention() if explain else
                        nullcontext([]))
            with recorder as attention:
                all_cls_scores, all_codes = self.decode(ref_points, scene_ids, tokens,
                                                        pos, query_corr, query_mask,
                                                        content)
            if self.support_logit is not None:               # (Q, C) to every layer
                all_cls_scores = all_cls_scores + self.support_logit(support)
        out = dict(all_cls_scores=all_cls_scores, all_codes=all_codes,
                   scene_ids=scene_ids, query_priors=prior_points[query_rois],
                   query_prior_ok=prior_ok[query_rois], query_rois=query_rois)
        if explain:
            out['evidence'] = QueryEvidence(
                query_rois=query_rois, corr=query_corr, corr_mask=query_mask,
                cell_attention=torch.stack(attention).unflatten(
                    -1, (query_corr.shape[1], ) + self.roi_size),
                roi_bboxes=roi_bboxes, roi_view_ids=roi_view_ids,
                roi_scores=scores, num_views=num_views, num_rois=len(rois))
        return out

    @staticmethod
    def gather_rois(rois: Tensor, batch_img_metas: List[dict],
                    num_views: int) -> RoIGeometry:
        """Scene, view, box and camera matrices of every RoI.

        Args:
            rois (Tensor): ``(R, 5)`` ``[image index, x1, y1, x2, y2]`` (px).
            batch_img_metas (list[dict]): One per scene: ``lidar2img`` and
                ``cam2img`` ``(num_views, 4, 4)``, ``img_shape`` ``(H, W)``.
            num_views (int): Views per scene.

        Returns:
            RoIGeometry: the RoIs' indices and matrices (float64).
        """
        def stack(key: str) -> Tensor:                          # (B, V, 4, 4)
            mats = [np.asarray(meta[key], dtype=np.float64) for meta in batch_img_metas]
            return torch.from_numpy(np.stack(mats)).to(rois.device)

        views_lidar2img = stack('lidar2img')
        img_index = rois[:, 0].long()
        return RoIGeometry(
            bboxes=rois[:, 1:].float(),
            img_index=img_index,
            scene_ids=torch.div(img_index, num_views, rounding_mode='floor'),
            view_ids=img_index % num_views,
            lidar2img=views_lidar2img.flatten(0, 1)[img_index],
            cam2img=stack('cam2img').flatten(0, 1)[img_index],
            views_lidar2img=views_lidar2img,
            img_shapes=[tuple(meta['img_shape']) for meta in batch_img_metas],
            num_views=num_views)

    def encode_rois(self, feats: Sequence[Tensor], rois: Tensor,
                    geo: RoIGeometry) -> Tuple[Tensor, Tensor, Tensor]:
        """RoI-align the features and encode the 3D position of every RoI cell.

        Args:
            feats (Sequence[Tensor]): Multi-level features (see :meth:`forward`).
            rois (Tensor): ``(R, 5)``.
            geo (RoIGeometry): From :meth:`gather_rois`.

        Returns:
            tuple[Tensor, Tensor, Tensor]: ``roi_feats`` ``(R, C, S_h, S_w)``, the
            RoI tokens ``(R, P, C)`` (``P = S_h * S_w`` cells, row-major) and their
            position encodings ``(R, P, C)``.
        """
        num_levels = self.bbox_roi_extractor.num_inputs
        roi_feats = self.bbox_roi_extractor(feats[:num_levels], rois.float())
        tokens = roi_feats.flatten(2).transpose(1, 2)
        cell_uv = roi_cell_centres(geo.bboxes, self.roi_size)    # (R, P, 2) img px
        img_hw = geo.bboxes.new_tensor(geo.img_shapes)[geo.scene_ids]
        pos = self.positional_encoding(tokens, cell_uv, torch.linalg.inv(geo.lidar2img),
                                       geo.view_ids, geo.num_views, img_hw)
        return roi_feats, tokens, pos

    def generate_queries(self, roi_feats: Tensor, geo: RoIGeometry,
                         prior_points: Tensor, query_rois: Tensor) -> Tensor:
        """Reference points of the queries: one per kept RoI, at the cam depth of its
        prior (with ``triangulate_prior``; a prior that is not valid lies at the
        anchor's depth) or of the generator's anchor, plus the regressed residual.

        Args:
            roi_feats (Tensor): ``(R, C, S_h, S_w)``.
            geo (RoIGeometry): From :meth:`gather_rois`.
            prior_points (Tensor): ``(R, 3)`` ct mm, from :meth:`triangulate_priors`.
            query_rois (Tensor): ``(Q,)`` RoIs that become queries.

        Returns:
            Tensor: ``(Q, 3)`` reference points in ct mm.
        """
        lidar2img = geo.lidar2img[query_rois]
        depth_prior = None
        if self.triangulate_prior:
            _, depth = project_points(lidar2img, prior_points[query_rois].double()[:, None])
            depth_prior = depth[:, 0]                            # (Q,) cam mm
        return self.query_generator(gather_rows(roi_feats, query_rois),
                                    geo.bboxes[query_rois], lidar2img,
                                    geo.cam2img[query_rois], depth_prior)

    @torch.no_grad()
    def probe_rois(self, points: Tensor, points_ok: Tensor, query_rois: Tensor,
                   query_corr: Tensor, query_mask: Tensor,
                   geo: RoIGeometry) -> Tuple[Tensor, Tensor, Tensor]:
        """The view probes of the queries (step 7): for a query with a valid prior, one
        box per view of its scene that holds none of its relevant detections, centred at
        the prior's projection, of the query's own detection's width and height; only
        where the prior is in front of the source and projects inside the image.

        Args:
            points (Tensor): ``(Q, 3)`` the queries' priors, ct mm.
            points_ok (Tensor): ``(Q,)`` their validity.
            query_rois (Tensor): ``(Q,)`` the RoI each query was lifted from.
            query_corr, query_mask (Tensor): ``(Q, M)`` its relevant RoIs.
            geo (RoIGeometry): the RoIs' geometry (:meth:`gather_rois`).

        Returns:
            tuple[Tensor, Tensor, Tensor]: the probes as RoIs ``(P, 5)`` ``[image index,
            x1, y1, x2, y2]`` (px), and per query ``(Q, V)`` the probe of each view
            (an index into the ``P`` probes; 0 where there is none) with its mask
            ``(Q, V)``.
        """
        num_views = geo.num_views
        scenes = geo.scene_ids[query_rois]
        uv, seen = self.projections_in_views(points, scenes, geo)
        covered = torch.zeros_like(seen)                         # views it already reads
        row, col = query_mask.nonzero(as_tuple=True)
        covered[row, geo.view_ids[query_corr[row, col]]] = True
        wanted = points_ok[:, None] & ~covered & seen
        size = geo.bboxes[query_rois, 2:] - geo.bboxes[query_rois, :2]       # (Q, 2)
        probes, slots = self.boxes_at_projections(
            uv, size[:, None].expand(-1, num_views, -1), wanted, scenes, num_views)
        return probes, slots, wanted

    @staticmethod
    def projections_in_views(points: Tensor, scenes: Tensor,
                             geo: RoIGeometry) -> Tuple[Tensor, Tensor]:
        """Each point's projection in every view of its scene, and whether that view
        sees it (in front of the source, inside the image).

        Args:
            points (Tensor): ``(Q, 3)`` ct mm.
            scenes (Tensor): ``(Q,)`` the scene of each point.
            geo (RoIGeometry): the batch's geometry (:meth:`gather_rois`).

        Returns:
            tuple[Tensor, Tensor]: ``uv`` ``(Q, V, 2)`` float32 img px and ``seen``
            ``(Q, V)`` bool.
        """
        uv, depth = project_points(geo.views_lidar2img[scenes],     # (Q, V, 4, 4)
                                   points.double()[:, None, None, :])
        uv, depth = uv[:, :, 0].float(), depth[:, :, 0]          # (Q, V, 2), (Q, V)
        hw = geo.bboxes.new_tensor(geo.img_shapes)[scenes]       # (Q, 2) (H, W)
        return uv, seen_in_image(uv, depth, hw[:, None, 0], hw[:, None, 1])

    @staticmethod
    def boxes_at_projections(uv: Tensor, size: Tensor, wanted: Tensor, scenes: Tensor,
                             num_views: int) -> Tuple[Tensor, Tensor]:
        """Boxes centred at points' projections, as RoIs (the view probes, and the keys of
        the ray-denoising queries).

        Args:
            uv (Tensor): ``(Q, V)`` x 2, each point's projection in each view of its
                scene, px.
            size (Tensor): ``(Q, V, 2)`` the boxes' width and height, px.
            wanted (Tensor): ``(Q, V)`` where a box is made.
            scenes (Tensor): ``(Q,)`` the scene of each point.
            num_views (int): ``V``.

        Returns:
            tuple[Tensor, Tensor]: the boxes as RoIs ``(P, 5)`` ``[image index, x1, y1,
            x2, y2]`` (px, in ``wanted``'s row-major order) and ``(Q, V)`` each
            (point, view)'s box, an index into them (0 where ``wanted`` is False).
        """
        query, view = wanted.nonzero(as_tuple=True)
        centre = uv[query, view].float()
        half = size[query, view].to(centre) / 2
        boxes = torch.cat([(scenes[query] * num_views + view)[:, None].to(centre),
                           centre - half, centre + half], dim=1)
        slots = torch.zeros_like(wanted, dtype=torch.long)
        slots[query, view] = torch.arange(len(query), device=slots.device)
        return boxes, slots

    def decode(self, ref_points: Tensor, scene_ids: Tensor, tokens: Tensor,
               pos: Tensor, corr: Tensor, corr_mask: Tensor,
               content: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Decode the queries: each attends to its scene's queries and to the RoI
        tokens of its relevant RoIs.

        Args:
            ref_points (Tensor): ``(Q, 3)`` ct mm.
            scene_ids (Tensor): ``(Q,)``.
            tokens, pos (Tensor): ``(R, P, C)`` RoI tokens and their encodings.
            corr, corr_mask (Tensor): ``(Q, M)`` each query's relevant RoIs (global
                RoI indices) and their validity.
            content (Tensor, optional): ``(Q, C)`` the queries' initial features
                (``support_embedding``); None: zero.

        Returns:
            tuple[Tensor, Tensor]: ``all_cls_scores`` ``(L, Q, num_classes)`` and
            ``all_codes`` ``(L, Q, 6)``.
        """
        ref_norm = self.bbox_coder.normalize_points(ref_points).clamp(0, 1)
        key = gather_rows(tokens, corr).flatten(1, 2)            # (Q, M * P, C)
        key_pos = gather_rows(pos, corr).flatten(1, 2)
        padding = (~corr_mask)[:, :, None].expand(-1, -1, tokens.shape[1]).flatten(1)
        return self.bbox_head(ref_norm, scene_ids, key, key_pos, padding, content)

    @staticmethod
    def check_support_embedding(cfg: Optional[dict]) -> Optional[dict]:
        """``support_embedding`` with its defaults filled in (None stays None); an unknown
        key or a value out of range is a ``ValueError`` naming the setting."""
        if cfg is None:
            return None
        check_keys(cfg, SUPPORT_EMBEDDING_KEYS, 'model.roi_head.support_embedding')
        cfg = dict(dict(gate_px=3.0, gate_frac=0.5, top_views=4, logit_skip=False), **cfg)
        if not isinstance(cfg['logit_skip'], bool):
            raise ValueError('model.roi_head.support_embedding.logit_skip must be True or '
                             f"False, got {cfg['logit_skip']!r}")
        if not float(cfg['gate_px']) > 0 or not float(cfg['gate_frac']) >= 0:
            raise ValueError('model.roi_head.support_embedding: gate_px must be > 0 and '
                             f"gate_frac >= 0, got {cfg['gate_px']} and {cfg['gate_frac']}")
        if int(cfg['top_views']) != cfg['top_views'] or cfg['top_views'] < 1:
            raise ValueError('model.roi_head.support_embedding.top_views must be an '
                             f"integer >= 1, got {cfg['top_views']}")
        return cfg

    @staticmethod
    def num_support_features(cfg: dict) -> int:
        """Length of :meth:`support_features`' rows: 4 + ``top_views``."""
        return 4 + int(cfg['top_views'])

    @torch.no_grad()
    def support_features(self, points: Tensor, points_ok: Tensor, query_rois: Tensor,
                         rois: Tensor, roi_scores: Optional[Tensor],
                         geo: RoIGeometry) -> Tensor:
        """How the scene's 2D detections support each query's prior (step 8).

        Per view, the support is the 2D score of the nearest detection whose gate
        (``support_embedding``'s ``gate_px`` / ``gate_frac``, the triangulation
        baseline's rule) holds the prior's projection, 0 without one
        (:func:`view_support_scores`).

        Args:
            points (Tensor): ``(Q, 3)`` the queries' priors, ct mm.
            points_ok (Tensor): ``(Q,)`` their validity.
            query_rois (Tensor): ``(Q,)`` the RoI each query was lifted from.
            rois (Tensor): ``(R, 5)`` the batch's RoIs (see :meth:`forward`).
            roi_scores (Tensor, optional): ``(R,)`` their 2D scores (None: all 1).
            geo (RoIGeometry): the RoIs' geometry (:meth:`gather_rois`).

        Returns:
            Tensor: ``(Q, 4 + top_views)`` float32: the query's own 2D score, its
            prior's validity (0 / 1), the mean support over the scene's views, the
            fraction of views that support it, then the ``top_views`` largest per-view
            supports, largest first (0 beyond the scene's views).
        """
        scores = self.roi_scores_or_ones(rois, roi_scores).float()
        per_view = self.per_view_support(points, geo.scene_ids[query_rois], rois,
                                         roi_scores, geo)
        return self.support_row(scores[query_rois], points_ok, per_view, geo.num_views)

    @torch.no_grad()
    def per_view_support(self, points: Tensor, scenes: Tensor, rois: Tensor,
                         roi_scores: Optional[Tensor], geo: RoIGeometry) -> Tensor:
        """Per view, the support of each point by its scene's 2D detections (the rule of
        :meth:`support_features`).

        Args:
            points (Tensor): ``(Q, 3)`` ct mm.
            scenes (Tensor): ``(Q,)`` the scene of each point.
            rois, roi_scores, geo: see :meth:`support_features`.

        Returns:
            Tensor: ``(Q, max(V, top_views))``, the view's support in column ``v < V``,
            0 beyond.
        """
        cfg = self.support_cfg
        scores = self.roi_scores_or_ones(rois, roi_scores).float()
        per_view = points.new_zeros((len(points), max(geo.num_views,
                                                      int(cfg['top_views']))))
        for scene in scenes.unique().tolist():
            queries = scenes == scene
            mine = geo.scene_ids == scene
            per_view[queries, :geo.num_views] = view_support_scores(
                points[queries], geo.views_lidar2img[scene], rois[mine, 1:],
                scores[mine], geo.view_ids[mine], gate_px=float(cfg['gate_px']),
                gate_frac=float(cfg['gate_frac'])).to(per_view)
        return per_view

    def support_row(self, own_scores: Tensor, points_ok: Tensor, per_view: Tensor,
                    num_views: int) -> Tensor:
        """The rows of :meth:`support_features` from the queries' own 2D scores ``(Q,)``,
        their validity ``(Q,)`` and :meth:`per_view_support` ``(Q, max(V, top))``."""
        supports = per_view[:, :num_views]
        return torch.cat([own_scores[:, None].float(), points_ok.float()[:, None],
                          supports.mean(dim=1, keepdim=True),
                          (supports > 0).float().mean(dim=1, keepdim=True),
                          per_view.sort(dim=1, descending=True).values[
                              :, :int(self.support_cfg['top_views'])]],
                         dim=1).float()

    @torch.no_grad()
    def triangulate_priors(self, bboxes: Tensor, lidar2img: Tensor,
                           img_index: Tensor, corr: Tensor,
                           corr_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """A 3D prior for every detection: the point nearest the rays through the box
        centres of the detection and its relevant detections (float64).

        Wrong partners (another finding's box picked by the correlation) are
        down-weighted by iteratively reweighted least squares with Huber weights of
        scale ``prior_outlier_mm``. A prior is valid when ``prior_min_partners``
        partners' rays pass within ``2 * prior_outlier_mm`` of it, its rays are at least
        ``prior_min_ray_angle_deg`` apart and it lies in front of every source.

        Args:
            bboxes (Tensor): ``(R, 4)`` boxes in px.
            lidar2img (Tensor): ``(B * V, 4, 4)`` ct -> img of every image.
            img_index (Tensor): ``(R,)`` image of each box.
            corr, corr_mask (Tensor): ``(R, M)`` from :meth:`correlate`.

        Returns:
            tuple[Tensor, Tensor]: ``(R, 3)`` ct points (mm; rows not valid hold
            the box centre's ray at the anchor depth) and ``(R,)`` validity.
        """
        centres = ((bboxes[:, :2] + bboxes[:, 2:]) / 2).double()
        mats = lidar2img.double()[img_index[corr]]              # (R, M, 4, 4)
        uv = centres[corr]                                       # (R, M, 2)
        valid = corr_mask.double()
        weights = valid.clone()
        planes = ray_planes(mats, uv)                            # (R, M, 2, 4)
        for _ in range(4):
            points = triangulate_points(mats, uv, weights)
            dist = (planes[..., :3] @ points[:, None, :, None])[..., 0] + \
                planes[..., 3]                                   # (R, M, 2)
            dist = dist.norm(dim=-1)
            weights = valid * (self.prior_outlier_mm / dist.clamp(
                min=1e-6)).clamp(max=1.0)
            weights[:, 0] = 1.0                                 # the RoI's own ray
        partner = corr_mask[:, 1:] & (dist[:, 1:] < 2 * self.prior_outlier_mm)
        # the normal matrix's smallest eigenvalue is ~ 1 - cos(angle between rays)
        rows = (planes * weights[..., None, None]).flatten(1, 2)[..., :3]
        ata = rows.transpose(1, 2) @ rows
        min_eig = torch.linalg.eigvalsh(ata)[:, 0]
        min_angle = np.deg2rad(self.prior_min_ray_angle_deg)
        ok = (partner.sum(dim=1) >= self.prior_min_partners) & \
            (min_eig > 1 - np.cos(min_angle))
        _, depth = project_points(mats, points[:, None].expand(-1, corr.shape[1],
                                                               -1)[..., None, :])
        ok &= ((depth[..., 0] > 0) | ~corr_mask).all(dim=1)
        own = lidar2img.double()[img_index]
        anchor = self.query_generator.anchor_depth(own)
        fallback = unproject_points(own, centres[:, None], anchor[:, None])[:, 0]
        points = torch.where(ok[:, None], points, fallback)
        return points.to(bboxes.dtype), ok

    def merge_queries(self, prior_points: Tensor, prior_ok: Tensor,
                      scene_ids: Tensor,
                      roi_scores: Optional[Tensor] = None) -> Tensor:
        """Indices of the RoIs that become queries.

        With ``merge_dist_mm`` set, greedily by score: a RoI with a valid prior
        absorbs the RoIs of its scene whose valid priors lie within
        ``merge_dist_mm`` (the same finding seen in other views, or a duplicate
        box); RoIs without a valid prior stay queries. Otherwise every RoI.
        The clustering is :func:`~projects.mv2d_xray.core.clustering.greedy_clusters`.

        Args:
            prior_points (Tensor): ``(R, 3)`` ct mm, from :meth:`triangulate_priors`.
            prior_ok (Tensor): ``(R,)`` validity of the priors.
            scene_ids (Tensor): ``(R,)``.
            roi_scores (Tensor, optional): ``(R,)`` 2D scores (best first; ties and
                None: the RoI order).

        Returns:
            Tensor: ``(Q,)`` sorted RoI indices.
        """
        num_rois = len(prior_points)
        if self.merge_dist_mm is None or num_rois == 0:
            return torch.arange(num_rois, device=prior_points.device)
        if roi_scores is None:
            roi_scores = prior_points.new_zeros(num_rois)    # ties: the RoI order
        dist = torch.cdist(prior_points.double(), prior_points.double())
        close = (dist < self.merge_dist_mm) & prior_ok[:, None] & \
            prior_ok[None, :] & (scene_ids[:, None] == scene_ids[None, :])
        heads, _ = greedy_clusters(roi_scores.detach(), close)
        return heads.sort().values.to(prior_points.device)

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
             num_views: int,
             roi_scores: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """3D losses of every decoder layer (``l{i}.loss_cls``, ``l{i}.loss_bbox``,
        already multiplied by ``stage_loss_weights``).

        Args:
            feats, rois, batch_img_metas, num_views, roi_scores: see
                :meth:`forward`.
            batch_gt_instances_3d (list[InstanceData]): per scene ``bboxes_3d``
                and ``labels_3d``.
        """
        out = self.forward(feats, rois, batch_img_metas, num_views, roi_scores)
        # the matching and the losses in fp32 too (the outputs are fp32 already)
        with torch.autocast(device_type=rois.device.type, enabled=not self.force_fp32):
            priors = torch.where(out['query_prior_ok'][:, None], out['query_priors'],
                                 float('nan'))                    # (Q, 3) ct mm
            losses = self.bbox_head.loss_by_feat(out['all_cls_scores'],
                                                 out['all_codes'], out['scene_ids'],
                                                 batch_gt_instances_3d,
                                                 self.stage_loss_weights, priors)
            if self.ray_denoising_cfg is not None:
                losses.update(self.ray_denoising_loss(feats, rois, batch_img_metas,
                                                      batch_gt_instances_3d, num_views,
                                                      roi_scores))
        return losses

    def ray_denoising_loss(self, feats: Sequence[Tensor], rois: Tensor,
                           batch_img_metas: List[dict],
                           batch_gt_instances_3d: List[InstanceData], num_views: int,
                           roi_scores: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """The losses of the ray-denoising queries (``train_cfg.rcnn.ray_denoising``,
        :meth:`decode_ray_points`).

        Args:
            feats, rois, batch_img_metas, batch_gt_instances_3d, num_views, roi_scores:
                see :meth:`loss`.

        Returns:
            dict[str, Tensor]: ``l{i}.loss_cls_dn`` and ``l{i}.loss_bbox_dn``
            (:meth:`MV2DXrayCrossAttentionHead.denoising_loss`), already multiplied by
            ``stage_loss_weights`` and ``loss_weight``; zero for a batch without
            findings (computed all the same, so that every process of a distributed run
            joins the averaging of the positives' count).
        """
        out = self.decode_ray_points(feats, rois, batch_img_metas, batch_gt_instances_3d,
                                     num_views, roi_scores)
        if out is None:     # no query, but the same losses (and collectives) as with some
            layers, classes = self.bbox_head.num_layers, self.bbox_head.num_classes
            empty = feats[0].new_zeros((0, ))
            out = dict(all_cls_scores=empty.new_zeros((layers, 0, classes)),
                       all_codes=empty.new_zeros((layers, 0, self.bbox_head.code_size)),
                       labels=empty.new_zeros((0, ), dtype=torch.long),
                       gt_boxes=empty.new_zeros((0, 6)))
        return self.bbox_head.denoising_loss(out['all_cls_scores'], out['all_codes'],
                                             out['labels'], out['gt_boxes'],
                                             self.stage_loss_weights,
                                             self.ray_denoising_cfg['loss_weight'])

    def decode_ray_points(self, feats: Sequence[Tensor], rois: Tensor,
                          batch_img_metas: List[dict],
                          batch_gt_instances_3d: List[InstanceData], num_views: int,
                          roi_scores: Optional[Tensor] = None) -> Optional[Dict[str, Tensor]]:
        """Decode the ray-denoising queries of a batch (``train_cfg.rcnn.ray_denoising``,
        :mod:`.ray_denoising`): per scene, points at each finding's centre and along the
        rays of ``num_rays`` of its views (:func:`sample_ray_points`, torch's global
        random source), each decoded as a query whose reference point is the point
        itself and whose keys are boxes at its projection in every view of its scene
        that sees it, each the size of the finding's projected 3D box there
        (:meth:`boxes_at_projections`); with ``support_embedding``, their content is the
        support of the point by the scene's 2D detections, its own score the support in
        its ray's view. They self-attend within their scene, apart from the matched
        queries (a decoder pass of their own).

        Args:
            feats, rois, batch_img_metas, batch_gt_instances_3d, num_views, roi_scores:
                see :meth:`loss`.

        Returns:
            dict, optional: for the ``K`` points, ``all_cls_scores`` ``(L, K,
            num_classes)`` logits, ``all_codes`` ``(L, K, 6)``, ``labels`` ``(K,)``
            (the finding's class for the positives, ``num_classes`` along the rays),
            ``gt_boxes`` ``(K, 6)`` (their finding's gravity centre and extents, ct mm),
            ``points`` ``(K, 3)`` ct mm, ``scene_ids``, ``gt_index`` and
            ``source_view`` ``(K,)``; None when the batch holds no finding any view sees.
        """
        cfg = self.ray_denoising_cfg
        geo = self.gather_rois(rois, batch_img_metas, num_views)
        device = rois.device
        num_classes = self.bbox_head.num_classes
        points, scenes, labels, boxes, sources, sizes = [], [], [], [], [], []
        gt_indices = []
        for scene, gt in enumerate(batch_gt_instances_3d):
            if len(gt.bboxes_3d) == 0:
                continue
            gt_boxes = torch.cat([gt.bboxes_3d.gravity_center, gt.bboxes_3d.tensor[:, 3:7]],
                                 dim=-1).to(device=device, dtype=torch.float64)
            sample = sample_ray_points(gt_boxes, geo.views_lidar2img[scene],
                                       geo.img_shapes[scene], cfg['num_rays'],
                                       cfg['num_negatives'], cfg['offset_mm'],
                                       cfg['pos_noise_mm'])
            projected = project_boxes3d(geo.views_lidar2img[scene],
                                        gt_boxes)                   # (V, M, 4) px
            size = (projected[..., 2:] - projected[..., :2]).clamp(min=1.0)
            gt_labels = gt.labels_3d.to(device).long()
            points.append(sample.points)
            gt_indices.append(sample.gt_index)
            scenes.append(torch.full_like(sample.gt_index, scene))
            labels.append(torch.where(sample.positive, gt_labels[sample.gt_index],
                                      num_classes))
            boxes.append(gt_boxes[sample.gt_index, :6])
            sources.append(sample.source_view)
            sizes.append(size[:, sample.gt_index].transpose(0, 1))  # (K, V, 2)
        if not points or sum(len(p) for p in points) == 0:
            return None
        points, scenes = torch.cat(points), torch.cat(scenes)
        labels, boxes, sources = torch.cat(labels), torch.cat(boxes), torch.cat(sources)
        all_cls_scores, all_codes = self.decode_points(feats, points, scenes, sources,
                                                       torch.cat(sizes), rois, roi_scores,
                                                       batch_img_metas, geo)
        return dict(all_cls_scores=all_cls_scores, all_codes=all_codes, labels=labels,
                    gt_boxes=boxes.float(), points=points, scene_ids=scenes,
                    gt_index=torch.cat(gt_indices), source_view=sources)

    def decode_points(self, feats: Sequence[Tensor], points: Tensor, scene_ids: Tensor,
                      source_views: Tensor, key_sizes: Tensor, rois: Tensor,
                      roi_scores: Optional[Tensor], batch_img_metas: List[dict],
                      geo: RoIGeometry) -> Tuple[Tensor, Tensor]:
        """Decode queries placed at given points (the ray-denoising queries): each reads
        a box at its projection in every view of its scene that sees it and starts, with
        ``support_embedding``, from the support of its point by the scene's 2D
        detections, its own score the support in its source view.

        Args:
            feats (Sequence[Tensor]): see :meth:`forward`.
            points (Tensor): ``(K, 3)`` ct mm, the reference points.
            scene_ids (Tensor): ``(K,)``; the queries self-attend within their scene.
            source_views (Tensor): ``(K,)`` the view each point's own score is read in.
            key_sizes (Tensor): ``(K, V, 2)`` width and height (px) of each key box.
            rois, roi_scores, batch_img_metas: see :meth:`forward`.
            geo (RoIGeometry): the RoIs' geometry (:meth:`gather_rois`).

        Returns:
            tuple[Tensor, Tensor]: ``all_cls_scores`` ``(L, K, num_classes)`` logits and
            ``all_codes`` ``(L, K, 6)``.
        """
        device = points.device
        num_views = geo.num_views
        uv, seen = self.projections_in_views(points, scene_ids, geo)
        keys, slots = self.boxes_at_projections(uv, key_sizes, seen, scene_ids, num_views)
        if self.force_fp32:
            feats = [feat.float() for feat in feats]
        key_geo = self.gather_rois(keys, batch_img_metas, num_views)
        _, tokens, pos = self.encode_rois(feats, keys, key_geo)
        content = support = None
        if self.support_encoder is not None:
            per_view = self.per_view_support(points.float(), scene_ids, rois, roi_scores,
                                             geo)
            own = per_view[torch.arange(len(points), device=device), source_views]
            support = self.support_row(own, torch.ones_like(own, dtype=torch.bool),
                                       per_view, num_views)
            content = self.support_encoder(support)
        all_cls_scores, all_codes = self.decode(points.float(), scene_ids, tokens, pos,
                                                slots, seen, content)
        if self.support_logit is not None:
            all_cls_scores = all_cls_scores + self.support_logit(support)
        return all_cls_scores, all_codes

    def predict(self, feats: Sequence[Tensor], rois: Tensor,
                batch_img_metas: List[dict], num_views: int,
                roi_scores: Optional[Tensor] = None, explain: bool = False,
                roi_labels: Optional[Tensor] = None,
                objectness: Optional[Dict[int, ObjectnessMaps]] = None
                ) -> Union[List[InstanceData], Tuple[List[InstanceData], List[List[dict]]]]:
        """3D detections per scene, and optionally their evidence.

        Args:
            feats, rois, batch_img_metas, num_views, roi_scores: see
                :meth:`forward` (``R`` may be 0).
            explain (bool): Also return, per scene, one explanation per output box
                (:func:`explain_query`: its source detection, the detections it
                attended to and the cross-attention over them). The boxes, scores
                and labels are the same with and without. Defaults to False.
            roi_labels (Tensor, optional): ``(R,)`` the 2D classes of the RoIs, for
                ``test_cfg.view_support.per_class`` (:meth:`rescore`) and
                ``test_cfg.refine_to_detections`` (:meth:`refine_on_detections`).
            objectness (dict[int, ObjectnessMaps], optional): per FPN level of
                :attr:`objectness_levels`, ``maps`` ``(B * num_views, h, w)``, per view
                the 2D stage's objectness on that level (:meth:`MV2DXray.objectness_maps`),
                for :meth:`search_rays` and :meth:`rescore_by_objectness`.

        Returns:
            list[InstanceData]: per scene ``bboxes_3d`` (the meta's
            ``box_type_3d``, LiDAR boxes by default, yaw 0), ``scores_3d`` and
            ``labels_3d``; with ``explain``, the tuple ``(results, explanations)``,
            ``explanations[b][k]`` the dict of box ``k`` of scene ``b``.
        """
        num_scenes = len(batch_img_metas)
        if len(rois) == 0:
            preds, out = [None] * num_scenes, None
        else:
            out = self.forward(feats, rois, batch_img_metas, num_views,
                               roi_scores, explain=explain)
            preds = self.bbox_head.predict_by_feat(out['all_cls_scores'][-1],
                                                   out['all_codes'][-1],
                                                   out['scene_ids'], num_scenes)
        results, explanations = [], []
        for scene, (meta, pred) in enumerate(zip(batch_img_metas, preds)):
            if pred is None:
                pred = dict(bboxes=rois.new_zeros((0, 7)),
                            scores=rois.new_zeros((0, )),
                            labels=rois.new_zeros((0, ), dtype=torch.long),
                            query_ids=rois.new_zeros((0, ), dtype=torch.long))
            if rois.numel():
                mine = out['scene_ids'] == scene
                pred = self.limit_refinement(pred, out['query_priors'][mine],
                                             out['query_prior_ok'][mine])
                pred = self.refine_on_detections(pred, meta, rois, roi_scores, scene,
                                                 num_views, roi_labels)
                scene_maps = {level: maps._replace(maps=maps.maps[
                    scene * num_views:(scene + 1) * num_views])
                    for level, maps in (objectness or dict()).items()}
                pred = self.search_rays(pred, meta, rois[out['query_rois'][mine]], num_views,
                                        scene_maps)
                pred = self.rescore(pred, meta, rois, roi_scores, scene, num_views,
                                    roi_labels)
                pred = self.rescore_by_objectness(pred, meta, num_views, scene_maps)
            kept = self.select(pred)
            results.append(self.to_instances(kept, meta))
            if explain:
                explanations.append(self.explain_scene(out, scene,
                                                       pred['query_ids'][kept['index']]))
        return (results, explanations) if explain else results

    @staticmethod
    def explain_scene(out: Optional[dict], scene: int, query_ids: Tensor) -> List[dict]:
        """Explanations of one scene's output boxes.

        Args:
            out (dict, optional): :meth:`forward`'s output with ``evidence`` (None
                without RoIs).
            scene (int): The scene.
            query_ids (Tensor): ``(K,)`` the query of each output box, an index
                among the scene's queries.

        Returns:
            list[dict]: ``K`` dicts (:func:`explain_query`).
        """
        if out is None or len(query_ids) == 0:
            return []
        queries = (out['scene_ids'] == scene).nonzero(as_tuple=True)[0]
        return [explain_query(out['evidence'], int(queries[q]), int(q))
                for q in query_ids.tolist()]

    def limit_refinement(self, pred: Dict[str, Tensor], priors: Tensor,
                         prior_ok: Tensor) -> Dict[str, Tensor]:
        """``test_cfg.refine_radius_mm``: move each decoded centre whose query has a
        valid triangulated prior to within this distance of the prior, along the line
        between them (0: onto the prior); extents, scores and the other boxes
        unchanged. Without it, ``pred`` unchanged.

        The decoder's refinement can lose what triangulation found: on the blades
        benchmark's val defects the best query's prior lies within the hit radius
        more often than its decoded centre (README "The held-out benchmark").

        Args:
            pred (dict): one scene's ``bboxes`` ``(K, 7)`` (gravity centres, ct mm)
                and ``query_ids`` ``(K,)`` (indices into the scene's queries), with
                the other per-box keys.
            priors (Tensor): ``(Q, 3)`` the scene's queries' priors, ct mm.
            prior_ok (Tensor): ``(Q,)`` their validity.

        Returns:
            dict: ``pred`` with the moved centres in a new ``bboxes`` (the same order;
            a prior, and so a moved centre, may lie outside the coder's ``pc_range``).
        """
        radius = self.test_cfg.get('refine_radius_mm', None)
        if radius is None or len(pred['bboxes']) == 0:
            return pred
        prior = priors[pred['query_ids']].to(pred['bboxes'])           # (K, 3) ct mm
        offset = pred['bboxes'][:, :3] - prior
        scale = (float(radius) / offset.norm(dim=1).clamp(min=1e-12)).clamp(max=1.0)
        centre = torch.where(prior_ok[pred['query_ids']][:, None],
                             prior + offset * scale[:, None], pred['bboxes'][:, :3])
        out = dict(pred)
        out['bboxes'] = torch.cat([centre, pred['bboxes'][:, 3:]], dim=1)
        return out

    @staticmethod
    def check_lower_bounds(cfg: dict, lows: Dict[str, float], where: str) -> None:
        """Raise ``ValueError`` naming ``<where>.<key>`` for the first setting of ``cfg``
        below its bound in ``lows`` (unset and None settings pass; NaN fails)."""
        for key, low in lows.items():
            if cfg.get(key) is not None and not float(cfg[key]) >= low:
                raise ValueError(f'{where}.{key} must be >= {low:g}, got {cfg[key]}')

    @staticmethod
    def check_view_support(cfg: Optional[dict]) -> None:
        """``test_cfg.view_support`` at build time: ``weight`` in [0, 1]; ``gate_px`` and
        ``gate_frac`` >= 0; the grown-box rule (``margin_px``) and the gate rule
        (``gate_px``) are alternatives, so a config sets at most one of them;
        ``class_support`` needs ``per_class`` (its shape and weights:
        :meth:`class_support_matrix`). (The RPN's dense objectness is
        ``test_cfg.objectness_support``, a step of its own.)"""
        if cfg is None:
            return
        if not 0.0 <= float(cfg['weight']) <= 1.0:
            raise ValueError('test_cfg.view_support.weight must be in [0, 1], got '
                             f"{cfg['weight']}")
        MV2DXrayRoIHead.check_lower_bounds(cfg, dict(gate_px=0, gate_frac=0),
                                           'test_cfg.view_support')
        if 'objectness_level' in cfg:
            raise ValueError('test_cfg.view_support.objectness_level is now its own step: '
                             'test_cfg.objectness_support=dict(weight=w, levels=[level])')
        rules = [key for key in ('margin_px', 'gate_px') if cfg.get(key) is not None]
        if len(rules) > 1:
            raise ValueError('test_cfg.view_support: margin_px (grown boxes) and gate_px (the '
                             "triangulation baseline's gates) are two rules; set one, got "
                             f'{", ".join(rules)}')
        if cfg.get('gate_frac') is not None and cfg.get('gate_px') is None:
            raise ValueError('test_cfg.view_support.gate_frac needs gate_px (the gate rule)')
        if cfg.get('class_support') is not None and not cfg.get('per_class', False):
            raise ValueError('test_cfg.view_support.class_support weighs the detections of '
                             'each class per box class: it needs per_class=True')

    @staticmethod
    def class_support_matrix(cfg: dict, num_classes: int) -> Tensor:
        """``test_cfg.view_support.class_support`` as a ``(C, C)`` float64 tensor, row
        the 3D box's class and column the 2D detection's, each in [0, 1]: how much a
        detection of class ``c'`` supports a box of class ``c``; without it the identity
        (``per_class``: only a box's own class supports it). ``ValueError`` naming the
        setting for another shape or a weight outside [0, 1]."""
        matrix = cfg.get('class_support')
        if matrix is None:
            return torch.eye(num_classes, dtype=torch.float64)
        where = 'test_cfg.view_support.class_support'
        try:
            out = torch.as_tensor(matrix, dtype=torch.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'{where} must be a {num_classes} x {num_classes} list of lists '
                             f'of numbers, got {matrix!r}') from exc
        if tuple(out.shape) != (num_classes, num_classes):
            raise ValueError(f'{where} must be {num_classes} x {num_classes} (box class x '
                             f'detection class), got shape {tuple(out.shape)}')
        if not ((out >= 0) & (out <= 1)).all():
            raise ValueError(f'{where}: every weight must be in [0, 1], got {matrix!r}')
        return out

    @staticmethod
    def refine_settings(cfg: Optional[dict]) -> Optional[TriangulationConfig]:
        """``test_cfg.refine_to_detections`` (``gate_px`` >= 0, ``gate_frac`` >= 0,
        ``min_views`` >= 2; defaults those of :class:`TriangulationConfig`) as the
        baseline's settings, or None; ``max_move_mm`` (>= 0) is checked here and read
        by :meth:`refine_max_move`, the baseline has no such setting. Every RoI may
        support a box: the RoIs are already ``detection_proposal``'s (thresholded and
        capped), so the baseline's own ``score_thr`` and ``max_per_view`` are switched
        off."""
        if cfg is None:
            return None
        MV2DXrayRoIHead.check_lower_bounds(
            cfg, dict(gate_px=0, gate_frac=0, min_views=2, max_move_mm=0),
            'test_cfg.rcnn.refine_to_detections')
        settings = {key: type(getattr(TriangulationConfig, key))(value)
                    for key, value in cfg.items() if key != 'max_move_mm'}
        return TriangulationConfig(score_thr=-math.inf, max_per_view=sys.maxsize, **settings)

    @staticmethod
    def refine_max_move(cfg: Optional[dict]) -> Optional[float]:
        """``test_cfg.refine_to_detections.max_move_mm`` (mm; its bound is checked with
        the other settings in :meth:`refine_settings`): how far the re-triangulation may
        move a centre; None (unset) for no limit."""
        value = (cfg or dict()).get('max_move_mm', None)
        return None if value is None else float(value)

    @staticmethod
    def roi_scores_or_ones(rois: Tensor, roi_scores: Optional[Tensor]) -> Tensor:
        """``(R,)`` the 2D scores of the batch's RoIs (``(R, 5)``), all 1 when
        ``roi_scores`` is None (RoIs given without scores, e.g. the exact 2D boxes)."""
        return roi_scores if roi_scores is not None else rois.new_ones(len(rois))

    @staticmethod
    def scene_rois(rois: Tensor, roi_scores: Optional[Tensor], scene: int,
                   num_views: int) -> Tuple[Tensor, Tensor]:
        """``(R,)`` which of the batch's RoIs (``(R, 5)``, see :meth:`forward`) belong to
        ``scene``, and ``(R,)`` their 2D scores (:meth:`roi_scores_or_ones`)."""
        mine = (rois[:, 0].long() // num_views) == scene
        return mine, MV2DXrayRoIHead.roi_scores_or_ones(rois, roi_scores)

    def refine_on_detections(self, pred: Dict[str, Tensor], meta: dict, rois: Tensor,
                             roi_scores: Optional[Tensor], scene: int, num_views: int,
                             roi_labels: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """``test_cfg.refine_to_detections``: re-triangulate each decoded centre from the
        box centres of the scene's 2D detections of the box's class that support it (in
        every view the nearest one whose gate, ``max(gate_px, gate_frac * box side)`` px,
        holds the centre's projection; at least ``min_views`` views), as the
        triangulation baseline refines its findings (:func:`refine_to_detections`).
        Boxes with too little support stay; extents, scores and labels are not changed
        here (``view_support`` then scores the moved centres). With ``max_move_mm``, a
        box whose re-triangulated centre lies farther than that from its centre stays
        too, unconfirmed (so ``objectness_support.search_depths`` searches its ray):
        on the blades val, for the defects 3+ views detect, the re-triangulation of the
        box of the right class could land 1.2-2.9 mm off while the query's prior lay
        within the hit radius, probably by taking in some view the nearest detection of
        a neighbouring defect (README blades *Results*, ablation `maxmove`). Without
        it, ``pred`` unchanged. Settings: :meth:`refine_settings`,
        :meth:`refine_max_move`.

        A query's prior is triangulated from its own relevant detections only, with the
        robust weights of ``prior_outlier_mm``; the box centres of every supporting view
        fix it more precisely (README "The held-out benchmark": on the blades val, MV2D's
        top-ranked false positives were near-misses at 1-1.8 hit radii). Per class: taking
        the nearest detection of any class lowered the blades val CPM there.

        Args:
            pred (dict): one scene's ``bboxes`` ``(K, 7)`` (gravity centres, ct mm),
                ``labels`` ``(K,)`` and the other per-box keys.
            meta (dict): the scene's ``lidar2img`` ``(num_views, 4, 4)``.
            rois (Tensor): ``(R, 5)`` the batch's RoIs (see :meth:`forward`).
            roi_scores (Tensor, optional): ``(R,)`` their 2D scores (None: all 1).
            scene (int): which scene of the batch ``pred`` is.
            num_views (int): Views per scene.
            roi_labels (Tensor): ``(R,)`` the RoIs' 2D classes (required with the
                setting).

        Returns:
            dict: ``pred`` with new ``bboxes``, in the same order, and ``confirmed``
            ``(K,)``: whether the box had ``min_views`` supporting views and moved
            (without the setting or without boxes, ``pred`` as given, without it).
        """
        if self.refine_cfg is None or len(pred['bboxes']) == 0:
            return pred
        if roi_labels is None:
            raise ValueError("test_cfg.refine_to_detections needs the RoIs' 2D labels "
                             '(roi_labels)')
        mine, scores = self.scene_rois(rois, roi_scores, scene, num_views)
        bboxes = pred['bboxes']
        centres = bboxes[:, :3].detach().double().cpu().numpy()
        refined = refine_to_detections(
            np.asarray(meta['lidar2img'], np.float64),
            rois[mine, 1:].detach().double().cpu().numpy(),
            scores[mine].detach().double().cpu().numpy(), roi_labels[mine].cpu().numpy(),
            (rois[mine, 0].long() % num_views).cpu().numpy(),
            centres, pred['labels'].cpu().numpy(), self.refine_cfg)
        points, num_views = refined['points'], refined['num_views']
        if self.refine_max_move_mm is not None:
            too_far = np.linalg.norm(points - centres, axis=1) > self.refine_max_move_mm
            points = np.where(too_far[:, None], centres, points)
            num_views = np.where(too_far, 0, num_views)
        out = dict(pred)
        out['bboxes'] = torch.cat([torch.as_tensor(points).to(bboxes), bboxes[:, 3:]], dim=1)
        out['confirmed'] = torch.as_tensor(num_views > 0, device=bboxes.device)
        return out

    def rescore(self, pred: Dict[str, Tensor], meta: dict, rois: Tensor,
                roi_scores: Optional[Tensor], scene: int,
                num_views: int, roi_labels: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """``test_cfg.view_support``: weigh one scene's decoded scores with their
        support by the scene's 2D detections (:func:`view_support`: by the grown boxes,
        ``margin_px``, or by the triangulation baseline's gates, ``gate_px`` /
        ``gate_frac``); with ``per_class``, a box of class ``c`` is supported only by
        detections of class ``c`` (as the triangulation baseline associates per class),
        and with ``per_class`` and ``class_support`` (``(C, C)`` in [0, 1], row the box's
        class, column the detection's) a view's support of a box of class ``c`` is the
        largest ``class_support[c][c'] * s`` over the view's supporting detection of each
        class ``c'`` (score ``s``): where the 2D stage confuses two classes, a detection of
        one still supports the other, at a lower weight (:meth:`class_support_matrix`).
        The boxes come back re-sorted by the new scores. Without it, ``pred`` unchanged.

        Args:
            pred (dict): ``bboxes`` ``(K, 7)`` (gravity centres, ct mm), ``scores``
                and the other per-box keys, by decreasing score.
            meta (dict): the scene's ``lidar2img`` ``(num_views, 4, 4)``.
            rois (Tensor): ``(R, 5)`` the batch's RoIs (see :meth:`forward`).
            roi_scores (Tensor, optional): ``(R,)`` their 2D scores (None: all 1).
            scene (int): which scene of the batch ``pred`` is.
            num_views (int): Views per scene.
            roi_labels (Tensor, optional): ``(R,)`` the RoIs' 2D classes; needed by
                ``per_class``.
        """
        cfg = self.test_cfg.get('view_support', None)
        if cfg is None or len(pred['scores']) == 0:
            return pred
        weight = float(cfg['weight'])                # in [0, 1]: checked in __init__
        lidar2img = self.scene_lidar2img(meta, rois.device)
        mine, roi_scores = self.scene_rois(rois, roi_scores, scene, num_views)
        per_class = bool(cfg.get('per_class', False))
        if per_class and roi_labels is None:
            raise ValueError("test_cfg.view_support.per_class needs the RoIs' 2D labels "
                             '(roi_labels)')
        rule = (float(cfg.get('margin_px') or 0.0),
                None if cfg.get('gate_px') is None else float(cfg['gate_px']),
                float(cfg.get('gate_frac') or 0.0))
        if not per_class:
            support = view_support(pred['bboxes'][:, :3], lidar2img, rois[mine, 1:],
                                   roi_scores[mine], rois[mine, 0].long() % num_views, *rule)
            return self.weigh_scores(pred, support.to(pred['scores']), weight)
        support = pred['scores'].new_zeros(len(pred['scores']))
        for label in pred['labels'].unique().tolist():
            if not 0 <= label < len(self.class_support):
                raise ValueError(f'test_cfg.view_support.per_class: box label {label} is not '
                                 f'a class of the head (0 .. {len(self.class_support) - 1})')
            boxes = pred['labels'] == label
            per_view = support.new_zeros((int(boxes.sum()), num_views))
            sources = [(source, w) for source, w in enumerate(self.class_support[label])
                       if w > 0]
            for source, source_weight in sources:
                supporters = mine & (roi_labels == source)
                scores = view_support_scores(
                    pred['bboxes'][boxes, :3], lidar2img, rois[supporters, 1:],
                    roi_scores[supporters], rois[supporters, 0].long() % num_views, *rule)
                per_view = torch.maximum(per_view, source_weight * scores.to(per_view))
            support[boxes] = per_view.mean(dim=1)
        return self.weigh_scores(pred, support, weight)

    @staticmethod
    def scene_lidar2img(meta: dict, device: torch.device) -> Tensor:
        """``(num_views, 4, 4)`` float64 ct -> img matrices of one scene's meta, on
        ``device`` (the rescoring steps project in float64 whatever the boxes' dtype)."""
        return torch.as_tensor(np.asarray(meta['lidar2img'], dtype=np.float64), device=device)

    @staticmethod
    def scene_objectness(objectness: Optional[Dict[int, ObjectnessMaps]],
                         levels: Sequence[int], num_views: int) -> List[ObjectnessMaps]:
        """The scene's objectness maps on ``levels`` (``test_cfg.objectness_support``'s),
        each checked to hold one map per view; ``ValueError`` when a level is missing."""
        out = []
        for level in levels:
            maps = (objectness or dict()).get(level)
            if maps is None:
                raise ValueError("test_cfg.objectness_support needs the 2D stage's "
                                 f'objectness maps on level {level} (objectness)')
            if len(maps.maps) != num_views:
                raise ValueError(f'objectness: {len(maps.maps)} maps for a scene of '
                                 f'{num_views} views')
            out.append(maps)
        return out

    def rescore_by_objectness(self, pred: Dict[str, Tensor], meta: dict, num_views: int,
                              objectness: Optional[Dict[int, ObjectnessMaps]] = None
                              ) -> Dict[str, Tensor]:
        """``test_cfg.objectness_support=dict(weight=w, levels=[...])``, after
        :meth:`rescore`: weigh one scene's scores with the 2D stage's dense objectness
        read in every view at the box's projection, on the listed RPN level whose
        anchors best fit the box's projected size
        (:func:`objectness_support_by_size`): ``score ** (1 - w) * support ** w``, the
        boxes re-sorted. It adds the evidence of the views where no 2D detection
        confirms the box -- those the triangulation baseline and ``view_support``'s
        detection rules count as 0. Without it, ``pred`` unchanged.

        Args:
            pred (dict): ``bboxes`` ``(K, 7)`` (gravity centres, ct mm), ``scores`` and
                the other per-box keys.
            meta (dict): the scene's ``lidar2img`` ``(num_views, 4, 4)`` and
                ``img_shape``.
            num_views (int): Views per scene.
            objectness (dict[int, ObjectnessMaps], optional): the scene's maps
                ``(num_views, h, w)`` per FPN level.
        """
        cfg = self.test_cfg.get('objectness_support', None)
        if cfg is None or len(pred['scores']) == 0:
            return pred
        maps = self.scene_objectness(objectness, cfg['levels'], num_views)
        lidar2img = self.scene_lidar2img(meta, pred['bboxes'].device)
        support = objectness_support_by_size(pred['bboxes'].double(), lidar2img, maps,
                                             tuple(meta['img_shape']))
        return self.weigh_scores(pred, support.to(pred['scores']), float(cfg['weight']))

    def search_rays(self, pred: Dict[str, Tensor], meta: dict, query_rois: Tensor,
                    num_views: int, objectness: Optional[Dict[int, ObjectnessMaps]] = None
                    ) -> Dict[str, Tensor]:
        """``test_cfg.objectness_support.search_depths=N``, after
        ``refine_to_detections`` and before the rescoring steps: each box that
        :meth:`refine_on_detections` could not re-triangulate (fewer than ``min_views``
        views' detections support it: ``pred['confirmed']`` False) -- a finding detected
        in one view, which triangulation cannot place -- is moved
        along the ray through its source detection's box centre to the depth where the
        objectness of every view (:func:`objectness_support_by_size` on the configured
        levels, the box's extents kept) is highest, among ``N`` depths evenly spread
        over ``box_correlation.depth_range`` (cam mm of the source view). A nodule
        detected in one view is then placed where the other views' sub-threshold
        evidence agrees. A box whose ray is flat (no depth scores higher than
        another) stays. The other boxes, scores and labels are not changed.
        Without the setting, ``pred`` unchanged.

        Args:
            pred (dict): one scene's ``bboxes`` ``(K, 7)`` (gravity centres, ct mm),
                ``query_ids`` ``(K,)`` (indices into the scene's queries) and
                ``confirmed`` ``(K,)`` (:meth:`refine_on_detections`), with the other
                per-box keys.
            meta (dict): the scene's ``lidar2img`` ``(num_views, 4, 4)`` and
                ``img_shape``.
            query_rois (Tensor): ``(Q, 5)`` the RoI of each of the scene's queries
                (``[img_index, x1, y1, x2, y2]``, ``img_index = scene * num_views +
                view``, img px).
            num_views (int): Views per scene.
            objectness (dict[int, ObjectnessMaps], optional): the scene's maps
                ``(num_views, h, w)`` per FPN level.

        Returns:
            dict: ``pred`` with the moved centres in a new ``bboxes`` (the same order).
        """
        cfg = self.test_cfg.get('objectness_support', None) or dict()
        num_depths = cfg.get('search_depths')
        if num_depths is None or len(pred['bboxes']) == 0:
            return pred
        if 'confirmed' not in pred:
            raise ValueError('test_cfg.objectness_support.search_depths needs the boxes\' '
                             "'confirmed' flags of refine_to_detections")
        lonely = ~pred['confirmed']
        if not lonely.any():
            return pred
        maps = self.scene_objectness(objectness, cfg['levels'], num_views)
        bboxes = pred['bboxes']
        lidar2img = self.scene_lidar2img(meta, bboxes.device)
        source = query_rois[pred['query_ids'][lonely]].double()          # (M, 5)
        views = source[:, 0].long() % num_views
        uv = (source[:, 1:3] + source[:, 3:5]) / 2                        # (M, 2) img px
        near, far = self.box_correlation.depth_range
        depths = torch.linspace(near, far, int(num_depths), dtype=torch.float64,
                                device=bboxes.device)
        points = unproject_points(lidar2img[views], uv[:, None].expand(-1, len(depths), -1),
                                  depths.expand(len(views), -1))          # (M, N, 3) ct mm
        extents = bboxes[lonely, 3:].double()[:, None].expand(-1, len(depths), -1)
        candidates = torch.cat([points, extents], dim=-1).flatten(0, 1)   # (M N, 7)
        support = objectness_support_by_size(candidates, lidar2img, maps,
                                             tuple(meta['img_shape'])).view(len(views), -1)
        best_support, best = support.max(dim=1)
        # a ray along which the objectness is flat (an empty or constant map) leaves the
        # box where it is, rather than at the first depth searched
        move = best_support > support.min(dim=1).values
        centre = bboxes[:, :3].clone()
        chosen = points[torch.arange(len(views), device=points.device), best]   # (M, 3)
        centre[lonely] = torch.where(move[:, None], chosen, bboxes[lonely, :3].double()).to(
            bboxes)
        out = dict(pred)
        out['bboxes'] = torch.cat([centre, bboxes[:, 3:]], dim=1)
        return out

    @staticmethod
    def check_objectness_support(cfg: Optional[dict]) -> None:
        """``test_cfg.objectness_support`` at build time: ``weight`` in [0, 1],
        ``levels`` a non-empty list of distinct FPN level indices >= 0 (whether the RPN
        has them: :meth:`MV2DXray.check_objectness_levels`) and ``search_depths`` None
        or an int >= 2."""
        if cfg is None:
            return
        if not 0.0 <= float(cfg.get('weight', -1)) <= 1.0:
            raise ValueError('test_cfg.objectness_support.weight must be in [0, 1], got '
                             f"{cfg.get('weight')}")
        levels = cfg.get('levels')
        if (not isinstance(levels, (list, tuple)) or not levels
                or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in levels)
                or len(set(levels)) != len(levels)):
            raise ValueError('test_cfg.objectness_support.levels must be a non-empty list of '
                             f'distinct FPN level indices >= 0, got {levels!r}')
        depths = cfg.get('search_depths')
        if depths is not None and (isinstance(depths, bool) or not isinstance(depths, int)
                                   or depths < 2):
            raise ValueError('test_cfg.objectness_support.search_depths must be an int >= 2 '
                             f'(depths searched along a ray), got {depths!r}')

    @staticmethod
    def weigh_scores(pred: Dict[str, Tensor], support: Tensor,
                     weight: float) -> Dict[str, Tensor]:
        """``score ** (1 - weight) * support ** weight`` for each box of ``pred``
        (``support`` ``(K,)`` in [0, 1]), the boxes re-sorted by it (stable)."""
        scores = pred['scores'].clamp(min=0) ** (1 - weight) * support ** weight
        order = scores.argsort(descending=True, stable=True)
        out = {key: value[order] for key, value in pred.items()}
        out['scores'] = scores[order]
        return out

    def select(self, pred: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The ``test_cfg`` steps on one scene's decoded boxes: ``score_thr``, then
        ``nms`` (:func:`centre_distance_nms`), then the best ``max_per_scene``.

        Args:
            pred (dict): ``bboxes`` ``(K, 7)`` (gravity centres and extents, ct mm),
                ``scores`` and ``labels`` ``(K,)``, by decreasing score (as
                :meth:`MV2DXrayNMSFreeCoder.decode` gives them; other keys are
                ignored).

        Returns:
            dict: the kept ``bboxes`` ``(K', 7)``, ``scores``, ``labels`` and
            ``index`` ``(K',)`` (their rows in ``pred``), by decreasing score.
        """
        cfg = self.test_cfg
        index = (pred['scores'] > cfg.get('score_thr', 0.0)).nonzero(as_tuple=True)[0]
        kept = {key: pred[key][index] for key in ('bboxes', 'scores', 'labels')}
        nms = cfg.get('nms', None)
        if nms is not None:
            nms = dict(nms)
            nms_type = nms.pop('type', 'centre_distance')
            if nms_type != 'centre_distance':
                raise ValueError(f"test_cfg.nms.type must be 'centre_distance', "
                                 f'got {nms_type!r}')
            kept = centre_distance_nms(kept['bboxes'], kept['scores'],
                                       kept['labels'], **nms)
            index = index[kept.pop('keep')]
        max_num = cfg.get('max_per_scene', 300)
        kept = {key: value[:max_num] for key, value in kept.items()}
        kept['index'] = index[:max_num]
        return kept

    @staticmethod
    def to_instances(pred: Dict[str, Tensor], meta: dict) -> InstanceData:
        """One scene's kept boxes (``bboxes`` ``(K, 7)`` ct mm, ``scores``,
        ``labels``) as ``InstanceData`` with ``bboxes_3d`` of the meta's
        ``box_type_3d`` (LiDAR boxes by default), ``scores_3d``, ``labels_3d``."""
        box_type = meta.get('box_type_3d', LiDARInstance3DBoxes)
        if isinstance(box_type, str):
            box_type = get_box_type(box_type)[0]
        result = InstanceData()
        result.bboxes_3d = box_type(pred['bboxes'], box_dim=7, with_yaw=False,
                                    origin=(0.5, 0.5, 0.5))
        result.scores_3d = pred['scores']
        result.labels_3d = pred['labels']
        return result

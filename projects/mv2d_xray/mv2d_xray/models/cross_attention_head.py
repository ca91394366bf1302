"""MV2D's 3D box head: query embedding, sparse-attention decoder, per-layer branches,
Hungarian-matched focal + L1 losses and NMS-free decoding.

Box parameterisation (see :class:`MV2DXrayNMSFreeCoder`): 6-d codes, centre normalised
to ``pc_range`` and refined PETR-style around the query's reference point
(``sigmoid(delta + inverse_sigmoid(ref))``), sizes as log-mm. Each layer refines the
same (generator's) reference point, as in MV2D.

Scale of the L1 terms: with centres in ``pc_range`` units (500 mm for +-250 mm), a
5 mm error -- a nodule radius, what the FROC criterion tolerates -- is only 0.01, while
a 10 % size error is ~0.1. ``code_weights = (10, 10, 10, 1, 1, 1)`` makes one weighted
centre unit 50 mm, so a radius-sized miss costs as much as a 10 % size error; both the
L1 loss and the L1 matching cost use the weighted codes. (Raw mm, as the earlier X-ray
port used, weighs a centre error 50x more than this and swamps the size and
classification terms.)
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmdet3d.registry import MODELS, TASK_UTILS
from mmdet.models.layers.transformer import inverse_sigmoid
from mmdet.utils import reduce_mean
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import bias_init_with_prob
from mmengine.structures import InstanceData
from torch import Tensor, nn

from projects.mv2d_xray.mv2d_xray.models.positional_encoding import pos2posemb3d

#: Where ``max_match_dist_mm`` measures a query from (:class:`MV2DXrayCrossAttentionHead`).
MATCH_DIST_FROM = ('prediction', 'prior')


@MODELS.register_module()
class MV2DXrayCrossAttentionHead(BaseModule):
    """Decoder and prediction branches for the queries of a batch of scenes.

    Args:
        num_classes (int): Defaults to 1 (nodule).
        embed_dims (int): Defaults to 256.
        num_reg_fcs (int): Hidden fc layers of each branch. Defaults to 2.
        transformer (dict): :class:`MV2DXrayTransformer` config.
        bbox_coder (dict): :class:`MV2DXrayNMSFreeCoder` config (holds
            ``pc_range``).
        code_weights (Sequence[float]): Per-code-dimension weights of the L1 loss
            and matching cost. Defaults to ``(10, 10, 10, 1, 1, 1)`` (see module
            docstring).
        size_prior_mm (float): Initial predicted extent (bias of the log-size
            outputs). Defaults to 10.
        loss_cls (dict): Defaults to sigmoid focal loss, alpha 0.25, gamma 2,
            weight 2.0.
        loss_bbox (dict): Defaults to L1, weight 0.25.
        train_cfg (dict, optional): ``assigner`` config (a Hungarian assigner whose
            costs mirror the losses) and ``extra_pos_radius`` (float, optional):
            after the Hungarian matching, an unmatched query whose predicted centre
            lies within ``extra_pos_radius`` x a finding's radius (half its largest
            extent) of the finding's centre is a positive of that finding too (see
            :meth:`get_targets_single`). Defaults to None (one-to-one only, as
            MV2D). And ``max_match_dist_mm`` (float, optional): a Hungarian pair whose
            query lies further than this from its finding's centre is not a positive
            (the query is background); None (the default) keeps every pair, as DETR.
            Where the query lies is ``match_dist_from``: ``'prediction'`` (the
            default) its predicted centre, ``'prior'`` its triangulated prior (the
            ``query_priors`` given to :meth:`loss_by_feat`; its predicted centre where
            it has no valid prior).
        init_cfg (dict, optional): Defaults to None.
    """

    def __init__(self,
                 num_classes: int = 1,
                 embed_dims: int = 256,
                 num_reg_fcs: int = 2,
                 transformer: dict = dict(type='MV2DXrayTransformer'),
                 bbox_coder: dict = dict(
                     type='MV2DXrayNMSFreeCoder',
                     pc_range=(-250., -250., -250., 250., 250., 250.)),
                 code_weights: Sequence[float] = (10., 10., 10., 1., 1., 1.),
                 size_prior_mm: float = 10.0,
                 loss_cls: dict = dict(
                     type='mmdet.FocalLoss', use_sigmoid=True, gamma=2.0,
                     alpha=0.25, loss_weight=2.0),
                 loss_bbox: dict = dict(type='mmdet.L1Loss', loss_weight=0.25),
                 train_cfg: Optional[dict] = None,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.bbox_coder = TASK_UTILS.build(bbox_coder)
        self.code_size = self.bbox_coder.code_size
        if len(code_weights) != self.code_size:
            raise ValueError(f'code_weights needs {self.code_size} values, got '
                             f'{len(code_weights)}')
        self.register_buffer(
            'code_weights', torch.tensor(code_weights, dtype=torch.float32),
            persistent=False)
        self.size_prior_mm = size_prior_mm
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)
        if not getattr(self.loss_cls, 'use_sigmoid', False):
            raise ValueError('MV2DXrayCrossAttentionHead needs a sigmoid '
                             'classification loss (e.g. mmdet.FocalLoss)')
        self.train_cfg = train_cfg
        self.assigner = None
        if train_cfg is not None and 'assigner' in train_cfg:
            self.assigner = TASK_UTILS.build(train_cfg['assigner'])
        self.extra_pos_radius = (train_cfg or dict()).get('extra_pos_radius', None)
        self.max_match_dist_mm = (train_cfg or dict()).get('max_match_dist_mm', None)
        if self.max_match_dist_mm is not None and not self.max_match_dist_mm > 0:
            raise ValueError('model.train_cfg.rcnn.max_match_dist_mm must be None or > 0, '
                             f'got {self.max_match_dist_mm}')
        self.match_dist_from = (train_cfg or dict()).get('match_dist_from', 'prediction')
        if self.match_dist_from not in MATCH_DIST_FROM:
            raise ValueError('model.train_cfg.rcnn.match_dist_from must be one of '
                             f'{MATCH_DIST_FROM}, got {self.match_dist_from!r}')

        self.transformer = MODELS.build(transformer)
        if self.transformer.embed_dims != embed_dims:
            raise ValueError('transformer.embed_dims must equal embed_dims')
        self.num_layers = self.transformer.num_layers
        self.query_embedding = nn.Sequential(
            nn.Linear(embed_dims * 3 // 2, embed_dims), nn.ReLU(inplace=True),
            nn.Linear(embed_dims, embed_dims))
        self.cls_branches = ModuleList()
        self.reg_branches = ModuleList()
        for _ in range(self.num_layers):
            cls_layers, reg_layers = [], []
            for _ in range(num_reg_fcs):
                cls_layers += [
                    nn.Linear(embed_dims, embed_dims),
                    nn.LayerNorm(embed_dims),
                    nn.ReLU(inplace=True)
                ]
                reg_layers += [
                    nn.Linear(embed_dims, embed_dims),
                    nn.ReLU(inplace=True)
                ]
            cls_layers.append(nn.Linear(embed_dims, num_classes))
            reg_layers.append(nn.Linear(embed_dims, self.code_size))
            self.cls_branches.append(nn.Sequential(*cls_layers))
            self.reg_branches.append(nn.Sequential(*reg_layers))

    def init_weights(self) -> None:
        """DETR init for the transformer, focal prior 0.01 for the classifiers; the
        last regression layers start at zero (as Deformable DETR's box refinement)
        with the size bias at ``log(size_prior_mm)``, so untrained queries predict
        their reference points and a plausible size."""
        super().init_weights()  # includes the transformer's DETR init
        cls_bias = bias_init_with_prob(0.01)
        for branch in self.cls_branches:
            nn.init.constant_(branch[-1].bias, cls_bias)
        for branch in self.reg_branches:
            nn.init.zeros_(branch[-1].weight)
            nn.init.zeros_(branch[-1].bias)
            with torch.no_grad():
                branch[-1].bias[3:6] = math.log(self.size_prior_mm)

    # -- forward -------------------------------------------------------------------------
    def record_cross_attention(self):
        """The decoder's cross-attention weights while active (a context manager
        yielding a list of ``(Q, L)`` per layer, see
        :meth:`MV2DXrayTransformer.record_cross_attention`); outputs unchanged."""
        return self.transformer.record_cross_attention()

    def forward(self, ref_points: Tensor, scene_ids: Tensor, key: Tensor,
                key_pos: Tensor, key_padding_mask: Tensor,
                content: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Decode the queries of a batch.

        Args:
            ref_points (Tensor): ``(Q, 3)`` reference points normalised to
                ``pc_range`` (``[0, 1]``).
            scene_ids (Tensor): ``(Q,)`` scene of each query; queries attend only
                to queries of the same scene.
            key (Tensor): ``(Q, L, C)`` RoI tokens of each query's relevant
                detections.
            key_pos (Tensor): ``(Q, L, C)`` their 3D position encodings.
            key_padding_mask (Tensor): ``(Q, L)``, True = padding.
            content (Tensor, optional): ``(Q, C)`` the queries' initial features;
                None: zero (MV2D).

        Returns:
            tuple[Tensor, Tensor]: ``all_cls_scores`` ``(num_layers, Q,
            num_classes)`` logits and ``all_codes`` ``(num_layers, Q, 6)`` box codes.
        """
        query_pos = self.query_embedding(
            pos2posemb3d(ref_points, num_feats=self.embed_dims // 2))
        self_attn_mask = scene_ids[:, None] != scene_ids[None, :]
        outs = self.transformer(query_pos, key, key_pos, key_padding_mask,
                                self_attn_mask, content)
        outs = torch.nan_to_num(outs)
        reference = inverse_sigmoid(ref_points.clamp(0, 1))
        all_cls, all_codes = [], []
        for layer in range(self.num_layers):
            all_cls.append(self.cls_branches[layer](outs[layer]))
            delta = self.reg_branches[layer](outs[layer])
            centre = (delta[:, :3] + reference).sigmoid()
            all_codes.append(torch.cat([centre, delta[:, 3:]], dim=-1))
        return torch.stack(all_cls), torch.stack(all_codes)

    # -- loss ----------------------------------------------------------------------------
    def get_targets_single(self, cls_scores: Tensor, codes: Tensor,
                           gt_codes: Tensor, gt_labels: Tensor,
                           query_priors: Optional[Tensor] = None) -> Tuple:
        """Targets of one scene and one layer.

        Args:
            cls_scores (Tensor): ``(Q, num_classes)`` logits.
            codes (Tensor): ``(Q, 6)`` predicted codes.
            gt_codes (Tensor): ``(M, 6)`` GT codes.
            gt_labels (Tensor): ``(M,)``.
            query_priors (Tensor, optional): ``(Q, 3)`` the queries' triangulated
                priors, ct mm, NaN where a query has none; read only with
                ``max_match_dist_mm`` and ``match_dist_from='prior'``. Defaults to None
                (the predicted centres).

        Returns:
            tuple: ``labels`` ``(Q,)`` (``num_classes`` = background),
            ``bbox_targets`` ``(Q, 6)``, ``bbox_weights`` ``(Q, 6)`` and the number
            of positives.

        With ``extra_pos_radius``, queries the matching left unmatched but whose
        centre already lies on a finding (the evaluation's hit criterion, for
        ``extra_pos_radius = 1``) become positives of the nearest such finding.
        Several views of one finding can leave several queries on it; one-to-one
        matching would teach the classifier to reject all but one of these
        near-identical queries, which it cannot tell apart (measured on the demo
        with the 3D stage trained on fixed 2D features: CPM 0.00 on the val split
        after 600 iterations one-to-one, 0.39 with this rule). Test-time
        centre-distance NMS removes the duplicates instead.

        With ``max_match_dist_mm``, a Hungarian pair further apart than that is
        dropped first. One-to-one matching pairs every finding with some query; DETR's
        queries can move anywhere, but ours sit on the 2D stage's detections, and where
        the 2D stage missed a finding in every view its pair is a false positive tens of
        mm away that the classifier would be taught to score as the finding and the
        regression to move there. Measured from the predicted centres, the gate can
        close on every pair once the centres drift (then nothing trains them back: the
        blades' ``cls2-far5`` ablation); from the queries' priors (``match_dist_from=
        'prior'``) it does not depend on the 3D head's predictions, except for queries
        without a valid prior (their predicted centres). The ``extra_pos_radius`` step
        comes after the gate and measures from the predicted centres, so a dropped
        pair's query whose predicted centre lies on its finding is a positive again.
        """
        weights = self.code_weights.to(codes)
        assign_result = self.assigner.assign(
            InstanceData(scores=cls_scores.detach(),
                         bboxes=codes.detach() * weights),
            InstanceData(labels=gt_labels, bboxes=gt_codes * weights))
        # every query is a sample (DETR): read the assignment directly instead of
        # going through a PseudoSampler, which assumes 4-d boxes for empty GT
        gt_inds = assign_result.gt_inds.clone()
        if len(gt_codes) and (self.extra_pos_radius is not None or
                              self.max_match_dist_mm is not None):
            centres = self.bbox_coder.denormalize_points(codes.detach()[:, :3])
            gt_centres = self.bbox_coder.denormalize_points(gt_codes[:, :3].to(codes))
            dist = (centres[:, None] - gt_centres[None]).norm(dim=-1)  # (Q, M) mm
        if self.max_match_dist_mm is not None and len(gt_codes):
            gate_dist = dist
            if self.match_dist_from == 'prior' and query_priors is not None:
                prior_dist = (query_priors.to(gt_centres)[:, None] -
                              gt_centres[None]).norm(dim=-1)           # (Q, M) mm
                gate_dist = torch.where(prior_dist.isnan(), dist, prior_dist)
            paired = (gt_inds > 0).nonzero(as_tuple=True)[0]
            far = gate_dist[paired, gt_inds[paired] - 1] > self.max_match_dist_mm
            gt_inds[paired[far]] = 0
        if self.extra_pos_radius is not None and len(gt_codes):
            radius = gt_codes[:, 3:6].to(codes).exp().amax(dim=1) / 2
            dist = dist.masked_fill(dist > self.extra_pos_radius * radius, math.inf)
            best, nearest = dist.min(dim=1)
            extra = (gt_inds == 0) & torch.isfinite(best)
            gt_inds[extra] = nearest[extra] + 1
        pos = (gt_inds > 0).nonzero(as_tuple=True)[0]
        matched = gt_inds[pos] - 1
        labels = gt_labels.new_full((len(codes), ), self.num_classes)
        labels[pos] = gt_labels[matched]
        bbox_targets = torch.zeros_like(codes)
        bbox_weights = torch.zeros_like(codes)
        bbox_targets[pos] = gt_codes[matched].to(codes)
        bbox_weights[pos] = weights
        return labels, bbox_targets, bbox_weights, len(pos)

    def loss_single(self, cls_scores: Tensor, codes: Tensor, scene_ids: Tensor,
                    gt_codes: List[Tensor], gt_labels: List[Tensor],
                    query_priors: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Focal and L1 losses of one decoder layer over the batch.

        Args:
            cls_scores (Tensor): ``(Q, num_classes)`` logits.
            codes (Tensor): ``(Q, 6)``.
            scene_ids (Tensor): ``(Q,)``.
            gt_codes (list[Tensor]): per scene ``(M_b, 6)``.
            gt_labels (list[Tensor]): per scene ``(M_b,)``.
            query_priors (Tensor, optional): ``(Q, 3)`` ct mm, NaN where none
                (:meth:`get_targets_single`). Defaults to None.
        """
        labels = scene_ids.new_full((len(codes), ), self.num_classes)
        bbox_targets = torch.zeros_like(codes)
        bbox_weights = torch.zeros_like(codes)
        num_pos = 0
        for scene, (scene_codes, scene_labels) in enumerate(
                zip(gt_codes, gt_labels)):
            index = (scene_ids == scene).nonzero(as_tuple=True)[0]
            if len(index) == 0:
                continue
            targets = self.get_targets_single(
                cls_scores[index], codes[index], scene_codes, scene_labels,
                None if query_priors is None else query_priors[index])
            labels[index] = targets[0]
            bbox_targets[index] = targets[1]
            bbox_weights[index] = targets[2]
            num_pos += targets[3]
        # positives averaged over GPUs, as DETR/PETR (a no-op without distributed)
        avg_factor = reduce_mean(codes.new_tensor(float(num_pos))).clamp(
            min=1).item()
        loss_cls = self.loss_cls(cls_scores, labels, avg_factor=avg_factor)
        finite = torch.isfinite(bbox_targets).all(dim=-1)
        loss_bbox = self.loss_bbox(codes[finite], bbox_targets[finite],
                                   bbox_weights[finite], avg_factor=avg_factor)
        return torch.nan_to_num(loss_cls), torch.nan_to_num(loss_bbox)

    def loss_by_feat(self, all_cls_scores: Tensor, all_codes: Tensor,
                     scene_ids: Tensor,
                     batch_gt_instances_3d: List[InstanceData],
                     stage_loss_weights: Sequence[float],
                     query_priors: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Losses of every decoder layer, each with its own Hungarian matching.

        Args:
            all_cls_scores (Tensor): ``(num_layers, Q, num_classes)``.
            all_codes (Tensor): ``(num_layers, Q, 6)``.
            scene_ids (Tensor): ``(Q,)``.
            batch_gt_instances_3d (list[InstanceData]): per scene ``bboxes_3d``
                (mmdet3d boxes) and ``labels_3d``.
            stage_loss_weights (Sequence[float]): One weight per layer.
            query_priors (Tensor, optional): ``(Q, 3)`` the queries' triangulated
                priors, ct mm, NaN where a query has none: where ``max_match_dist_mm``
                measures from with ``match_dist_from='prior'``. Defaults to None (the
                predicted centres).

        Returns:
            dict[str, Tensor]: ``l{i}.loss_cls`` and ``l{i}.loss_bbox``.
        """
        if self.assigner is None:
            raise RuntimeError('the head was built without train_cfg.assigner')
        if len(stage_loss_weights) != self.num_layers:
            raise ValueError(f'stage_loss_weights needs {self.num_layers} '
                             f'values, got {len(stage_loss_weights)}')
        device = all_codes.device
        gt_codes, gt_labels = [], []
        for gt in batch_gt_instances_3d:
            boxes = gt.bboxes_3d
            boxes = torch.cat([boxes.gravity_center, boxes.dims],
                              dim=-1).to(device=device, dtype=torch.float32)
            gt_codes.append(self.bbox_coder.encode(boxes))
            gt_labels.append(gt.labels_3d.to(device).long())
        losses = dict()
        for layer, weight in enumerate(stage_loss_weights):
            loss_cls, loss_bbox = self.loss_single(all_cls_scores[layer],
                                                   all_codes[layer], scene_ids,
                                                   gt_codes, gt_labels, query_priors)
            losses[f'l{layer}.loss_cls'] = loss_cls * weight
            losses[f'l{layer}.loss_bbox'] = loss_bbox * weight
        return losses

    def denoising_loss(self, all_cls_scores: Tensor, all_codes: Tensor, labels: Tensor,
                       gt_boxes: Tensor, stage_loss_weights: Sequence[float],
                       loss_weight: float = 1.0) -> Dict[str, Tensor]:
        """Losses of the ray-denoising queries (:mod:`.ray_denoising`), whose targets
        are fixed by construction: no matching.

        Args:
            all_cls_scores (Tensor): ``(num_layers, K, num_classes)`` logits.
            all_codes (Tensor): ``(num_layers, K, 6)``.
            labels (Tensor): ``(K,)`` the class of each positive, ``num_classes``
                (background) for the points along the rays.
            gt_boxes (Tensor): ``(K, 6)`` ``[x, y, z, dx, dy, dz]`` (gravity centre, ct
                mm) of each query's finding; the box targets of the positives.
            stage_loss_weights (Sequence[float]): One weight per layer.
            loss_weight (float): Multiplies every term. Defaults to 1.

        Returns:
            dict[str, Tensor]: ``l{i}.loss_cls_dn`` and ``l{i}.loss_bbox_dn``, focal
            and L1 as :meth:`loss_single`, averaged over the positives.
        """
        positive = labels < self.num_classes
        targets = self.bbox_coder.encode(gt_boxes.float())
        weights = self.code_weights.to(targets)[None].expand(int(positive.sum()), -1)
        avg_factor = reduce_mean(targets.new_tensor(float(positive.sum()))).clamp(
            min=1).item()
        losses = dict()
        for layer, weight in enumerate(stage_loss_weights):
            loss_cls = self.loss_cls(all_cls_scores[layer], labels, avg_factor=avg_factor)
            loss_bbox = self.loss_bbox(all_codes[layer][positive], targets[positive],
                                       weights, avg_factor=avg_factor)
            losses[f'l{layer}.loss_cls_dn'] = torch.nan_to_num(loss_cls) * weight * loss_weight
            losses[f'l{layer}.loss_bbox_dn'] = torch.nan_to_num(loss_bbox) * weight * \
                loss_weight
        return losses

    # -- inference -----------------------------------------------------------------------
    def predict_by_feat(self, cls_scores: Tensor, codes: Tensor,
                        scene_ids: Tensor, num_scenes: int) -> List[dict]:
        """Decode the last layer per scene.

        Args:
            cls_scores (Tensor): ``(Q, num_classes)`` logits of the last layer.
            codes (Tensor): ``(Q, 6)``.
            scene_ids (Tensor): ``(Q,)``.
            num_scenes (int): Batch size.

        Returns:
            list[dict]: per scene ``bboxes`` ``(K, 7)`` (gravity centres, mm),
            ``scores`` and ``labels``.
        """
        return [
            self.bbox_coder.decode(cls_scores[scene_ids == scene],
                                   codes[scene_ids == scene])
            for scene in range(num_scenes)
        ]

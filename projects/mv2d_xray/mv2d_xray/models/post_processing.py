"""Duplicate suppression for 3D findings seen in many views.

Every X-ray view sees every finding, so MV2D produces up to one query per view for the
same nodule; one-to-one matching teaches only one of them to score high, but the others
rarely drop to zero early in training and with few epochs. MV2D's own "3D NMS" had an
IoU threshold of 1.0, a no-op. BEV IoU NMS is also a poor fit for mm-sized,
axis-aligned findings whose duplicates are a few mm apart but may barely overlap.

:func:`centre_distance_nms` instead suppresses a detection whose centre lies inside a
higher-scoring detection's box or within ``dist_thr_mm`` of its centre -- the same
"centre hit" criterion the LUNA16-style metric uses to count a detection as finding a
nodule, so a suppressed box would have been a duplicate (a false positive) anyway.
Optionally the kept box becomes the score-weighted mean of its cluster (``merge``).
The clustering itself is :func:`~projects.mv2d_xray.core.clustering.greedy_clusters`.

:func:`view_support` is a multi-view consistency score: how many of the views' own 2D
detections confirm a 3D box (its centre projects inside a detection), weighted by their
2D scores -- the evidence the triangulation baseline scores its findings with
(``baselines/triangulation.py``), which a decoder trained briefly may not yet weigh. With
``gate_px`` it takes the baseline's own support rule (the nearest detection whose gate holds
the projection); on the blades benchmark's val that ranked better than the grown boxes.
:func:`objectness_support` reads a dense per-view map (the RPN's objectness) at the
projection in every view, where no thresholded detection may be
(:func:`objectness_support_by_size`: on the level that fits the box's projected size).
"""
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from projects.mv2d_xray.core.clustering import greedy_clusters
from projects.mv2d_xray.core.geometry import (detection_gates, nearest_in_gate,
                                              project_boxes3d, project_points, seen_in_image,
                                              view_slots)


def centre_distance_nms(bboxes: Tensor,
                        scores: Tensor,
                        labels: Tensor,
                        dist_thr_mm: float = 0.0,
                        inside_box: bool = True,
                        merge: bool = False,
                        class_agnostic: bool = False,
                        cross_class_ratio: Optional[float] = None) -> Dict[str, Tensor]:
    """Greedy centre-distance NMS, per class or across classes.

    Args:
        bboxes (Tensor): ``(K, 7)`` boxes ``[x, y, z, dx, dy, dz, yaw]`` (gravity
            centre and extents, ct mm; yaw ignored).
        scores (Tensor): ``(K,)``.
        labels (Tensor): ``(K,)``.
        dist_thr_mm (float): Suppress centres at most this far (mm) from a kept
            centre. Defaults to 0.
        inside_box (bool): Also suppress centres inside a kept box. Defaults to
            True.
        merge (bool): Replace each kept box by the score-weighted mean (centre and
            extents) of the boxes it suppresses and itself. Defaults to False.
        class_agnostic (bool): Suppress across classes (a finding has one class: a
            query's other classes at the same centre, and nearby boxes of other
            classes, go), as mmdet's ``class_agnostic`` NMS. Defaults to False (per
            class).
        cross_class_ratio (float, optional): With per-class NMS, also suppress a box of
            another class when the kept box scores at least this many times as much
            (``kept >= ratio * other``): one finding named two ways keeps its clearly
            better name, while two names of similar score both stay (1 would be
            ``class_agnostic``; with ``merge`` those boxes are merged too). None (the
            default): only boxes of the kept box's class.

    Returns:
        dict: ``bboxes``, ``scores``, ``labels`` of the kept detections, by
        decreasing score, and ``keep`` ``(K',)`` int64, their indices in the input.
    """
    order = scores.argsort(descending=True)
    bboxes, scores, labels = bboxes[order], scores[order], labels[order]
    offset = (bboxes[None, :, :3] - bboxes[:, None, :3]).abs()   # (kept i, cand j) mm
    dup = offset.norm(dim=-1) <= dist_thr_mm
    if inside_box:
        dup |= (offset <= bboxes[:, None, 3:6] / 2).all(dim=-1)
    if not class_agnostic:
        same_class = labels[:, None] == labels[None, :]
        if cross_class_ratio is not None:
            if not cross_class_ratio >= 1:
                raise ValueError(f'centre_distance_nms: cross_class_ratio is at least 1, '
                                 f'not {cross_class_ratio!r}')
            same_class |= scores[:, None] >= cross_class_ratio * scores[None, :]
        dup &= same_class
    keep, members = greedy_clusters(scores, dup)
    out = bboxes[keep].clone()
    if merge:
        weights = members.to(scores) * scores[None]
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
        out[:, :6] = weights @ bboxes[:, :6]
    return dict(bboxes=out, scores=scores[keep], labels=labels[keep], keep=order[keep])


def view_support(centres: Tensor, lidar2img: Tensor, roi_boxes: Tensor, roi_scores: Tensor,
                 roi_views: Tensor, margin_px: float = 0.0, gate_px: Optional[float] = None,
                 gate_frac: float = 0.0) -> Tensor:
    """Multi-view support of 3D boxes by one scene's 2D detections: the mean over the
    views of :func:`view_support_scores` (same arguments).

    Returns:
        Tensor: ``(K,)`` in [0, 1], the mean over the ``V`` views of the 2D score of the
        view's supporting detection (0 for a view with none).
    """
    return view_support_scores(centres, lidar2img, roi_boxes, roi_scores, roi_views,
                               margin_px, gate_px, gate_frac).mean(dim=1)


def view_support_scores(centres: Tensor, lidar2img: Tensor, roi_boxes: Tensor,
                        roi_scores: Tensor, roi_views: Tensor, margin_px: float = 0.0,
                        gate_px: Optional[float] = None, gate_frac: float = 0.0) -> Tensor:
    """Per view, the support of 3D boxes by one scene's 2D detections.

    Args:
        centres (Tensor): ``(K, 3)`` box centres, ct mm.
        lidar2img (Tensor): ``(V, 4, 4)`` ct -> img of the scene's views.
        roi_boxes (Tensor): ``(R, 4)`` the scene's 2D detections, xyxy img px.
        roi_scores (Tensor): ``(R,)`` their 2D scores in [0, 1].
        roi_views (Tensor): ``(R,)`` their views (``0 .. V-1``).
        margin_px (float): Grow every 2D box by this much on each side (img px): the
            tolerance of "the centre projects inside". Defaults to 0.
        gate_px (float, optional): Instead of the grown box, the triangulation baseline's
            rule (``baselines/triangulation.py``, step 2): a detection supports the centre
            when its projection lies within the detection's gate, ``max(gate_px,
            gate_frac * max(w, h))`` px of the 2D box centre, and in each view only the
            *nearest* such detection counts. None (the default): the grown-box rule.
        gate_frac (float): See ``gate_px``. Defaults to 0.

    Returns:
        Tensor: ``(K, V)`` in [0, 1], per view the 2D score of the view's supporting
        detection (grown box: the best score among the detections whose grown box
        contains the centre's projection; gate: the nearest detection's score; 0 for a
        view with none, or when the centre lies behind that view's source).
    """
    num_views = len(lidar2img)
    if len(centres) == 0 or len(roi_boxes) == 0:
        return centres.new_zeros((len(centres), num_views))
    uv, depth = project_points(lidar2img.double()[:, None],
                               centres.double()[None, :, None])   # (V, K, 1, 2)
    uv, depth = uv[:, :, 0], depth[:, :, 0]                          # (V, K, 2), (V, K)
    views = roi_views.long()
    if gate_px is not None:
        # per view best first: among equally near detections nearest_in_gate's lowest
        # slot is then the best-scoring one
        index = view_slots(roi_scores, views, num_views)                # (V, D)
        available = index >= 0
        boxes = roi_boxes.double()[index.clamp(min=0)]                  # (V, D, 4)
        scores = torch.where(available, roi_scores.double()[index.clamp(min=0)], 0.0)
        slot, _ = nearest_in_gate(uv.transpose(0, 1), depth.transpose(0, 1),
                                  (boxes[..., :2] + boxes[..., 2:]) / 2,
                                  detection_gates(boxes, gate_px, gate_frac),
                                  available)                         # (K, V)
        best = torch.gather(scores.expand(len(centres), -1, -1), 2,
                            slot.clamp(min=0)[..., None])[..., 0]    # (K, V)
        return torch.where(slot >= 0, best, 0.0).to(centres.dtype)
    mine = uv[views]                                                  # (R, K, 2) px
    boxes = roi_boxes.double()[:, None]                               # (R, 1, 4)
    support = ((mine >= boxes[..., :2] - margin_px) &
               (mine <= boxes[..., 2:] + margin_px)).all(dim=-1)      # (R, K)
    support &= depth[views] > 0
    score = torch.where(support, roi_scores.double()[:, None], 0.0)    # (R, K)
    best = score.new_zeros((num_views, len(centres)))
    best = best.scatter_reduce(0, views[:, None].expand_as(score), score,
                               reduce='amax')
    return best.transpose(0, 1).to(centres.dtype)


class ObjectnessMaps(NamedTuple):
    """Dense per-view score maps on one FPN level and where their cells lie.

    Attributes:
        maps (Tensor): ``(N, h, w)`` per image a score in [0, 1] per feature cell.
        stride_px (tuple[float, float]): ``(s_w, s_h)`` img px between cells.
        origin_px (tuple[float, float]): ``(u, v)`` img px of cell ``(0, 0)``; cell
            ``(i, j)`` scores the anchors centred at ``(u + j s_w, v + i s_h)`` (mmdet's
            anchor grid: its base anchors' centre, ``(0, 0)`` by default, plus the
            cell's shift -- not the cell's middle).
        anchor_px (float): the side of the level's anchors, img px (the geometric mean
            of their widths and heights): the object size the level scores, which
            :func:`objectness_support_by_size` matches to a box's projected size. NaN
            when not known.
    """
    maps: Tensor
    stride_px: Tuple[float, float]
    origin_px: Tuple[float, float]
    anchor_px: float = float('nan')


def objectness_support(centres: Tensor, lidar2img: Tensor, objectness: ObjectnessMaps,
                       img_shape: Tuple[int, int]) -> Tensor:
    """Multi-view support of 3D boxes by a dense per-view score map.

    Where :func:`view_support` asks which of the views' thresholded 2D *detections*
    confirm a box, this reads a dense map -- the 2D stage's RPN objectness -- at the
    projection of the box centre in *every* view and averages: a finding whose evidence
    stayed under the 2D threshold in most views still adds up (the views' evidence is
    fused before any decision, as a tomosynthesis adds the views).

    Args:
        centres (Tensor): ``(K, 3)`` box centres, ct mm.
        lidar2img (Tensor): ``(V, 4, 4)`` ct -> img of the scene's views.
        objectness (ObjectnessMaps): the scene's ``V`` maps ``(V, h, w)`` in [0, 1] and
            their cells' place in img px (e.g. :meth:`MV2DXray.objectness_maps`).
        img_shape (tuple[int, int]): ``(H, W)`` of the views, px: a projection outside
            counts 0.

    Returns:
        Tensor: ``(K,)`` in [0, 1], the mean over the ``V`` views of
        :func:`objectness_at_projections`.
    """
    return objectness_at_projections(centres, lidar2img, objectness,
                                     img_shape).mean(dim=0)


def objectness_at_projections(centres: Tensor, lidar2img: Tensor, objectness: ObjectnessMaps,
                              img_shape: Tuple[int, int]) -> Tensor:
    """A dense per-view map read at the projections of 3D points (the step of
    :func:`objectness_support` before the mean over the views).

    Args: as :func:`objectness_support`.

    Returns:
        Tensor: ``(V, K)`` in [0, 1], per view the map sampled bilinearly between the
        cells' anchor centres at the point's projection (img px); 0 where the point
        lies behind the view's source or projects outside the image.
    """
    maps = objectness.maps
    num_views, cells_h, cells_w = maps.shape
    if len(centres) == 0:
        return centres.new_zeros((num_views, 0))
    height, width = img_shape
    uv, depth = project_points(lidar2img.double(), centres.double())    # (V, K, 2), (V, K)
    inside = seen_in_image(uv, depth, height, width)                      # (V, K)
    # continuous cell index (cell j's anchors at origin + j * stride), then grid_sample's
    # normalised coordinate for align_corners=False: cell j's middle is (2 j + 1) / w - 1;
    # outside or behind the source the projection may be inf / NaN: sample anywhere
    index = (uv - uv.new_tensor(objectness.origin_px)) / uv.new_tensor(objectness.stride_px)
    grid = (2 * index + 1) / uv.new_tensor([cells_w, cells_h]) - 1
    grid = torch.where(inside[..., None], grid, 0.0)
    sampled = F.grid_sample(maps[:, None].to(torch.float32),
                            grid[:, :, None].to(torch.float32), mode='bilinear',
                            padding_mode='border', align_corners=False)  # (V, 1, K, 1)
    return torch.where(inside, sampled[:, 0, :, 0].to(centres.dtype), 0.0)


def objectness_support_by_size(boxes: Tensor, lidar2img: Tensor,
                               levels: Sequence[ObjectnessMaps],
                               img_shape: Tuple[int, int]) -> Tensor:
    """Multi-view support of 3D boxes by the objectness of the level that fits their size.

    An RPN level scores objects of its anchors' size (4 px on the finest level of the
    chest configs, 8 px on the next...): on the chest benchmark's val the finest level
    alone ranks the 6-10 mm nodules best and the large ones worst, the next level the
    reverse (README chest ablations). So in each view a box is read on the level whose
    anchor side (:attr:`ObjectnessMaps.anchor_px`) is nearest, on a log scale, to the
    side of the box's projection (the square root of the area of the 2D box around its
    projected corners), then averaged over the views as :func:`objectness_support`.

    Args:
        boxes (Tensor): ``(K, 7)`` ``[x, y, z, dx, dy, dz, yaw]`` (centre and full
            extents, ct mm).
        lidar2img (Tensor): ``(V, 4, 4)`` ct -> img of the scene's views.
        levels (Sequence[ObjectnessMaps]): the scene's maps on one or more levels, each
            ``(V, h, w)`` with its ``anchor_px``.
        img_shape (tuple[int, int]): ``(H, W)`` of the views, px.

    Returns:
        Tensor: ``(K,)`` in [0, 1]; with one level, :func:`objectness_support` of the
        boxes' centres.
    """
    if len(levels) == 0:
        raise ValueError('objectness_support_by_size needs at least one level')
    if len(levels) == 1:
        return objectness_support(boxes[:, :3], lidar2img, levels[0], img_shape)
    num_views = len(levels[0].maps)
    if len(boxes) == 0:
        return boxes.new_zeros(0)
    per_level = torch.stack([objectness_at_projections(boxes[:, :3], lidar2img, maps,
                                                       img_shape)
                             for maps in levels])                        # (L, V, K)
    anchor = boxes.new_tensor([maps.anchor_px for maps in levels])       # (L,)
    if not torch.isfinite(anchor).all():
        raise ValueError('objectness_support_by_size: every level needs its anchor_px')
    projected = project_boxes3d(lidar2img.double(),
                                boxes.double()[None].expand(num_views, -1, -1))  # (V, K, 4)
    side = ((projected[..., 2] - projected[..., 0]).clamp(min=1e-6) *
            (projected[..., 3] - projected[..., 1]).clamp(min=1e-6)).sqrt()
    mismatch = (side.log2()[None] - anchor.double().log2()[:, None, None]).abs()  # (L, V, K)
    level = mismatch.argmin(dim=0)                                       # (V, K)
    chosen = per_level.gather(0, level[None]).squeeze(0)                 # (V, K)
    return chosen.sum(dim=0) / num_views

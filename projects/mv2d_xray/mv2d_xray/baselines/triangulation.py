"""Triangulation baseline: 3D boxes from per-view 2D detections and each view's
``lidar2img`` -- no learning, so it shows what the 2D stage alone is worth in 3D.

For one case and one class:

1. **Detections**: those scoring ``>= score_thr``, at most ``max_per_view`` per view (by
   score). Each has a centre ``c`` (the 2D box centre, px), a size and a *gate*
   ``max(gate_px, gate_frac * max(w, h))`` px: how far a projection may fall from ``c``
   and still be that detection.
2. **Hypotheses** (epipolar consistency): every pair of detections in two views whose rays
   meet at more than ``min_ray_angle_deg`` (opposite views see along nearly the same line
   and cannot fix depth) is triangulated by linear least squares; a pair is kept when the
   point lies in front of both sources and reprojects into both gates -- for two views
   this is the epipolar constraint. The point then collects *support*: in every other view
   the detection nearest to its projection, if within that detection's gate.
3. **Greedy association**: the hypothesis with the most supporting views (then the highest
   summed score, then the smallest reprojection error) is refined and accepted; its
   detections leave the pool (each detection belongs to at most one finding), and step 2
   repeats on the rest until no hypothesis has ``min_views`` views.
4. **Refinement**: linear least squares over all supporting views, then Levenberg-Marquardt
   on the reprojection error of the box centres (``scipy.optimize.least_squares``); support
   is gathered again around the refined point and the point refined once more.
5. **Size** from the 2D extents: each supporting view measures the object's extent along its
   image axes (box width and height times the mm-per-pixel at the point's depth, from
   :func:`~projects.mv2d_xray.core.geometry.unproject_points`); an axis-aligned ellipsoid
   ``width^2 = sum_k a_k^2 d_k^2`` (``a`` the measured direction in ct) is fitted by
   non-negative least squares, and its axis extents ``d_k`` are the box size. An axis no
   view constrains gets the mean of the others.
6. **Score**: the summed score of the supporting detections divided by the number of views
   of the case (1 for a finding detected with confidence 1 in every view, 0.2 for a pair
   of views out of ten), times the consistency ``exp(-(rms / gate_px)^2 / 2)`` of the
   reprojection error ``rms`` (px) of the box centres: a badly triangulated point ranks
   below a consistent one seen as often.

Box centres of an irregular finding's projections are not exactly projections of its 3D box
centre, so even exact 2D boxes give centres off by a fraction of the finding's size (about
2 mm for a 30 mm nodule); 2D centres a pixel off move the 3D point by about a pixel's size
at the isocentre (``pixel_spacing_mm * sod / sdd``).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from projects.mv2d_xray.core.geometry import (detection_gates, index_to_ct, nearest_in_gate,
                                              project_points, triangulate_points, unproject_points,
                                              view_slots)


@dataclass
class TriangulationConfig:
    """Settings of :func:`triangulate_case` (see the module docstring).

    Args:
        score_thr (float): detections scoring below are dropped. Defaults to 0.05.
        max_per_view (int): detections kept per view and class. Defaults to 30.
        gate_px (float): smallest gate, px. Defaults to 3.
        gate_frac (float): gate as a fraction of the detection's larger side. Defaults to 0.5.
        min_views (int): views a finding needs (>= 2). Defaults to 2.
        min_ray_angle_deg (float): smallest angle between the two rays of a seed pair.
            Defaults to 20.
        bounds_margin_mm (float): with known CT bounds, findings must lie within the
            volume grown by this margin. Defaults to 10.
    """
    score_thr: float = 0.05
    max_per_view: int = 30
    gate_px: float = 3.0
    gate_frac: float = 0.5
    min_views: int = 2
    min_ray_angle_deg: float = 20.0
    bounds_margin_mm: float = 10.0

    def __post_init__(self):
        if not (self.gate_px >= 0 and self.gate_frac >= 0):
            raise ValueError(f'gate_px and gate_frac must be >= 0, got {self.gate_px} and '
                             f'{self.gate_frac}')
        if self.min_views < 2:
            raise ValueError(f'min_views must be >= 2, got {self.min_views}')
        if not 0 < self.min_ray_angle_deg < 90:
            raise ValueError('min_ray_angle_deg must be in (0, 90)')


# -- elementary geometry -------------------------------------------------------------------
def _project(lidar2img: np.ndarray, points: np.ndarray) -> tuple:
    """One point per matrix: ``lidar2img`` ``(..., 4, 4)``, ``points`` ``(..., 3)`` ->
    ``uv`` ``(..., 2)`` and ``depth`` ``(...)`` (:func:`project_points`)."""
    uv, depth = project_points(lidar2img, points[..., None, :])
    return uv[..., 0, :], depth[..., 0]


def refine_point(lidar2img: np.ndarray, uv: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Minimise the reprojection error (px) of one point over ``V >= 2`` views with
    Levenberg-Marquardt, from ``point`` (3,). ``lidar2img`` ``(V, 4, 4)``, ``uv`` ``(V, 2)``."""
    from scipy.optimize import least_squares

    def residuals(x):
        return (_project(lidar2img, np.broadcast_to(x, (len(uv), 3)))[0] - uv).ravel()

    return least_squares(residuals, np.asarray(point, np.float64), method='lm').x


def reprojection_errors(lidar2img: np.ndarray, uv: np.ndarray,
                        point: np.ndarray) -> np.ndarray:
    """Pixel distances ``(V,)`` between the projections of ``point`` and ``uv``."""
    point = np.broadcast_to(np.asarray(point, np.float64), (len(uv), 3))
    return np.linalg.norm(_project(lidar2img, point)[0] - uv, axis=-1)


def source_positions(lidar2img: np.ndarray) -> np.ndarray:
    """X-ray source (camera centre) of each view in ct, ``(V, 3)``."""
    zeros = np.zeros((len(lidar2img), 1, 2))
    return unproject_points(lidar2img, zeros, np.zeros((len(lidar2img), 1)))[:, 0]


def fit_box_size(lidar2img: np.ndarray, boxes: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Axis extents ``(3,)`` mm of the axis-aligned ellipsoid at ``point`` whose silhouettes
    best match the 2D box sizes (non-negative least squares on squared extents).

    Args:
        lidar2img: ``(V, 4, 4)``.
        boxes: ``(V, 4)`` xyxy boxes of the object in those views.
        point: ``(3,)`` ct centre.
    """
    from scipy.optimize import nnls
    num = len(boxes)
    _, depth = _project(lidar2img, np.broadcast_to(point, (num, 3)))           # (V,)
    centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    offsets = np.stack([centre, centre + [1.0, 0.0], centre + [0.0, 1.0]], axis=1)
    pts = unproject_points(lidar2img, offsets, np.repeat(depth[:, None], 3, axis=1))  # (V,3,3)
    du, dv = pts[:, 1] - pts[:, 0], pts[:, 2] - pts[:, 0]      # mm per px along u, v
    extents = np.concatenate([(boxes[:, 2] - boxes[:, 0]) * np.linalg.norm(du, axis=1),
                              (boxes[:, 3] - boxes[:, 1]) * np.linalg.norm(dv, axis=1)])
    dirs = np.concatenate([du / np.linalg.norm(du, axis=1, keepdims=True),
                           dv / np.linalg.norm(dv, axis=1, keepdims=True)])
    design = dirs ** 2                                          # (2V, 3)
    sq, _ = nnls(design, extents ** 2)
    dims = np.sqrt(sq)
    seen = design.sum(0) > 0.5
    if seen.any() and not seen.all():
        dims[~seen] = dims[seen].mean()
    # a degenerate fit (two views) may zero an axis: no box is thinner than half the
    # smallest extent seen
    return np.maximum(dims, 0.5 * extents.min())


# -- association ---------------------------------------------------------------------------
@dataclass
class _Dets:
    """Detections of one class in one case, padded per view: ``(V, K)`` arrays."""
    centre: np.ndarray     # (V, K, 2)
    gate: np.ndarray       # (V, K)
    score: np.ndarray      # (V, K)
    box: np.ndarray        # (V, K, 4)
    index: np.ndarray      # (V, K) index into the input detections, -1 = padding


def _detection_arrays(lidar2img, boxes, scores, labels, view_ids) -> tuple:
    """The inputs of :func:`triangulate_case` as arrays: ``lidar2img`` ``(V, 4, 4)`` and
    ``boxes`` ``(K, 4)`` float64, ``scores`` ``(K,)`` float64, ``labels`` and ``view_ids``
    ``(K,)`` int64."""
    return (np.asarray(lidar2img, np.float64), np.asarray(boxes, np.float64).reshape(-1, 4),
            np.asarray(scores, np.float64).reshape(-1),
            np.asarray(labels, np.int64).reshape(-1), np.asarray(view_ids, np.int64).reshape(-1))


def _pad_detections(boxes: np.ndarray, scores: np.ndarray, view_ids: np.ndarray,
                    num_views: int, cfg: TriangulationConfig) -> Optional[_Dets]:
    """Step 1 of the module docstring: per view the detections scoring ``>= score_thr``,
    at most ``max_per_view`` by score, padded to ``(V, K)``; ``None`` when none is left.
    ``boxes`` ``(N, 4)`` xyxy img px, ``scores`` ``(N,)``, ``view_ids`` ``(N,)``."""
    kept = np.flatnonzero((scores >= cfg.score_thr) & (view_ids >= 0) & (view_ids < num_views))
    index = view_slots(scores[kept], view_ids[kept], num_views, cfg.max_per_view)
    if index.shape[1] == 0:
        return None
    index = np.where(index >= 0, kept[np.maximum(index, 0)], -1)
    safe = np.maximum(index, 0)
    box = boxes[safe]
    centre = np.stack([(box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2], -1)
    gate = detection_gates(box, cfg.gate_px, cfg.gate_frac)
    return _Dets(centre, gate, np.where(index >= 0, scores[safe], 0.0), box, index)


def _support(points: np.ndarray, lidar2img: np.ndarray, dets: _Dets,
             pool: np.ndarray, chunk: int = 4096) -> tuple:
    """For points ``(M, 3)``: in every view the nearest available detection within its gate.

    Returns:
        tuple: ``member`` ``(M, V)`` detection slot per view (-1 = none) and ``error``
        ``(M, V)`` its reprojection error (px; inf = none).
    """
    if len(points) > chunk:
        parts = [_support(points[i:i + chunk], lidar2img, dets, pool, chunk)
                 for i in range(0, len(points), chunk)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    num_views = len(lidar2img)
    uv, depth = _project(lidar2img[None], np.repeat(points[:, None], num_views, 1))  # (M, V)
    return nearest_in_gate(uv, depth, dets.centre, dets.gate, pool)


def _refine(lidar2img, dets, member, pool, min_views: int = 2):
    """Refine a point from its members, then gather support again (kept only while it
    has ``min_views`` views) and refine once more."""
    for _ in range(2):
        views = np.flatnonzero(member >= 0)
        uv = dets.centre[views, member[views]]
        point = triangulate_points(lidar2img[views], uv)
        point = refine_point(lidar2img[views], uv, point)
        new_member, error = _support(point[None], lidar2img, dets, pool)
        if (new_member[0] >= 0).sum() < min_views:
            break
        member = new_member[0]
    views = np.flatnonzero(member >= 0)
    uv = dets.centre[views, member[views]]
    point = refine_point(lidar2img[views], uv, triangulate_points(lidar2img[views], uv))
    return point, member, reprojection_errors(lidar2img[views], uv, point)


def ct_bounds(info: dict, voxel_edges: bool = False) -> Optional[np.ndarray]:
    """``(3, 2)`` ct extent (mm) of a case's CT from its info ``ct`` entry (``shape``
    ``[rows, cols, slices]``, ``spacing_mm``; x runs along columns, y along rows, z along
    slices), or None when the info has none.

    Args:
        info (dict): the case's info item.
        voxel_edges (bool): the volume's outer corners (half a voxel beyond the first and
            last voxel centres) instead of the voxel centres. Defaults to False.
    """
    ct = info.get('ct') or {}
    if not ct.get('shape') or not ct.get('spacing_mm'):
        return None
    shape = [int(s) for s in ct['shape'][:3]]
    half = 0.5 if voxel_edges else 0.0
    first_last = index_to_ct([[-half] * 3, [s - 1 + half for s in shape]], shape,
                             ct['spacing_mm'][:3])
    return first_last.T


def triangulate_case(lidar2img: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                     labels: np.ndarray, view_ids: np.ndarray,
                     cfg: Optional[TriangulationConfig] = None,
                     bounds_mm: Optional[np.ndarray] = None) -> List[dict]:
    """3D findings of one case from its 2D detections (see the module docstring).

    Args:
        lidar2img: ``(V, 4, 4)`` ct -> img of each view.
        boxes: ``(K, 4)`` xyxy detections in the views' (original) pixels.
        scores: ``(K,)``.
        labels: ``(K,)`` class indices.
        view_ids: ``(K,)`` view index of each detection (into ``lidar2img``).
        cfg: settings; defaults to :class:`TriangulationConfig`.
        bounds_mm: optional ``(3, 2)`` ct box (min, max per axis) the findings lie in
            (grown by ``cfg.bounds_margin_mm``), e.g. :func:`ct_bounds`.

    Returns:
        list[dict]: per finding ``bbox_3d`` (7 floats, ct mm, yaw 0), ``score``, ``label``,
        ``views`` (view indices used), ``detections`` (indices into the inputs),
        ``reproj_px`` (mean reprojection error of the box centres), by descending score.
    """
    cfg = cfg or TriangulationConfig()
    lidar2img, boxes, scores, labels, view_ids = _detection_arrays(lidar2img, boxes, scores,
                                                                   labels, view_ids)
    if bounds_mm is not None:
        bounds_mm = np.asarray(bounds_mm, np.float64).reshape(3, 2) + \
            np.array([-cfg.bounds_margin_mm, cfg.bounds_margin_mm])
    findings = []
    for label in np.unique(labels):
        sel = labels == label
        findings += _triangulate_class(lidar2img, boxes[sel], scores[sel], view_ids[sel],
                                       np.flatnonzero(sel), int(label), cfg, bounds_mm)
    findings.sort(key=lambda f: -f['score'])
    return findings


def _triangulate_class(lidar2img: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                       view_ids: np.ndarray, input_index: np.ndarray, label: int,
                       cfg: TriangulationConfig,
                       bounds_mm: Optional[np.ndarray]) -> List[dict]:
    """Steps 1-6 of the module docstring for the detections of one class: hypotheses,
    then greedily the best one refined and accepted until none has ``min_views`` views.

    Args: ``lidar2img`` ``(V, 4, 4)``; ``boxes`` ``(N, 4)`` xyxy img px, ``scores``,
    ``view_ids`` ``(N,)`` of the class's detections, ``input_index`` ``(N,)`` their
    indices into the case's detections; ``bounds_mm`` ``(3, 2)`` ct mm, already grown.
    """
    dets = _pad_detections(boxes, scores, view_ids, len(lidar2img), cfg)
    if dets is None:
        return []
    pool = dets.index >= 0
    cos_max = math.cos(math.radians(cfg.min_ray_angle_deg))
    hypotheses = _Hypotheses(lidar2img, source_positions(lidar2img), dets, pool, cos_max,
                             bounds_mm)
    findings = []
    while True:
        best = hypotheses.best(cfg.min_views)
        if best is None:
            return findings
        point, member, errors = _refine(lidar2img, dets, best[1], pool, cfg.min_views)
        views = np.flatnonzero(member >= 0)
        if len(views) < cfg.min_views or not _inside(point[None], bounds_mm)[0]:
            # refinement lost support: retire the seed's detections and go on
            seed_views = np.flatnonzero(best[1] >= 0)
            hypotheses.remove(seed_views, best[1][seed_views])
            continue
        slots = member[views]
        hypotheses.remove(views, slots)
        box, score = _box_and_score(lidar2img, dets, views, slots, point, errors, cfg)
        findings.append(dict(bbox_3d=box, score=score, label=label, views=views.tolist(),
                             detections=input_index[dets.index[views, slots]].tolist(),
                             reproj_px=float(errors.mean())))


def _box_and_score(lidar2img: np.ndarray, dets: _Dets, views: np.ndarray, slots: np.ndarray,
                   point: np.ndarray, errors: np.ndarray,
                   cfg: TriangulationConfig) -> Tuple[List[float], float]:
    """Steps 5-6 for an accepted finding at ``point`` (``(3,)`` ct mm) seen by the
    detections ``dets[views, slots]``: its ``bbox_3d`` (7 floats, ct mm, yaw 0) sized from
    their 2D extents, and its score -- the summed detection score over the number of views,
    times the consistency of the reprojection ``errors`` (``(len(views),)`` px)."""
    dims = fit_box_size(lidar2img[views], dets.box[views, slots], point)
    rms = float(np.sqrt(np.mean(errors ** 2)))
    consistency = math.exp(-0.5 * (rms / cfg.gate_px) ** 2)
    score = float(dets.score[views, slots].sum() / len(lidar2img) * consistency)
    return [*map(float, point), *map(float, dims), 0.0], score


def _inside(points: np.ndarray, bounds_mm: Optional[np.ndarray]) -> np.ndarray:
    """``(M,)`` bool: points ``(M, 3)`` (ct mm) within ``bounds_mm`` ``(3, 2)`` (all of
    them without bounds)."""
    if bounds_mm is None:
        return np.ones(len(points), bool)
    return ((points >= bounds_mm[:, 0]) & (points <= bounds_mm[:, 1])).all(-1)


class _Hypotheses:
    """The pair-seeded hypotheses of one case and class (steps 2-3 of the module docstring).

    Seed points are triangulated once; each keeps its support (the detection slot taken in
    every view). When detections leave the pool, only the seeds that used them (as seed
    pair or as support) are updated, so the greedy loop costs little per finding.
    """

    def __init__(self, lidar2img, sources, dets: _Dets, pool, cos_max, bounds_mm):
        self.lidar2img, self.dets, self.pool = lidar2img, dets, pool
        points, pairs = [], []
        for a, b in itertools.combinations(range(pool.shape[0]), 2):
            ia, ib = np.flatnonzero(pool[a]), np.flatnonzero(pool[b])
            if len(ia) == 0 or len(ib) == 0:
                continue
            ka, kb = (k.ravel() for k in np.meshgrid(ia, ib, indexing='ij'))
            mats = np.stack([lidar2img[a], lidar2img[b]])[None].repeat(len(ka), 0)
            uv = np.stack([dets.centre[a, ka], dets.centre[b, kb]], axis=1)
            seeds = triangulate_points(mats, uv)                              # (P, 3)
            ray_a, ray_b = seeds - sources[a], seeds - sources[b]
            cos = np.sum(ray_a * ray_b, -1) / (np.linalg.norm(ray_a, axis=-1) *
                                               np.linalg.norm(ray_b, axis=-1) + 1e-12)
            proj, depth = _project(mats, seeds[:, None].repeat(2, 1))
            err = np.linalg.norm(proj - uv, axis=-1)                          # (P, 2)
            ok = (np.abs(cos) < cos_max) & (depth > 0).all(1) & _inside(seeds, bounds_mm) \
                & (err[:, 0] <= dets.gate[a, ka]) & (err[:, 1] <= dets.gate[b, kb])
            points.append(seeds[ok])
            pairs.append(np.stack([np.full(ok.sum(), a), ka[ok], np.full(ok.sum(), b),
                                   kb[ok]], axis=1))
        self.points = np.concatenate(points) if points else np.zeros((0, 3))
        self.pairs = np.concatenate(pairs) if pairs else np.zeros((0, 4), np.int64)
        self.member, self.error = _support(self.points, lidar2img, dets, pool)

    def best(self, min_views: int):
        """``(point, member)`` of the best live hypothesis, or None below ``min_views``."""
        p = self.pairs
        alive = self.pool[p[:, 0], p[:, 1]] & self.pool[p[:, 2], p[:, 3]]
        if not alive.any():
            return None
        idx = np.flatnonzero(alive)
        member, error = self.member[idx], self.error[idx]
        has = member >= 0
        count = has.sum(1)
        score = np.where(has, np.take_along_axis(self.dets.score, np.maximum(member, 0).T,
                                                 1).T, 0.0).sum(1)
        mean_err = np.where(has, error, 0.0).sum(1) / np.maximum(count, 1)
        # lexicographic: most views, highest summed score, smallest error
        best = np.lexsort((mean_err, -score, -count))[0]
        if count[best] < min_views:
            return None
        return self.points[idx[best]], member[best]

    def remove(self, views: np.ndarray, slots: np.ndarray) -> None:
        """Take detections out of the pool and update the hypotheses that used them."""
        self.pool[views, slots] = False
        used = np.zeros(len(self.points), bool)
        for v, k in zip(views, slots):
            used |= self.member[:, v] == k
        idx = np.flatnonzero(used)
        if len(idx):
            self.member[idx], self.error[idx] = _support(self.points[idx], self.lidar2img,
                                                         self.dets, self.pool)


def _support_by_class(lidar2img: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                      labels: np.ndarray, view_ids: np.ndarray, points: np.ndarray,
                      point_labels: np.ndarray, cfg: TriangulationConfig):
    """Per class of the points: the detections of that class kept by step 1 and, in every
    view, the one supporting each point (:func:`_support`). Yields ``(mine, dets, pool,
    members)``: the points' indices ``(M_c,)``, the padded detections, their availability
    ``(V, K)`` and the supporting slot per point and view ``(M_c, V)`` (-1: none); classes
    without detections are skipped."""
    for label in np.unique(point_labels):
        mine = np.flatnonzero(point_labels == label)
        sel = labels == label
        dets = _pad_detections(boxes[sel], scores[sel], view_ids[sel], len(lidar2img), cfg)
        if dets is None:
            continue
        pool = dets.index >= 0
        members, _ = _support(points[mine], lidar2img, dets, pool)
        yield mine, dets, pool, members


def supporting_views(lidar2img: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                     labels: np.ndarray, view_ids: np.ndarray, points: np.ndarray,
                     point_labels: np.ndarray,
                     cfg: Optional[TriangulationConfig] = None) -> np.ndarray:
    """Which views' detections support 3D points, by the association of step 4: a view
    supports a point when one of its detections of the point's class (after step 1's
    ``score_thr`` and ``max_per_view``) has a gate holding the point's projection.

    Args: as :func:`refine_to_detections` (``points`` ``(M, 3)`` ct mm; of ``cfg``,
    ``score_thr``, ``max_per_view``, ``gate_px`` and ``gate_frac`` apply).

    Returns:
        np.ndarray: ``(M, V)`` bool.
    """
    cfg = cfg or TriangulationConfig()
    lidar2img, boxes, scores, labels, view_ids = _detection_arrays(lidar2img, boxes, scores,
                                                                   labels, view_ids)
    points = np.asarray(points, np.float64).reshape(-1, 3)
    point_labels = np.asarray(point_labels, np.int64).reshape(-1)
    out = np.zeros((len(points), len(lidar2img)), bool)
    for mine, _, _, members in _support_by_class(lidar2img, boxes, scores, labels, view_ids,
                                                 points, point_labels, cfg):
        out[mine] = members >= 0
    return out


def refine_to_detections(lidar2img: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                         labels: np.ndarray, view_ids: np.ndarray, points: np.ndarray,
                         point_labels: np.ndarray,
                         cfg: Optional[TriangulationConfig] = None) -> dict:
    """Move 3D points onto the 2D detections of their class that support them, as step 4
    refines a finding: for each point, in every view the nearest detection of the point's
    class whose gate holds the point's projection (a detection may support several
    points); with at least ``cfg.min_views`` such views, the point is re-triangulated from
    their box centres (linear least squares, then Levenberg-Marquardt, support gathered
    again and refined once more: :func:`_refine`). Points with fewer views, or that the
    refinement leaves with fewer, stay where they are.

    Per class, as the findings of :func:`triangulate_case`: the box another class's
    detector puts on the same finding may be centred elsewhere (an elongated crack box on
    a pore).

    Args:
        lidar2img: ``(V, 4, 4)`` ct -> img of each view.
        boxes: ``(K, 4)`` xyxy detections in the same img px as ``lidar2img``.
        scores, labels, view_ids: ``(K,)`` their scores, classes and views.
        points: ``(M, 3)`` ct mm.
        point_labels: ``(M,)`` the points' classes.
        cfg: settings (``score_thr``, ``max_per_view``, ``gate_px``, ``gate_frac``,
            ``min_views``); defaults to :class:`TriangulationConfig`.

    Returns:
        dict: ``points`` ``(M, 3)`` ct mm and ``num_views`` ``(M,)``, each point's
        supporting views (0 where it stayed).
    """
    cfg = cfg or TriangulationConfig()
    lidar2img, boxes, scores, labels, view_ids = _detection_arrays(lidar2img, boxes, scores,
                                                                   labels, view_ids)
    points = np.array(points, np.float64).reshape(-1, 3)
    point_labels = np.asarray(point_labels, np.int64).reshape(-1)
    num_views = np.zeros(len(points), np.int64)
    for mine, dets, pool, members in _support_by_class(lidar2img, boxes, scores, labels,
                                                       view_ids, points, point_labels, cfg):
        for m, member in zip(mine, members):
            if (member >= 0).sum() < cfg.min_views:
                continue
            point, member, _ = _refine(lidar2img, dets, member, pool, cfg.min_views)
            views = np.flatnonzero(member >= 0)
            if len(views) >= cfg.min_views and np.isfinite(point).all():
                points[m], num_views[m] = point, len(views)
    return dict(points=points, num_views=num_views)


def triangulate_dataset(infos: dict, dets_by_case: dict,
                        cfg: Optional[TriangulationConfig] = None,
                        progress: bool = False) -> dict:
    """Triangulate every case of an info pickle.

    Args:
        infos: loaded info pickle (``data_list`` items with ``images`` and ``lidar2img``).
        dets_by_case: ``{token: dict(boxes (K, 4) xyxy, scores, labels, view_ids)}`` with
            ``view_ids`` indexing the case's ``images`` in their order; a case missing here
            has no detections.
        cfg: settings.
        progress: show a tqdm bar.

    Returns:
        dict: ``{token: [finding dicts of triangulate_case]}`` for every case.
    """
    items = infos['data_list']
    if progress:
        from tqdm import tqdm
        items = tqdm(items, desc='triangulating', unit='case')
    out = {}
    for info in items:
        mats = np.stack([np.asarray(view['lidar2img'], np.float64)
                         for view in info['images'].values()])
        d = dets_by_case.get(info['token'])
        if d is None or len(d['scores']) == 0:
            out[info['token']] = []
            continue
        out[info['token']] = triangulate_case(mats, d['boxes'], d['scores'], d['labels'],
                                              d['view_ids'], cfg, ct_bounds(info))
    return out


def coco_annotations_as_detections(coco: dict, include_crowd: bool = True) -> List[dict]:
    """The COCO file's 2D ground truth as COCO-results detections (score 1): the input for
    checking the baseline on exact 2D boxes."""
    return [dict(image_id=a['image_id'], category_id=a['category_id'],
                 bbox=[float(v) for v in a['bbox']], score=1.0)
            for a in coco['annotations'] if include_crowd or not a.get('iscrowd', 0)]


def group_detections(coco: dict, dets: Sequence[dict], infos: dict) -> dict:
    """COCO-results detections (resolved ``image_id``) -> ``{token: dict(boxes, scores,
    labels, view_ids)}`` for :func:`triangulate_dataset` (``labels`` = category_id - 1)."""
    images = {img['id']: img for img in coco['images']}
    view_pos = {info['token']: {name: i for i, name in enumerate(info['images'])}
                for info in infos['data_list']}
    grouped = {}
    for i, det in enumerate(dets):
        img = images[det['image_id']]
        token, view = img.get('token'), img.get('view')
        if token not in view_pos:
            raise KeyError(f'detection [{i}]: case {token!r} (image {det["image_id"]}) is '
                           'not in the info pickle')
        if view not in view_pos[token]:
            raise KeyError(f'detection [{i}]: view {view!r} is not a view of case {token!r}')
        g = grouped.setdefault(token, dict(boxes=[], scores=[], labels=[], view_ids=[]))
        x, y, w, h = det['bbox']
        g['boxes'].append([x, y, x + w, y + h])
        g['scores'].append(float(det['score']))
        g['labels'].append(int(det['category_id']) - 1)
        g['view_ids'].append(view_pos[token][view])
    return {t: {k: np.asarray(v, np.float64 if k in ('boxes', 'scores') else np.int64)
                for k, v in g.items()} for t, g in grouped.items()}

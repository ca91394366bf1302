"""The pointing game (Zhang et al., "Top-down neural attention by excitation backprop",
ECCV 2016) for saliency maps of X-ray views: does a map's peak fall on the finding?
Plain functions, numpy only.

**Frames and units.** A saliency map is ``(H, W)`` on a view's image grid; pixel ``(r, c)``
covers ``[c, c + 1) x [r, r + 1)`` in px, its centre is ``(c + 0.5, r + 0.5)``. A finding's
box is ``[x1, y1, x2, y2]`` in px of the same image (the converter's ``cam_instances``
``bbox``; closed: its edges count as inside). Diameters are mm.

**Hit.** The map's *peaks* are all its pixels equal to its maximum. A finding is *hit* when
the centre of **any** peak pixel lies within ``tolerance_px`` (Euclidean distance to the
box, 0 inside it) of the finding's box; the default tolerance is 0 (inside the box). The
saliency literature's 15 px tolerance (for ~224 px images) is this setting; scale it with
the image. With ties, a map whose maximum is a plateau hits every finding the plateau
reaches -- so a map that *is* the ground truth (1 in the boxes, 0 elsewhere) scores 1.

**Flat maps.** A map whose values are all equal (e.g. all zeros, as the CAMs return when
nothing is salient) has no peak: :func:`pointing_hits` gives it no hit, and
:func:`pointing_scores` / :func:`pointing_game` score it at its expectation under a
uniformly random peak, the finding's random floor (below) -- not 1 by the tie rule, not 0.

**Random floor.** The expected hit rate of a map whose peak is one uniformly random pixel:
per finding, the fraction of the image's pixels whose centre is a hit (``box area / image
area`` for a box on whole pixels inside the image, tolerance 0); reported as the mean over
the findings scored. A map is better than chance where its hit rate exceeds this floor.

**Unit of scoring.** Every finding of every record (a view's map and that view's findings)
is one trial; ignore regions (``ignore`` flags) are skipped. A view with two findings and a
single-peaked map can hit one at most: give each finding its own record and map (e.g. a
Score-CAM of the detection matched to it) to ask "does the map of this finding point at
it". Size bands are those of :mod:`projects.mv2d_xray.core.metric` (``low <= d < high``);
findings outside every band, or without a diameter, count only in the overall figures. As
there, a band or view without findings has ``None``, never 0.
"""
from __future__ import annotations

from typing import Dict, Hashable, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from projects.mv2d_xray.core.metric import DEFAULT_SIZE_BANDS


def _as_map(saliency) -> np.ndarray:
    """``saliency`` as a finite ``(H, W)`` float64 array (``ValueError`` otherwise)."""
    saliency = np.asarray(saliency, np.float64)
    if saliency.ndim != 2 or saliency.size == 0:
        raise ValueError(f'a saliency map is (H, W), got shape {saliency.shape}')
    if not np.isfinite(saliency).all():
        raise ValueError('a saliency map must be finite')
    return saliency


def _as_boxes(boxes) -> np.ndarray:
    """``(M, 4)`` float64 boxes ``[x1, y1, x2, y2]``."""
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def has_peak(saliency) -> bool:
    """False for a flat map (all values equal): it has no peak."""
    saliency = _as_map(saliency)
    return bool(saliency.max() > saliency.min())


def peak_pixels(saliency) -> np.ndarray:
    """``(P, 2)`` centres ``(x, y)`` in px of the pixels equal to the map's maximum
    (``P = 0`` for a flat map)."""
    saliency = _as_map(saliency)
    if not has_peak(saliency):
        return np.zeros((0, 2))
    rows, cols = np.nonzero(saliency == saliency.max())
    return np.stack([cols + 0.5, rows + 0.5], axis=1)


def _box_distances(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(P, M)`` Euclidean distances (px) from points ``(P, 2)`` to boxes ``(M, 4)``,
    0 inside or on a box."""
    x, y = points[:, None, 0], points[:, None, 1]
    dx = np.maximum(np.maximum(boxes[None, :, 0] - x, x - boxes[None, :, 2]), 0.0)
    dy = np.maximum(np.maximum(boxes[None, :, 1] - y, y - boxes[None, :, 3]), 0.0)
    return np.hypot(dx, dy)


def hit_fraction(image_hw: Tuple[int, int], boxes, tolerance_px: float = 0.0) -> np.ndarray:
    """``(M,)`` random floor of each box: the fraction of an ``(H, W)`` image's pixels
    whose centre is within ``tolerance_px`` of the box (the chance that a uniformly random
    peak hits it)."""
    height, width = image_hw
    boxes = _as_boxes(boxes)
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    dx = np.maximum(np.maximum(boxes[:, None, 0] - xs, xs - boxes[:, None, 2]), 0.0)
    dy = np.maximum(np.maximum(boxes[:, None, 1] - ys, ys - boxes[:, None, 3]), 0.0)
    inside = np.hypot(dy[:, :, None], dx[:, None, :]) <= tolerance_px      # (M, H, W)
    return inside.reshape(len(boxes), -1).mean(axis=1) if len(boxes) else np.zeros(0)


def pointing_hits(saliency, boxes, tolerance_px: float = 0.0) -> np.ndarray:
    """``(M,)`` bool: the map's peak hits each box (see the module docstring; any of tied
    maxima counts; a flat map hits nothing -- :func:`pointing_scores` scores it at the
    random floor instead).

    Args:
        saliency: ``(H, W)`` map.
        boxes: ``(M, 4)`` ``[x1, y1, x2, y2]`` px.
        tolerance_px: largest distance (px) from a peak pixel's centre to the box.
    """
    boxes = _as_boxes(boxes)
    peaks = peak_pixels(saliency)
    if len(peaks) == 0 or len(boxes) == 0:
        return np.zeros(len(boxes), bool)
    return (_box_distances(peaks, boxes) <= tolerance_px).any(axis=0)


def pointing_scores(saliency, boxes, tolerance_px: float = 0.0) -> np.ndarray:
    """``(M,)`` float: 1.0 / 0.0 for a hit / miss of a map with a peak; for a flat map the
    expected hit of a uniformly random peak, :func:`hit_fraction`."""
    saliency = _as_map(saliency)
    if not has_peak(saliency):
        return hit_fraction(saliency.shape, boxes, tolerance_px)
    return pointing_hits(saliency, boxes, tolerance_px).astype(np.float64)


def size_band(diameter_mm: Optional[float],
              size_bands: Sequence[Tuple[str, float, float]] = DEFAULT_SIZE_BANDS
              ) -> Optional[str]:
    """The name of the band ``low <= diameter < high`` of ``diameter_mm``, or None (no
    band, or no diameter)."""
    if diameter_mm is None or not np.isfinite(diameter_mm):
        return None
    for name, low, high in size_bands:
        if low <= diameter_mm < high:
            return str(name)
    return None


def _block(scores: Sequence[float], floors: Sequence[float],
           flat: Sequence[bool]) -> Optional[dict]:
    """``hit_rate``, ``random_floor`` (means), ``n``, ``n_flat``; None without trials."""
    if not len(scores):
        return None
    return dict(hit_rate=float(np.mean(scores)), random_floor=float(np.mean(floors)),
                n=len(scores), n_flat=int(np.sum(flat)))


def pointing_game(records: Iterable[Mapping], tolerance_px: float = 0.0,
                  size_bands: Sequence[Tuple[str, float, float]] = DEFAULT_SIZE_BANDS
                  ) -> dict:
    """The pointing game over views and findings.

    Args:
        records: one per (view, map), each a mapping with ``saliency`` ``(H, W)``,
            ``boxes`` ``(M, 4)`` px of the view's findings, and optionally
            ``diameters_mm`` ``(M,)`` (None / NaN entries: no band), ``ignore`` ``(M,)``
            bool (ignore regions, skipped) and ``view`` (a view name or index, the key of
            ``by_view``).
        tolerance_px: see :func:`pointing_hits`.
        size_bands: ``(name, low_mm, high_mm)`` bands.

    Returns:
        dict: ``hit_rate`` (mean score: hits 1, misses 0, flat maps their random floor),
        ``random_floor`` (mean :func:`hit_fraction`), ``n`` (findings scored), ``n_flat``
        (of them on a flat map), ``by_size`` {band: same keys, or None}, ``by_view``
        {view: same keys} in order of appearance, ``settings`` (``tolerance_px``,
        ``size_bands_mm``, an open band's end None). Without findings, ``hit_rate`` and
        ``random_floor`` are None and ``n`` 0.
    """
    trials = []            # (score, floor, flat, band, view)
    for record in records:
        saliency = _as_map(record['saliency'])
        boxes = _as_boxes(record['boxes'])
        num = len(boxes)
        diameters = record.get('diameters_mm')
        diameters = [None] * num if diameters is None else list(diameters)
        ignore = np.zeros(num, bool) if record.get('ignore') is None else \
            np.asarray(record['ignore'], bool).reshape(num)
        if len(diameters) != num:
            raise ValueError(f'{num} boxes but {len(diameters)} diameters')
        keep = ~ignore
        scores = pointing_scores(saliency, boxes[keep], tolerance_px)
        floors = hit_fraction(saliency.shape, boxes[keep], tolerance_px)
        flat = not has_peak(saliency)
        kept_diameters = [d for d, k in zip(diameters, keep) if k]
        for score, floor, diameter in zip(scores, floors, kept_diameters):
            band = size_band(None if diameter is None else float(diameter), size_bands)
            trials.append((score, floor, flat, band, record.get('view')))
    return _summarise(trials, tolerance_px, size_bands)


def _summarise(trials: Sequence[tuple], tolerance_px: float,
               size_bands: Sequence[Tuple[str, float, float]]) -> dict:
    """The result of :func:`pointing_game` from its ``(score, floor, flat, band, view)``
    trials."""
    def block(selected):
        selected = list(selected)
        return _block([t[0] for t in selected], [t[1] for t in selected],
                      [t[2] for t in selected])

    overall = block(trials) or dict(hit_rate=None, random_floor=None, n=0, n_flat=0)
    views: Dict[Hashable, None] = dict.fromkeys(t[4] for t in trials if t[4] is not None)
    return dict(
        overall,
        by_size={str(name): block(t for t in trials if t[3] == str(name))
                 for name, _, _ in size_bands},
        by_view={view: block(t for t in trials if t[4] == view) for view in views},
        settings=dict(tolerance_px=float(tolerance_px),
                      size_bands_mm=[[str(name), float(low),
                                      float(high) if np.isfinite(high) else None]
                                     for name, low, high in size_bands]))

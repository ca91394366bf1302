"""3D evaluation of mm-sized findings from X-ray views: plain functions (numpy only).

Used by :class:`~.xray_metric.XrayDet3DMetric` (``tools/test.py``, validation during
training) and by ``tools/evaluate.py`` (prediction files from any method). All lengths are
mm in the ``ct`` frame; boxes are ``[x, y, z, dx, dy, dz, yaw]`` (centre, full extents) and
are treated as **axis-aligned** (yaw is ignored: every box in this project has yaw = 0).

Ground truth per scan (:class:`CaseGT`) has findings with a class label, an ignore flag
(LUNA16's "irrelevant findings") and a diameter. Predictions per scan (:class:`CasePred`)
have boxes, scores and labels. Every figure is computed per class; the top-level figures
are the mean over the classes that have ground truth.

Metrics
-------
**AP at 3D IoU** (``AP_iou@t``, default t in {0.1, 0.25, 0.5}): axis-aligned 3D IoU.
Matching follows mmdet3d's ``indoor_eval`` (PASCAL VOC): predictions are taken in
descending score order; each goes to the ground-truth finding it overlaps most; it is a
true positive if that IoU is >= t and the finding is not taken yet, otherwise a false
positive (so a duplicate is a false positive even when it also overlaps a second finding).

**AP at centre distance** (``AP_dist@dmm``, default d in {2, 4, 8, 16} mm, and their mean
``mAP_dist``): nuScenes matching. Predictions in descending score order each take the
*nearest not yet matched* finding whose centre is within d mm (Euclidean, 3D, ``<= d``);
predictions that find none are false positives.

Both APs use **101-point interpolation** (COCO): with the precision envelope
``p(r) = max{precision_i : recall_i >= r}`` (0 where recall r is never reached),
``AP = mean(p(r) for r in 0, 0.01, ..., 1)``. :func:`average_precision` also offers
``'area'`` (the exact area under the envelope, mmdet3d's ``indoor_eval`` / VOC 2010+).
Score ties are broken by scan order, then by the order of the predictions in a scan
(stable sort), as in pycocotools.

**FROC / CPM** (LUNA16, https://luna16.grand-challenge.org/Evaluation/): a prediction *hits*
a finding when its centre lies within the finding's radius (``diameter_mm / 2``, ``<=``) of
the finding's centre. Exactly as in the LUNA16 evaluation script:

* a finding counts as detected at the score of the best prediction that hits it; further
  predictions hitting the same finding are **not** false positives (LUNA16 ignores these
  "double detections" -- unlike the APs, where duplicates are false positives), and one
  prediction may detect two findings;
* predictions hitting an ignore region are neither true nor false positives;
* every other prediction is a false positive.

An operating point is a score threshold ``s`` (every distinct score): it keeps the
predictions scoring ``>= s``. Its **FP rate** is the number of kept false positives divided
by the **number of scans evaluated, negative scans (no findings) included**; its
sensitivity is the fraction of findings detected at a score ``>= s``. The curve starts at
``(0, 0)`` (nothing kept). The sensitivity at an FP rate ``f`` is that of the operating
point with the most FPs not exceeding ``f`` -- a step function, no interpolation between
operating points (this is what the LUNA16 script's linear ``np.interp`` on its ROC points
amounts to, except at a score shared by a true and a false positive, where LUNA16 draws a
diagonal and this takes the lower step). Where the curve ends below ``f`` (all predictions
kept and still fewer FPs than ``f`` per scan), the sensitivity at ``f`` is the final
sensitivity of the curve, as LUNA16's ``np.interp`` holds its last value. The **CPM** is
the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs per scan.

**Centre error** (``centre_error_mm``): mean Euclidean centre distance of the true
positives of the centre-distance matching at the largest distance threshold (16 mm).

**Size bands** (``by_size``; default ``3-6mm`` = [3, 6), ``6-10mm`` = [6, 10),
``>10mm`` = [10, inf) of ``diameter_mm``): all of the above for the findings in the band;
findings of other sizes become ignore regions for that band (hits on them count neither
way), and every other prediction stays a false positive, so a band's FP rate is the
detector's whole FP rate. Findings outside every band count only in the overall figures.

**Class-agnostic** (:func:`class_agnostic_cases`, :func:`class_agnostic_preds`, class
names :data:`CLASS_AGNOSTIC`): the same figures with every finding and every predicted box
of one class, so a finding is hit by a box of any class whose centre lies within its
radius: whether the findings are found at all, apart from naming them. It is not the
per-class figures made lenient: the false positives of every class count against one
FP rate, and findings weigh by their number, not by their class.

**Absent, not zero**: a class or band without ground truth has no figures: ``None``
(JSON ``null``) in the nested result and no key in :func:`flatten_metrics`; never NaN or 0.
A figure without a defined value (the centre error when nothing is matched) is ``None``
too. With ground truth but no predictions, APs, sensitivities and CPM are 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from projects.mv2d_xray.core.data_format import CaseGT, CasePred

DEFAULT_DIST_THRS_MM = (2.0, 4.0, 8.0, 16.0)
DEFAULT_IOU_THRS = (0.1, 0.25, 0.5)
DEFAULT_FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: ``(name, low_mm, high_mm)``: a finding is in a band when ``low <= diameter < high``.
DEFAULT_SIZE_BANDS = (('3-6mm', 3.0, 6.0), ('6-10mm', 6.0, 10.0), ('>10mm', 10.0, math.inf))

#: Match status of a prediction.
TP, FP, IGNORED = 1, 0, -1


#: The one class name of the class-agnostic scoring (:func:`class_agnostic_cases`).
CLASS_AGNOSTIC = ('any class',)


# -- pairwise geometry ---------------------------------------------------------------------
def aligned_iou_3d(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of axis-aligned 3D boxes (yaw ignored).

    Args:
        boxes_a: ``(P, >=6)`` boxes ``[x, y, z, dx, dy, dz, ...]``.
        boxes_b: ``(G, >=6)``.

    Returns:
        ``(P, G)`` IoU in [0, 1] (0 where both volumes are 0).
    """
    a = np.asarray(boxes_a, np.float64).reshape(-1, np.shape(boxes_a)[-1])
    b = np.asarray(boxes_b, np.float64).reshape(-1, np.shape(boxes_b)[-1])
    a_min, a_max = a[:, None, :3] - a[:, None, 3:6] / 2, a[:, None, :3] + a[:, None, 3:6] / 2
    b_min, b_max = b[None, :, :3] - b[None, :, 3:6] / 2, b[None, :, :3] + b[None, :, 3:6] / 2
    inter = np.clip(np.minimum(a_max, b_max) - np.maximum(a_min, b_min), 0, None).prod(-1)
    union = a[:, None, 3:6].prod(-1) + b[None, :, 3:6].prod(-1) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def centre_distances(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances (mm) between box centres: ``(P, G)``."""
    a = np.asarray(boxes_a, np.float64).reshape(-1, np.shape(boxes_a)[-1])[:, :3]
    b = np.asarray(boxes_b, np.float64).reshape(-1, np.shape(boxes_b)[-1])[:, :3]
    return np.linalg.norm(a[:, None] - b[None], axis=-1)


# -- matching ------------------------------------------------------------------------------
def _score_order(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties in input order."""
    return np.argsort(-np.asarray(scores, np.float64), kind='stable')


def match_by_distance(dist: np.ndarray, scores: np.ndarray, valid: np.ndarray,
                      ignore: np.ndarray, thr: float) -> Tuple[np.ndarray, np.ndarray]:
    """Greedy nuScenes matching on centre distance in one scan.

    Predictions in descending score order each take the nearest not yet matched valid
    finding within ``thr`` (``dist <= thr``) and become true positives; a prediction
    without one is ignored when it lies within ``thr`` of an ignore region (which absorbs
    any number of predictions), otherwise it is a false positive.

    Args:
        dist: ``(P, G)`` centre distances in mm.
        scores: ``(P,)``.
        valid: ``(G,)`` bool, findings to be found.
        ignore: ``(G,)`` bool, ignore regions (disjoint from ``valid``).
        thr: distance threshold in mm.

    Returns:
        tuple: ``status`` ``(P,)`` in {TP, FP, IGNORED} and ``matched`` ``(P,)``, the
        index of the matched finding (-1 if none).
    """
    num_pred = len(scores)
    status = np.full(num_pred, FP, np.int8)
    matched = np.full(num_pred, -1, np.int64)
    if num_pred == 0 or dist.shape[1] == 0:
        return status, matched
    near_valid = (dist <= thr) & valid[None]
    status[((dist <= thr) & ignore[None]).any(1)] = IGNORED    # unless matched below
    candidates = np.flatnonzero(near_valid.any(1))
    taken = np.zeros(dist.shape[1], bool)
    for p in candidates[_score_order(scores[candidates])]:
        free = near_valid[p] & ~taken
        if free.any():
            j = int(np.argmin(np.where(free, dist[p], np.inf)))
            status[p], matched[p], taken[j] = TP, j, True
    return status, matched


def match_by_iou(iou: np.ndarray, scores: np.ndarray, valid: np.ndarray,
                 ignore: np.ndarray, thr: float) -> Tuple[np.ndarray, np.ndarray]:
    """Greedy PASCAL VOC / mmdet3d ``indoor_eval`` matching on 3D IoU in one scan.

    Predictions in descending score order each go to the valid finding they overlap most;
    IoU >= ``thr`` with a finding not yet taken gives a true positive; IoU >= ``thr`` with
    a taken finding gives a false positive (a duplicate). Below ``thr``, a prediction is
    ignored when it overlaps an ignore region with IoU >= ``thr``, otherwise it is a false
    positive. (``indoor_eval`` tests ``IoU > thr``; the two differ only at exact ties.)

    Args / Returns: as :func:`match_by_distance`, with ``iou`` ``(P, G)``.
    """
    num_pred = len(scores)
    status = np.full(num_pred, FP, np.int8)
    matched = np.full(num_pred, -1, np.int64)
    if num_pred == 0 or iou.shape[1] == 0:
        return status, matched
    iou_valid = np.where(valid[None], iou, -1.0)
    best = iou_valid.argmax(1)
    best_iou = iou_valid[np.arange(num_pred), best]
    status[(best_iou < thr) & ((iou >= thr) & ignore[None]).any(1)] = IGNORED
    candidates = np.flatnonzero(best_iou >= thr)
    taken = np.zeros(iou.shape[1], bool)
    for p in candidates[_score_order(scores[candidates])]:
        j = int(best[p])
        if not taken[j]:
            status[p], matched[p], taken[j] = TP, j, True
    return status, matched


# -- precision / recall / AP ---------------------------------------------------------------
def precision_recall(scores: np.ndarray, is_tp: np.ndarray,
                     num_gt: int) -> Tuple[np.ndarray, np.ndarray]:
    """Cumulative recall and precision over predictions in descending score order.

    Args:
        scores: ``(D,)`` scores of the non-ignored predictions of all scans.
        is_tp: ``(D,)`` bool.
        num_gt: number of findings to be found (> 0).

    Returns:
        tuple: ``recall`` ``(D,)`` and ``precision`` ``(D,)``.
    """
    order = _score_order(scores)
    tp = np.cumsum(np.asarray(is_tp, bool)[order])
    fp = np.cumsum(~np.asarray(is_tp, bool)[order])
    return tp / float(num_gt), tp / np.maximum(tp + fp, 1)


def average_precision(recall: np.ndarray, precision: np.ndarray,
                      mode: str = '101point') -> float:
    """Average precision from a precision / recall curve.

    Args:
        recall: ``(D,)`` non-decreasing recall after each prediction.
        precision: ``(D,)`` precision after each prediction.
        mode: ``'101point'`` (default, COCO): the mean of the precision envelope
            ``p(r) = max{precision_i : recall_i >= r}`` at ``r = 0, 0.01, ..., 1``, 0 where
            ``r`` is not reached (a 1e-9 tolerance keeps ``recall = k / 100`` from missing
            its point through rounding). ``'area'``: the area under the envelope (VOC
            2010+, mmdet3d ``indoor_eval``'s ``mode='area'``).

    Returns:
        float: AP in [0, 1] (0 for an empty curve).
    """
    recall = np.asarray(recall, np.float64).reshape(-1)
    precision = np.asarray(precision, np.float64).reshape(-1)
    if recall.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    if mode == '101point':
        points = np.linspace(0.0, 1.0, 101)
        idx = np.searchsorted(recall, points - 1e-9, side='left')
        values = np.where(idx < recall.size, envelope[np.minimum(idx, recall.size - 1)], 0.0)
        return float(values.mean())
    if mode == 'area':
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], envelope, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        steps = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    raise ValueError(f"mode must be '101point' or 'area', got {mode!r}")


# -- FROC ----------------------------------------------------------------------------------
def froc_curve(finding_scores: np.ndarray, fp_scores: np.ndarray, num_scans: int,
               num_findings: int) -> Tuple[np.ndarray, np.ndarray]:
    """FROC operating points (see the module docstring).

    Args:
        finding_scores: ``(N,)`` per finding, the best score of a prediction hitting it
            (``-inf`` when none does).
        fp_scores: ``(F,)`` scores of the false positives.
        num_scans: scans evaluated, negatives included (> 0).
        num_findings: findings to be found (> 0).

    Returns:
        tuple: ``fp_per_scan`` and ``sensitivity``, ``(K + 1,)`` each, one point per
        distinct score (descending), starting at ``(0, 0)``.
    """
    finding_scores = np.asarray(finding_scores, np.float64).reshape(-1)
    fp_scores = np.sort(np.asarray(fp_scores, np.float64).reshape(-1))
    hit = np.sort(finding_scores[np.isfinite(finding_scores)])
    thresholds = np.unique(np.concatenate([hit, fp_scores]))[::-1]
    num_fp = fp_scores.size - np.searchsorted(fp_scores, thresholds, side='left')
    num_tp = hit.size - np.searchsorted(hit, thresholds, side='left')
    fp_per_scan = np.concatenate([[0.0], num_fp / float(num_scans)])
    sensitivity = np.concatenate([[0.0], num_tp / float(num_findings)])
    return fp_per_scan, sensitivity


def sensitivity_at(fp_per_scan: np.ndarray, sensitivity: np.ndarray,
                   rates: Sequence[float]) -> np.ndarray:
    """Sensitivity of the operating point with the most FPs per scan not above each rate
    (the final sensitivity where the curve ends below a rate). ``(len(rates),)``."""
    fp_per_scan, sensitivity = np.asarray(fp_per_scan), np.asarray(sensitivity)
    out = []
    for rate in rates:
        reached = fp_per_scan <= rate * (1 + 1e-12)
        out.append(float(sensitivity[reached].max()) if reached.any() else 0.0)
    return np.asarray(out)


# -- evaluation ----------------------------------------------------------------------------
def _key_dist(thr: float) -> str:
    return f'AP_dist@{thr:g}mm'


def _key_iou(thr: float) -> str:
    return f'AP_iou@{thr:g}'


def _key_rate(rate: float) -> str:
    return f'{rate:g}'


@dataclass
class _Settings:
    """Thresholds of one evaluation.

    Attributes:
        dist_thrs_mm: centre-distance thresholds, mm (those matched; see
            :func:`_settings`).
        iou_thrs: 3D IoU thresholds.
        froc_fp_rates: FPs per scan at which the FROC is read.
        centre_error_thr_mm: the distance matching whose true positives give the centre
            error, mm.
        ap_interpolation: ``'101point'`` or ``'area'`` (:func:`average_precision`).
    """
    dist_thrs_mm: Tuple[float, ...]
    iou_thrs: Tuple[float, ...]
    froc_fp_rates: Tuple[float, ...]
    centre_error_thr_mm: float
    ap_interpolation: str = '101point'


#: The predictions of a scan that has none (one object, so a memo can key it).
_NO_PREDICTIONS = CasePred.empty()
#: A size band: ``(name, (low_mm, high_mm))``, ``low <= diameter < high``.
_Band = Tuple[str, Tuple[float, float]]


@dataclass
class _ScanMatches:
    """The matching of one scan for one class and size band.

    Attributes:
        num_gt, num_ignore, num_pred: findings to be found, ignore regions and
            predictions of the class in the scan.
        dist, iou: ``{threshold: (scores (D,), status (D,))}`` of the predictions that are
            not ignored (status TP or FP), per distance (mm) / IoU threshold.
        finding_scores: ``(num_gt,)`` per finding the best score of a prediction hitting
            it (FROC), ``-inf`` when none does.
        fp_scores: ``(F,)`` scores of the FROC false positives.
        centre_errors: ``(M,)`` centre distances (mm) of the true positives of the
            matching at ``centre_error_thr_mm``.
    """
    num_gt: int
    num_ignore: int
    num_pred: int
    dist: Dict[float, Tuple[np.ndarray, np.ndarray]]
    iou: Dict[float, Tuple[np.ndarray, np.ndarray]]
    finding_scores: np.ndarray
    fp_scores: np.ndarray
    centre_errors: np.ndarray


def _finding_masks(gt: CaseGT, label: int,
                   band: Optional[Tuple[float, float]]) -> Tuple[np.ndarray, np.ndarray]:
    """``valid`` and ``ignore``, ``(G,)`` bool each: the scan's findings of class ``label``
    to be found, and its ignore regions for that class -- the findings flagged ignore and,
    with a size ``band`` ``(low_mm, high_mm)``, those of the class outside the band."""
    in_class = gt.labels == label
    in_band = np.ones_like(in_class) if band is None else \
        (gt.diameters_mm >= band[0]) & (gt.diameters_mm < band[1])
    return in_class & ~gt.ignore & in_band, in_class & (gt.ignore | ~in_band)


def _match_scan(gt: CaseGT, pred: CasePred, label: int, band: Optional[Tuple[float, float]],
                cfg: _Settings) -> _ScanMatches:
    """Match one scan's predictions of class ``label`` to its findings (ct frame, mm) at
    every distance and IoU threshold, and find the FROC hits (centre within the finding's
    radius)."""
    valid, ignore = _finding_masks(gt, label, band)
    keep = pred.labels == label
    boxes, scores = pred.boxes[keep], pred.scores[keep]
    dist = centre_distances(boxes, gt.boxes)                  # (P, G) mm
    iou = aligned_iou_3d(boxes, gt.boxes)                     # (P, G)
    by_dist, by_iou, centre_errors = {}, {}, np.zeros(0)
    for thr in cfg.dist_thrs_mm:
        status, matched = match_by_distance(dist, scores, valid, ignore, thr)
        by_dist[thr] = (scores[status != IGNORED], status[status != IGNORED])
        if thr == cfg.centre_error_thr_mm:
            tp = np.flatnonzero(status == TP)
            centre_errors = dist[tp, matched[tp]]
    for thr in cfg.iou_thrs:
        status, _ = match_by_iou(iou, scores, valid, ignore, thr)
        by_iou[thr] = (scores[status != IGNORED], status[status != IGNORED])
    hits = dist <= (gt.diameters_mm / 2.0)[None]              # (P, G)
    hit_scores = np.where(hits[:, valid], scores[:, None], -np.inf)
    finding_scores = hit_scores.max(0) if len(scores) else np.full(int(valid.sum()), -np.inf)
    return _ScanMatches(num_gt=int(valid.sum()), num_ignore=int(ignore.sum()),
                        num_pred=int(keep.sum()), dist=by_dist, iou=by_iou,
                        finding_scores=finding_scores,
                        fp_scores=scores[~(hits[:, valid | ignore].any(1))],
                        centre_errors=centre_errors)


def _pooled_ap(scans: Sequence[_ScanMatches], kind: str, thr: float, num_gt: int,
               cfg: _Settings) -> float:
    """AP of the matching ``kind`` (``'dist'`` or ``'iou'``) at ``thr`` over all scans."""
    pairs = [getattr(scan, kind)[thr] for scan in scans]
    scores = np.concatenate([p[0] for p in pairs])
    is_tp = np.concatenate([p[1] for p in pairs]) == TP
    rec, prec = precision_recall(scores, is_tp, num_gt)
    return average_precision(rec, prec, cfg.ap_interpolation)


def _froc_figures(scans: Sequence[_ScanMatches], num_gt: int, cfg: _Settings) -> dict:
    """``FROC`` ``{rate: sensitivity}``, ``CPM`` and ``froc_curve`` (its corners) over all
    scans (the FP rate is per scan of ``scans``)."""
    fps, sens = froc_curve(np.concatenate([s.finding_scores for s in scans]),
                           np.concatenate([s.fp_scores for s in scans]), len(scans), num_gt)
    at_rates = sensitivity_at(fps, sens, cfg.froc_fp_rates)
    # the curve's corners: where the sensitivity steps up, and its end (a step curve drawn
    # 'post' through these is the full curve; the file stays small with many predictions)
    keep = np.flatnonzero(np.r_[True, sens[1:] != sens[:-1]])
    keep = np.unique(np.r_[keep, len(sens) - 1])
    return dict(FROC={_key_rate(r): float(s) for r, s in zip(cfg.froc_fp_rates, at_rates)},
                CPM=float(at_rates.mean()),
                froc_curve=dict(fp_per_scan=fps[keep].tolist(),
                                sensitivity=sens[keep].tolist()))


def _block_figures(scans: Sequence[_ScanMatches], cfg: _Settings) -> Optional[dict]:
    """All figures of one class and size band from its scans' matches (``None`` without
    ground truth)."""
    num_gt = sum(s.num_gt for s in scans)
    if num_gt == 0:
        return None
    block = dict(num_gt=num_gt, num_ignore=sum(s.num_ignore for s in scans),
                 num_pred=sum(s.num_pred for s in scans), num_scans=len(scans))
    for thr in cfg.iou_thrs:
        block[_key_iou(thr)] = _pooled_ap(scans, 'iou', thr, num_gt, cfg)
    for thr in cfg.dist_thrs_mm:
        block[_key_dist(thr)] = _pooled_ap(scans, 'dist', thr, num_gt, cfg)
    block['mAP_dist'] = float(np.mean([block[_key_dist(t)] for t in cfg.dist_thrs_mm]))
    froc = _froc_figures(scans, num_gt, cfg)
    block.update(FROC=froc['FROC'], CPM=froc['CPM'])
    errors = np.concatenate([s.centre_errors for s in scans])
    block['centre_error_mm'] = float(errors.mean()) if errors.size else None
    block['num_matched'] = int(errors.size)
    block['froc_curve'] = froc['froc_curve']
    return block


def _evaluate_block(cases: Mapping[str, CaseGT], preds: Mapping[str, CasePred], label: int,
                    band: Optional[Tuple[float, float]], cfg: _Settings,
                    memo: Optional[dict] = None) -> Optional[dict]:
    """All figures for one class and one size band (``None`` = all sizes) over every scan
    of ``cases`` (``None`` without ground truth). ``memo`` keeps each scan's matching by
    the identity of its ground truth and predictions (see :func:`evaluate_detections`)."""
    scans = []
    for token, gt in cases.items():
        pred = preds.get(token) or _NO_PREDICTIONS
        key = (id(gt), id(pred), label, band)
        if memo is None or key not in memo:
            matches = _match_scan(gt, pred, label, band, cfg)
            if memo is None:
                scans.append(matches)
                continue
            memo[key] = matches
        scans.append(memo[key])
    return _block_figures(scans, cfg)


def _mean_blocks(blocks: List[Optional[dict]], cfg: _Settings) -> Optional[dict]:
    """Mean of per-class blocks over the classes that have ground truth."""
    present = [b for b in blocks if b is not None]
    if not present:
        return None
    if len(present) == 1:
        return dict(present[0])
    out = {k: int(sum(b[k] for b in present)) for k in
           ('num_gt', 'num_ignore', 'num_pred', 'num_matched')}
    out['num_scans'] = present[0]['num_scans']
    scalar_keys = ['CPM', 'mAP_dist'] + [_key_dist(t) for t in cfg.dist_thrs_mm] + \
        [_key_iou(t) for t in cfg.iou_thrs]
    for key in scalar_keys:
        out[key] = float(np.mean([b[key] for b in present]))
    out['FROC'] = {k: float(np.mean([b['FROC'][k] for b in present]))
                   for k in present[0]['FROC']}
    errors = [b['centre_error_mm'] for b in present if b['centre_error_mm'] is not None]
    out['centre_error_mm'] = float(np.mean(errors)) if errors else None
    out['froc_curve'] = None   # curves of different classes do not average
    return out


def _check_cases(cases: Mapping[str, CaseGT], preds: Mapping[str, CasePred]) -> None:
    """``KeyError`` for predictions of a scan without ground truth, ``ValueError`` for no
    scans."""
    unknown = [t for t in preds if t not in cases]
    if unknown:
        raise KeyError(f'case {unknown[0]!r} has predictions but no ground truth '
                       f'({len(unknown)} such case(s))')
    if not cases:
        raise ValueError('no scans to evaluate')


def _settings(dist_thrs_mm: Sequence[float], iou_thrs: Sequence[float],
              froc_fp_rates: Sequence[float], centre_error_thr_mm: Optional[float],
              ap_interpolation: str) -> Tuple[_Settings, _Settings]:
    """The settings matched (the distance thresholds sorted, plus the centre-error one)
    and the settings reported (the distance thresholds as given)."""
    if centre_error_thr_mm is None:
        centre_error_thr_mm = max(dist_thrs_mm)
    reported = tuple(float(t) for t in dist_thrs_mm)
    matched = _Settings(tuple(sorted(set(reported) | {float(centre_error_thr_mm)})),
                        tuple(float(t) for t in iou_thrs),
                        tuple(float(r) for r in froc_fp_rates), float(centre_error_thr_mm),
                        ap_interpolation)
    report = _Settings(reported, matched.iou_thrs, matched.froc_fp_rates,
                       matched.centre_error_thr_mm, ap_interpolation)
    return matched, report


def _drop_unreported_distances(block: Optional[dict], cfg: _Settings,
                               report_cfg: _Settings) -> Optional[dict]:
    """Remove from ``block`` (in place) the AP of a distance threshold matched only for the
    centre error, and take ``mAP_dist`` over the reported thresholds."""
    if block is not None and set(cfg.dist_thrs_mm) != set(report_cfg.dist_thrs_mm):
        for thr in cfg.dist_thrs_mm:
            if thr not in report_cfg.dist_thrs_mm:
                block.pop(_key_dist(thr), None)
        block['mAP_dist'] = float(np.mean([block[_key_dist(t)]
                                           for t in report_cfg.dist_thrs_mm]))
    return block


def _scan_counts(cases: Mapping[str, CaseGT], preds: Mapping[str, CasePred]) -> dict:
    """Counts over all classes and sizes: scans, negative scans (no finding to be found),
    findings, ignore regions, predictions."""
    all_ignore = np.asarray(np.concatenate([gt.ignore for gt in cases.values()]), bool)
    return dict(
        num_scans=len(cases),
        num_negative_scans=int(sum(1 for gt in cases.values() if not (~gt.ignore).any())),
        num_gt=int((~all_ignore).sum()), num_ignore=int(all_ignore.sum()),
        num_pred=int(sum(len(p.scores) for p in preds.values())))


def _by_class(classes: Sequence[str], per_class: Dict[int, Optional[dict]],
              per_class_band: Dict[Tuple[int, str], Optional[dict]],
              bands: Sequence[_Band]) -> dict:
    """``{class name: figures or None}``, each with its own ``by_size``."""
    by_class = {}
    for label, name in enumerate(classes):
        block = per_class[label]
        if block is not None:
            block = dict(block, by_size={b: per_class_band[(label, b)] for b, _ in bands})
        by_class[name] = block
    return by_class


def _settings_record(classes: Sequence[str], report_cfg: _Settings,
                     bands: Sequence[_Band]) -> dict:
    """The ``settings`` entry of the result (JSON: an open band's upper end is ``null``)."""
    return dict(
        classes=list(classes), dist_thrs_mm=list(report_cfg.dist_thrs_mm),
        iou_thrs=list(report_cfg.iou_thrs), froc_fp_rates=list(report_cfg.froc_fp_rates),
        centre_error_thr_mm=report_cfg.centre_error_thr_mm,
        size_bands_mm=[[name, lo, hi if math.isfinite(hi) else None]
                       for name, (lo, hi) in bands],
        ap_interpolation=report_cfg.ap_interpolation, iou='axis-aligned 3D',
        froc='LUNA16: hit = centre within diameter/2; FP rate over all scans')


def evaluate_detections(
        cases: Mapping[str, CaseGT],
        preds: Mapping[str, CasePred],
        classes: Sequence[str],
        dist_thrs_mm: Sequence[float] = DEFAULT_DIST_THRS_MM,
        iou_thrs: Sequence[float] = DEFAULT_IOU_THRS,
        froc_fp_rates: Sequence[float] = DEFAULT_FROC_FP_RATES,
        size_bands: Sequence[Tuple[str, float, float]] = DEFAULT_SIZE_BANDS,
        centre_error_thr_mm: Optional[float] = None,
        ap_interpolation: str = '101point',
        progress: Optional[Callable[[list], Iterable]] = None,
        memo: Optional[dict] = None) -> dict:
    """Evaluate 3D predictions against ground truth (definitions in the module docstring).

    Boxes of both are ``(N, 7)`` ``[x, y, z, dx, dy, dz, yaw]`` in the ``ct`` frame, mm
    (centre and full extents; yaw ignored); diameters are mm.

    Args:
        cases: ``{token: CaseGT}``, the scans to evaluate (negatives included).
        preds: ``{token: CasePred}``; a scan without an entry has no predictions. Tokens
            that are not in ``cases`` raise ``KeyError``.
        classes: class names, index = label.
        dist_thrs_mm: centre-distance thresholds in mm.
        iou_thrs: 3D IoU thresholds.
        froc_fp_rates: FPs per scan at which FROC sensitivities are read (CPM = mean).
        size_bands: ``(name, low_mm, high_mm)`` diameter bands, ``low <= d < high``.
        centre_error_thr_mm: the distance matching used for the centre error. Defaults to
            ``max(dist_thrs_mm)``.
        ap_interpolation: ``'101point'`` (default) or ``'area'``
            (:func:`average_precision`).
        progress: wraps the list of (class, size band) blocks to evaluate, e.g.
            ``tqdm`` for a progress bar on large inputs. Defaults to None (none).
        memo: a dict shared by calls with the same settings on the same ``CaseGT`` /
            ``CasePred`` objects (e.g. the resamples of a bootstrap,
            :mod:`~.bootstrap`): each scan is matched once, later calls only pool the
            matches. The objects must stay alive and unchanged while the memo is used
            (it keys them by identity). Defaults to None (no memo).

    Returns:
        dict: the top-level figures (``CPM``, ``FROC`` {rate: sensitivity}, ``mAP_dist``,
        ``AP_dist@{d}mm``, ``AP_iou@{t}``, ``centre_error_mm``, counts, ``froc_curve``),
        ``by_size`` {band: figures or None}, ``by_class`` {name: figures or None, each
        with its own ``by_size``} when there are several classes, and ``settings``.
        Figures are ``None`` where there is no ground truth.
    """
    _check_cases(cases, preds)
    cfg, report_cfg = _settings(dist_thrs_mm, iou_thrs, froc_fp_rates, centre_error_thr_mm,
                                ap_interpolation)
    bands = [(str(name), (float(lo), float(hi))) for name, lo, hi in size_bands]
    labels = range(len(classes))

    def evaluate(label: int, band: Optional[Tuple[float, float]]) -> Optional[dict]:
        return _drop_unreported_distances(
            _evaluate_block(cases, preds, label, band, cfg, memo), cfg, report_cfg)

    blocks = [(label, None, None) for label in labels] + \
        [(label, name, rng) for label in labels for name, rng in bands]
    done = {(label, name): evaluate(label, rng) for label, name, rng in
            (blocks if progress is None else progress(blocks))}
    per_class = {label: done[(label, None)] for label in labels}
    per_class_band = {(label, name): done[(label, name)]
                      for label in labels for name, _ in bands}
    top = _mean_blocks(list(per_class.values()), report_cfg)
    result = dict(top) if top is not None else _absent(report_cfg)
    result.update(_scan_counts(cases, preds))
    result['by_size'] = {name: _mean_blocks([per_class_band[(label, name)]
                                             for label in labels], report_cfg)
                         for name, _ in bands}
    if len(classes) > 1:
        result['by_class'] = _by_class(classes, per_class, per_class_band, bands)
    result['settings'] = _settings_record(classes, report_cfg, bands)
    return result


def _absent(cfg: _Settings) -> dict:
    """Top level when no class has ground truth: every figure ``None``."""
    out = dict(CPM=None, FROC=None, mAP_dist=None, centre_error_mm=None, froc_curve=None,
               num_matched=0)
    out.update({_key_dist(t): None for t in cfg.dist_thrs_mm})
    out.update({_key_iou(t): None for t in cfg.iou_thrs})
    return out


# -- reporting -----------------------------------------------------------------------------
def _scalar_keys(result: dict) -> List[str]:
    """The single-number figures of a result, in table order."""
    settings = result['settings']
    return ['CPM', 'mAP_dist'] + [_key_dist(t) for t in settings['dist_thrs_mm']] + \
        [_key_iou(t) for t in settings['iou_thrs']] + ['centre_error_mm']


def flatten_metrics(result: dict) -> Dict[str, float]:
    """Flat ``{name: float}`` for logging: the top-level figures and ``FROC@{rate}``, then
    ``{figure}_{band}`` per size band and ``{class}/{figure}`` per class (several classes
    only). Absent figures have no key."""
    flat = {}

    def add(block, suffix='', prefix=''):
        if block is None:
            return
        for key in _scalar_keys(result):
            if block.get(key) is not None:
                flat[f'{prefix}{key}{suffix}'] = float(block[key])
        for rate, sens in (block.get('FROC') or {}).items():
            flat[f'{prefix}FROC@{rate}{suffix}'] = float(sens)

    add(result)
    for band, block in result['by_size'].items():
        if block is not None:
            for key in ('CPM', 'mAP_dist', _key_iou(result['settings']['iou_thrs'][0]),
                        'centre_error_mm'):
                if block.get(key) is not None:
                    flat[f'{key}_{band}'] = float(block[key])
    for name, block in (result.get('by_class') or {}).items():
        add(block, prefix=f'{name}/')
    return flat


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return '-'
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f'{value:.{digits}f}'


def format_table(result: dict) -> str:
    """The result as two GitHub-flavoured markdown tables (readable in a terminal): the
    figures per row (all, each size band, each class), then FROC sensitivities. ``-``
    marks an absent figure."""
    settings = result['settings']
    rows = [('all', result)]
    rows += [(band, block) for band, block in result['by_size'].items()]
    for name, block in (result.get('by_class') or {}).items():
        rows.append((name, block))
        if block is not None:
            rows += [(f'{name} {band}', sub) for band, sub in block['by_size'].items()]
    keys = _scalar_keys(result)
    header = ['findings', 'n_gt', 'n_scans'] + [k.replace('centre_error_mm', 'centre err (mm)')
                                                for k in keys]
    table1 = [header]
    for name, block in rows:
        if block is None:
            table1.append([name, '0', str(result['num_scans'])] + ['-'] * len(keys))
        else:
            table1.append([name, str(block['num_gt']), str(block['num_scans'])] +
                          [_fmt(block.get(k), 2 if k == 'centre_error_mm' else 4)
                           for k in keys])
    rates = [_key_rate(r) for r in settings['froc_fp_rates']]
    table2 = [['FROC: sensitivity at FP/scan'] + rates + ['CPM']]
    for name, block in rows:
        froc = (block or {}).get('FROC') or {}
        table2.append([name] + [_fmt(froc.get(r)) for r in rates] +
                      [_fmt((block or {}).get('CPM'))])
    return markdown_table(table1) + '\n\n' + markdown_table(table2)


def class_agnostic_cases(cases: Mapping[str, CaseGT]) -> Dict[str, CaseGT]:
    """The cases with every finding of class 0, for scoring with :data:`CLASS_AGNOSTIC`
    (:func:`class_agnostic_preds` for the predictions). Boxes, ignore flags and diameters
    are the inputs' arrays (shared, not copied); the inputs are not changed.

    Args:
        cases: ``{token: CaseGT}``.

    Returns:
        dict: ``{token: CaseGT}``, new containers.
    """
    return {token: CaseGT(gt.boxes, np.zeros_like(gt.labels), gt.ignore, gt.diameters_mm)
            for token, gt in cases.items()}


def class_agnostic_preds(preds: Mapping[str, CasePred]) -> Dict[str, CasePred]:
    """The predictions with every box of class 0 (see :func:`class_agnostic_cases`).

    Args:
        preds: ``{token: CasePred}``.

    Returns:
        dict: ``{token: CasePred}``, new containers sharing boxes and scores.
    """
    return {token: CasePred(p.boxes, p.scores, np.zeros_like(p.labels))
            for token, p in preds.items()}


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table that also reads well in a terminal.

    Args:
        rows: the header row, then the body rows; every row has the same number of cells
            (strings).

    Returns:
        str: one line per row plus the rule under the header, no final newline; the first
        column left-aligned, the others right-aligned (``---:``), cells padded to the
        column width.
    """
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                 enumerate(zip(row, widths))]
        lines.append('| ' + ' | '.join(cells) + ' |')
        if n == 0:
            lines.append('|' + '|'.join(('-' * (w + 1) + ':') if i else '-' * (w + 2)
                                        for i, w in enumerate(widths)) + '|')
    return '\n'.join(lines)

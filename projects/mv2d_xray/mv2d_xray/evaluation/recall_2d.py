"""Where the 2D stage loses the findings: per finding box of a view, how high the RPN ranks
the first proposal that overlaps it, and whether a final 2D detection overlaps it.

MV2D lifts only the 2D stage's *detections* to 3D queries, so a finding no view detects
cannot be found in 3D. COCO AP / AR (:mod:`.coco2d`) say how many boxes the detections
hold; this says at which step the others are lost: not proposed at all (the anchors or the
features), proposed but ranked below the view's ribs and edges (the RPN's scoring), or
proposed high but dropped by the R-CNN.

**Frames and units.** Every box is ``[x1, y1, x2, y2]`` in px of the same image (the
network input of the view); widths are ``x2 - x1`` in those px. An *overlap* is an IoU of
at least ``iou_thr`` (default 0.1, the COCO AR@0.1 of the benchmark's 2D figures),
computed with mmdet's ``bbox_overlaps``.

**Records.** One record per view: ``gt_boxes`` ``(M, 4)`` (the findings' boxes; ignore
regions left out), ``proposals`` ``(K, 4)`` with ``proposal_scores`` ``(K,)`` (the RPN's
test-time proposals, ranked here by decreasing score, ties kept in order) and
``detections`` ``(D, 4)`` (the detections that become queries). Every box of every record
is one trial. A width band or an empty split has ``None`` figures, never 0.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from mmdet.structures.bbox import bbox_overlaps

#: Ranks reported: "among the first k proposals of the view".
DEFAULT_RANKS = (10, 50, 200)
#: Box-width bands in px (``low <= width < high``): under 4 px a 4 px anchor at stride 4
#: is the finest the RPN has.
DEFAULT_WIDTH_BANDS_PX = ((0.0, 4.0), (4.0, 8.0), (8.0, math.inf))
#: The IoU that counts as an overlap.
DEFAULT_IOU_THR = 0.1


def _boxes(boxes) -> torch.Tensor:
    """``(M, 4)`` float64 boxes from an array, a list or a tensor."""
    return torch.as_tensor(np.asarray(boxes, np.float64).reshape(-1, 4))


def first_overlap_rank(gt_boxes, proposals, scores=None,
                       iou_thr: float = DEFAULT_IOU_THR) -> np.ndarray:
    """Per ground-truth box, the 0-based rank of the first proposal overlapping it.

    Args:
        gt_boxes: ``(M, 4)`` boxes, px.
        proposals: ``(K, 4)`` boxes, px.
        scores: ``(K,)`` the proposals' scores: ranks by decreasing score (a stable sort,
            ties keep their order); None: the proposals are already ranked.
        iou_thr (float): the IoU that counts as an overlap.

    Returns:
        np.ndarray: ``(M,)`` int64 ranks; -1 where no proposal overlaps the box.
    """
    gt, props = _boxes(gt_boxes), _boxes(proposals)
    if scores is not None:
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(scores) != len(props):
            raise ValueError(f'{len(props)} proposals but {len(scores)} scores')
        props = props[torch.as_tensor(np.argsort(-scores, kind='stable'))]
    ranks = np.full(len(gt), -1, np.int64)
    if len(gt) == 0 or len(props) == 0:
        return ranks
    hits = (bbox_overlaps(gt, props) >= iou_thr).numpy()        # (M, K)
    found = hits.any(axis=1)
    ranks[found] = hits[found].argmax(axis=1)
    return ranks


def overlaps_any(gt_boxes, boxes, iou_thr: float = DEFAULT_IOU_THR) -> np.ndarray:
    """``(M,)`` bool: whether any of ``boxes`` ``(D, 4)`` overlaps each ground-truth box."""
    gt, other = _boxes(gt_boxes), _boxes(boxes)
    if len(gt) == 0 or len(other) == 0:
        return np.zeros(len(gt), bool)
    return (bbox_overlaps(gt, other) >= iou_thr).any(dim=1).numpy()


def band_name(low: float, high: float) -> str:
    """``'4-8 px'``; ``'>= 8 px'`` for an open band."""
    return f'>= {low:g} px' if math.isinf(high) else f'{low:g}-{high:g} px'


def _figures(ranks: np.ndarray, detected: np.ndarray, ks: Sequence[int]) -> dict:
    """``n`` and the recalls of one group of boxes (None when it is empty)."""
    n = len(ranks)
    figures = dict(n=n)
    for k in ks:
        figures[f'proposals_first_{k}'] = (float(((ranks >= 0) & (ranks < k)).mean())
                                           if n else None)
    figures['proposals_any'] = float((ranks >= 0).mean()) if n else None
    figures['detections'] = float(detected.mean()) if n else None
    return figures


def recall_2d(records: Iterable[Mapping], ranks: Sequence[int] = DEFAULT_RANKS,
              width_bands_px: Sequence[Tuple[float, float]] = DEFAULT_WIDTH_BANDS_PX,
              iou_thr: float = DEFAULT_IOU_THR) -> dict:
    """The recall of the findings' boxes at each step of the 2D stage.

    Args:
        records: per view ``gt_boxes``, ``proposals``, ``proposal_scores``, ``detections``
            (module docstring).
        ranks: the ``k`` of "among the first ``k`` proposals".
        width_bands_px: ``(low, high)`` px bands of the box width, ``low <= w < high``.
        iou_thr (float): the IoU that counts as an overlap.

    Returns:
        dict: ``iou_thr``, ``ranks``, ``all`` and ``by_width`` (band name -> figures);
        figures are ``n`` (boxes), ``proposals_first_<k>`` (share of the boxes overlapped
        by one of the view's first ``k`` proposals), ``proposals_any`` (by any proposal)
        and ``detections`` (by a detection).
    """
    if not 0.0 < iou_thr <= 1.0:
        raise ValueError(f'iou_thr must be in (0, 1], got {iou_thr}')
    if any(int(k) < 1 for k in ranks):
        raise ValueError(f'ranks must be >= 1, got {list(ranks)}')
    all_ranks, all_detected, widths = [], [], []
    for record in records:
        gt = np.asarray(record['gt_boxes'], np.float64).reshape(-1, 4)
        all_ranks.append(first_overlap_rank(gt, record['proposals'],
                                            record.get('proposal_scores'), iou_thr))
        all_detected.append(overlaps_any(gt, record['detections'], iou_thr))
        widths.append(gt[:, 2] - gt[:, 0])
    rank_arr = np.concatenate(all_ranks) if all_ranks else np.zeros(0, np.int64)
    detected = np.concatenate(all_detected) if all_detected else np.zeros(0, bool)
    width = np.concatenate(widths) if widths else np.zeros(0)
    ks = [int(k) for k in ranks]
    by_width = {}
    for low, high in width_bands_px:
        sel = (width >= low) & (width < high)
        by_width[band_name(low, high)] = _figures(rank_arr[sel], detected[sel], ks)
    return dict(iou_thr=float(iou_thr), ranks=ks, all=_figures(rank_arr, detected, ks),
                by_width=by_width)


def recall_2d_table(result: Mapping, title: Optional[str] = None) -> str:
    """Markdown table of :func:`recall_2d`: a row per width band and one for all boxes."""
    from projects.mv2d_xray.core.metric import markdown_table
    ks = result['ranks']
    head = ['box width', 'boxes', *(f'first {k} proposals' for k in ks), 'any proposal',
            'detections']

    def row(name, figures):
        cells = [figures.get(f'proposals_first_{k}') for k in ks]
        cells += [figures['proposals_any'], figures['detections']]
        return [name, str(figures['n']), *('-' if c is None else f'{c:.2f}' for c in cells)]

    rows = [head] + [row(name, f) for name, f in result['by_width'].items()]
    rows.append(row('all', result['all']))
    lines = [title] if title else []
    lines.append(f"share of the findings' boxes overlapped (IoU >= {result['iou_thr']:g})")
    return '\n'.join(lines) + '\n' + markdown_table(rows)

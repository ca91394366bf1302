"""Per-view 2D evaluation: COCO AP / AR of 2D detections against the converter's COCO
files (pycocotools), so the 2D stage of a multi-view detector can be judged on its own.

Detections are COCO results (``image_id``, ``category_id`` = class index + 1, ``bbox``
``[x, y, w, h]`` in original image pixels, ``score``). Items that carry ``token`` and
``view`` (the view name) instead of, or besides, ``image_id`` are resolved through the
COCO file's images (which have ``token`` and ``view``).

Figures (``pycocotools.cocoeval.COCOeval``, bbox, area range 'all'):

* ``AP``: COCO's AP averaged over IoU 0.5:0.05:0.95 (101-point interpolation);
* ``AP@t`` for each extra IoU threshold (default 0.1, 0.25, 0.5): small findings are a few
  pixels wide, where IoU 0.5 is already strict;
* ``AR@t``: recall at IoU ``t`` with at most ``max_dets`` detections per image;

each averaged over the categories that have ground truth in the images evaluated, for all
images (``overall``) and for the images of each view (``by_view``). Annotations with
``iscrowd = 1`` (ignore regions) neither count as ground truth nor make false positives.
A view or category without ground truth is absent (``None``), never 0.
"""
from __future__ import annotations

import contextlib
import io
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from projects.mv2d_xray.core.data_format import load_coco, resolve_detections
from projects.mv2d_xray.core.metric import markdown_table

DEFAULT_IOU_THRS_2D = (0.1, 0.25, 0.5)


def _summarise(cocoeval, iou_thrs: Sequence[float]) -> Optional[dict]:
    """Figures from an accumulated COCOeval (area 'all', the largest maxDets)."""
    precision = cocoeval.eval['precision']          # (T, R, K, A, M)
    recall = cocoeval.eval['recall']                # (T, K, A, M)
    thrs = np.asarray(cocoeval.params.iouThrs)
    has_gt = recall[0, :, 0, -1] > -1               # categories with ground truth
    if not has_gt.any():
        return None

    def ap_at(t_idx):
        p = precision[t_idx][:, :, has_gt, 0, -1]    # (T', R, K')
        return float(np.mean(np.where(p > -1, p, 0.0).mean(axis=-2)))

    coco_idx = [i for i, t in enumerate(thrs) if any(np.isclose(t, c) for c in
                                                     np.linspace(0.5, 0.95, 10))]
    out = dict(AP=ap_at(coco_idx))
    for t in iou_thrs:
        i = int(np.argmin(np.abs(thrs - t)))
        out[f'AP@{t:g}'] = ap_at([i])
        r = recall[i, has_gt, 0, -1]
        out[f'AR@{t:g}'] = float(np.mean(np.where(r > -1, r, 0.0)))
    return out


def evaluate_coco_2d(coco_gt: Union[str, dict], dets: Sequence[dict],
                     iou_thrs: Sequence[float] = DEFAULT_IOU_THRS_2D,
                     max_dets: int = 100) -> dict:
    """COCO AP / AR of 2D detections, overall and per view (see the module docstring).

    Args:
        coco_gt: the converter's ``*_2d.coco.json`` (path or loaded dict).
        dets: COCO results (``image_id`` or ``token`` + ``view``).
        iou_thrs: IoU thresholds reported besides COCO's 0.5:0.95 AP.
        max_dets: detections per image kept (by score) for AP / AR.

    Returns:
        dict: ``overall`` and ``by_view`` ``{view: figures or None}``, each figure block
        ``{'AP', 'AP@t', 'AR@t', 'num_gt', 'num_dets'}``; plus ``settings``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    data = load_coco(coco_gt)
    dets = resolve_detections(data, list(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = data
        gt.createIndex()
        # loadRes needs at least one detection; a dummy far outside every image with
        # the lowest score changes nothing but AP's trailing precision (it is never a TP).
        res_dets = dets or [dict(image_id=data['images'][0]['id'],
                                 category_id=data['categories'][0]['id'],
                                 bbox=[-1e6, -1e6, 1.0, 1.0], score=0.0)]
        res = gt.loadRes([dict(d) for d in res_dets])
    thrs = sorted(set(np.round(np.linspace(0.5, 0.95, 10), 4)) |
                  {round(float(t), 4) for t in iou_thrs})

    views: Dict[str, List[int]] = {}
    for img in data['images']:
        views.setdefault(str(img.get('view', '?')), []).append(img['id'])
    valid_gt = [a for a in data['annotations'] if not a.get('iscrowd', 0)]

    def run(img_ids: List[int]) -> Optional[dict]:
        ev = COCOeval(gt, res, iouType='bbox')
        ev.params.iouThrs = np.asarray(thrs)
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.params.imgIds = list(img_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
        figures = _summarise(ev, iou_thrs)
        if figures is not None:
            ids = set(img_ids)
            figures['num_gt'] = sum(1 for a in valid_gt if a['image_id'] in ids)
            figures['num_dets'] = sum(1 for d in dets if d['image_id'] in ids)
        return figures

    overall = run([img['id'] for img in data['images']])
    by_view = {view: run(ids) for view, ids in sorted(views.items())}
    return dict(overall=overall, by_view=by_view,
                settings=dict(iou_thrs=[float(t) for t in iou_thrs], max_dets=int(max_dets),
                              ap='COCO bbox AP, IoU 0.5:0.95, 101-point, area all'))


def flatten_2d(result: dict, prefix: str = '2d/') -> Dict[str, float]:
    """Flat overall figures for logging (``2d/AP``, ``2d/AP@0.5``, ...)."""
    overall = result.get('overall') or {}
    return {f'{prefix}{k}': float(v) for k, v in overall.items()
            if not k.startswith('num_') and v is not None}


def format_table_2d(result: dict) -> str:
    """A markdown table of the figures per view and overall (``-`` = absent)."""
    thrs = result['settings']['iou_thrs']
    keys = ['AP'] + [f'AP@{t:g}' for t in thrs] + [f'AR@{t:g}' for t in thrs]
    rows = [['view', 'n_gt', 'n_dets'] + keys]
    for name, block in list(result['by_view'].items()) + [('all', result['overall'])]:
        if block is None:
            rows.append([name, '0', '-'] + ['-'] * len(keys))
        else:
            rows.append([name, str(block['num_gt']), str(block['num_dets'])] +
                        [f'{block[k]:.4f}' for k in keys])
    return markdown_table(rows)

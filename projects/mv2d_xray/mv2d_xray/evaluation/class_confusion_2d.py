"""Which class the 2D stage names each finding in each view.

COCO AP / AR (:mod:`.coco2d`) count a detection of the wrong class as a miss. MV2D's
``view_support.per_class`` and the triangulation baseline also associate per class, so a
finding the 2D stage sees but names wrongly loses its support. This counts, for every
finding box of every view, the class of the detection that would support it:

* **Association** -- the gate of the triangulation baseline and of ``view_support``, over
  the detections of *every* class: among the view's detections scoring ``>= score_thr``,
  the one whose box centre lies nearest the finding box's centre, if within that
  detection's gate ``max(gate_px, gate_frac * larger side)`` px
  (:func:`~projects.mv2d_xray.core.geometry.detection_gates`,
  :func:`~projects.mv2d_xray.core.geometry.nearest_in_gate`; among equally near ones the
  best-scoring); none: the column ``none``. The detections are taken as given (``tools/
  test.py`` already caps them per view). Ignore regions (``iscrowd``) are left out.
* **Counts** -- ``counts[c][d]``: the finding-views of class ``c`` whose nearest detection
  has class ``d`` (``d = C``: none).

Where one class is often named as another, MV2D's ``view_support.class_support`` can let
that class's detections support it at a lower weight. On the blades val (thirty-eighth
session) the ratio of the two shares, ``p(inclusion | pore detection) / p(inclusion |
inclusion detection)`` = (214 / 1061) / (203 / 224) = 0.22, set the one weight that helped
(0.25); the same ratio for every pair of classes lowered CPM (0.552 -> 0.535: the cracks
lost to pore detections), so the weights are chosen on val, not read off this table.

Frames and units: boxes in px of the original image (COCO ``[x, y, w, h]``); labels are
``category_id - 1``, as everywhere in the plugin.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from projects.mv2d_xray.core.data_format import load_coco, resolve_detections
from projects.mv2d_xray.core.geometry import detection_gates, nearest_in_gate
from projects.mv2d_xray.core.metric import markdown_table
from projects.mv2d_xray.mv2d_xray.baselines.triangulation import TriangulationConfig


def _xyxy(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """``(N, 4)`` xyxy float64 from COCO ``[x, y, w, h]`` boxes."""
    xywh = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def class_confusion_2d(coco_gt: Union[str, dict], dets: Sequence[dict],
                       cfg: Optional[TriangulationConfig] = None) -> dict:
    """Per finding box of every view, the class of its associated detection (module
    docstring).

    Args:
        coco_gt: the converter's ``*_2d.coco.json`` (path or loaded dict).
        dets: COCO results (``image_id`` or ``token`` + ``view``).
        cfg (TriangulationConfig, optional): the association's ``gate_px``,
            ``gate_frac`` and ``score_thr``; the baseline's defaults (3 px, 0.5, 0.05).

    Returns:
        dict: ``classes`` (names, index = label), ``counts`` ``(C, C + 1)`` nested lists
        (rows the findings' classes, columns the detections' classes and ``none``) and
        ``settings``.
    """
    cfg = cfg or TriangulationConfig()
    data = load_coco(coco_gt)
    dets = resolve_detections(data, list(dets))
    names = [c['name'] for c in sorted(data['categories'], key=lambda c: c['id'])]
    num_classes = len(names)
    counts = np.zeros((num_classes, num_classes + 1), np.int64)
    by_image: Dict[int, List[dict]] = {}
    for det in sorted(dets, key=lambda d: -float(d['score'])):      # best first (stable)
        if float(det['score']) >= cfg.score_thr:
            by_image.setdefault(det['image_id'], []).append(det)
    findings: Dict[int, List[dict]] = {}
    for ann in data['annotations']:
        if not ann.get('iscrowd', 0):
            findings.setdefault(ann['image_id'], []).append(ann)
    for image_id, anns in findings.items():
        gt = _xyxy([a['bbox'] for a in anns])
        gt_labels = np.array([a['category_id'] - 1 for a in anns])
        mine = by_image.get(image_id, [])
        if not mine:
            np.add.at(counts, (gt_labels, num_classes), 1)
            continue
        boxes = _xyxy([d['bbox'] for d in mine])
        det_labels = np.array([d['category_id'] - 1 for d in mine])
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        slot, _ = nearest_in_gate((gt[:, None, :2] + gt[:, None, 2:]) / 2,
                                  np.ones((len(gt), 1)), centres[None],
                                  detection_gates(boxes, cfg.gate_px, cfg.gate_frac)[None],
                                  np.ones((1, len(mine)), bool))
        slot = slot[:, 0]
        columns = np.where(slot >= 0, det_labels[np.maximum(slot, 0)], num_classes)
        np.add.at(counts, (gt_labels, columns), 1)
    return dict(classes=names, counts=counts.tolist(),
                settings=dict(gate_px=float(cfg.gate_px), gate_frac=float(cfg.gate_frac),
                              score_thr=float(cfg.score_thr)))


def class_confusion_table(result: dict) -> str:
    """A markdown table of :func:`class_confusion_2d`'s counts, one row per finding class,
    with the share each row's detections give the right class."""
    names = result['classes']
    rows = [['finding \\ detection'] + names + ['none', 'named right']]
    for index, (name, row) in enumerate(zip(names, result['counts'])):
        found = sum(row[:-1])
        right = f'{row[index] / found:.2f}' if found else '-'
        rows.append([name] + [str(v) for v in row] + [right])
    return markdown_table(rows)

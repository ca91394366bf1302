"""Where the 3D methods lose the findings, by how many views the 2D stage detected each in.

MV2D's queries and the triangulation baseline both start from the 2D stage's per-view
detections. A finding no view detects can be found by neither (unless the 3D stage reads
evidence beyond the detections); a finding detected in one view cannot be triangulated;
from two views on, both can place it. This splits the findings into groups by that count
and scores each method on each group alone, so a benchmark says whether the 2D stage, the
association of views or the 3D stage loses what is missed.

**The count.** A view *detects* a finding when one of its 2D detections of the finding's
class has a gate (:func:`~projects.mv2d_xray.core.geometry.detection_gates`,
``max(gate_px, gate_frac * max(w, h))`` px, the triangulation baseline's and MV2D's
``view_support`` rule) that holds the projection of the finding's centre. Detections are
in img px of the original views, finding centres in ``ct`` mm.

**The figures.** Per group, :func:`~projects.mv2d_xray.core.metric.evaluate_detections`
with the other groups' findings made ignore regions -- as the metric's size bands do: a
prediction on a finding of another group is neither a hit nor a false positive, and the
FP rate is per scan over all scans.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from projects.mv2d_xray.core.data_format import CaseGT, CasePred
from projects.mv2d_xray.core.geometry import (detection_gates, nearest_in_gate,
                                              project_points, view_slots)
from projects.mv2d_xray.core.metric import evaluate_detections

#: The groups: ``(name, low, high)``, findings detected in ``low <= n < high`` views.
VIEW_GROUPS: Tuple[Tuple[str, int, float], ...] = (('0', 0, 1), ('1', 1, 2), ('2', 2, 3),
                                                   ('3+', 3, math.inf))
#: The figures kept per group and method.
GROUP_FIGURES = ('CPM', 'FROC')


def detecting_views(lidar2img: np.ndarray, gt: CaseGT, dets: Optional[Mapping],
                    gate_px: float = 3.0, gate_frac: float = 0.5) -> np.ndarray:
    """Per finding of one scan, the number of views that detect it (module docstring).

    Args:
        lidar2img (np.ndarray): ``(V, 4, 4)`` ct -> img of the scan's views.
        gt (CaseGT): the scan's findings (ignore regions included), ``ct`` mm.
        dets (Mapping, optional): the scan's 2D detections, ``boxes`` ``(K, 4)`` xyxy img
            px, ``scores``, ``labels`` and ``view_ids`` ``(K,)`` (index into the views),
            as :func:`~projects.mv2d_xray.mv2d_xray.baselines.triangulation.group_detections`
            gives them; None: no detection.
        gate_px (float): smallest gate, px.
        gate_frac (float): gate as a fraction of the detection's larger side.

    Returns:
        np.ndarray: ``(G,)`` int64, each in ``0 .. V``.
    """
    lidar2img = np.asarray(lidar2img, np.float64)
    num_views = len(lidar2img)
    counts = np.zeros(len(gt.boxes), np.int64)
    if dets is None or len(gt.boxes) == 0 or len(dets['scores']) == 0:
        return counts
    boxes = np.asarray(dets['boxes'], np.float64).reshape(-1, 4)
    scores = np.asarray(dets['scores'], np.float64).reshape(-1)
    labels = np.asarray(dets['labels'], np.int64).reshape(-1)
    views = np.asarray(dets['view_ids'], np.int64).reshape(-1)
    uv, depth = project_points(lidar2img, gt.boxes[:, :3])            # (V, G, 2), (V, G)
    for label in np.unique(gt.labels):
        mine = np.flatnonzero(labels == label)
        index = view_slots(scores[mine], views[mine], num_views)       # (V, D)
        if index.shape[1] == 0:
            continue
        box = boxes[mine][np.maximum(index, 0)]                        # (V, D, 4)
        centres = (box[..., :2] + box[..., 2:]) / 2
        gates = detection_gates(box, gate_px, gate_frac)
        of_label = gt.labels == label
        slot, _ = nearest_in_gate(uv[:, of_label].transpose(1, 0, 2),
                                  depth[:, of_label].T, centres, gates, index >= 0)
        counts[of_label] = (slot >= 0).sum(axis=1)                     # (G_label,)
    return counts


def dataset_detecting_views(infos: Mapping, cases: Mapping[str, CaseGT],
                            dets_by_case: Mapping[str, Mapping], gate_px: float = 3.0,
                            gate_frac: float = 0.5) -> Dict[str, np.ndarray]:
    """:func:`detecting_views` for every scan of an info pickle.

    Args:
        infos (Mapping): the loaded info pickle (``data_list`` items with ``token`` and
            ``images``, each view's ``lidar2img``).
        cases: ``{token: CaseGT}`` of the same scans.
        dets_by_case: ``{token: detections}`` as :func:`detecting_views` reads them; a
            scan missing here has none.
        gate_px, gate_frac: the gate, as :func:`detecting_views`.

    Returns:
        dict: ``{token: (G,) int64}``.
    """
    out = {}
    for info in infos['data_list']:
        token = info['token']
        lidar2img = np.stack([np.asarray(view['lidar2img'], np.float64)
                              for view in info['images'].values()])
        out[token] = detecting_views(lidar2img, cases[token], dets_by_case.get(token),
                                     gate_px, gate_frac)
    return out


def group_cases(cases: Mapping[str, CaseGT], counts: Mapping[str, np.ndarray],
                low: int, high: float) -> Dict[str, CaseGT]:
    """The scans with only the findings detected in ``low <= n < high`` views left as
    findings; the others (and the ignore regions) become ignore regions."""
    out = {}
    for token, gt in cases.items():
        n = np.asarray(counts[token])
        keep = (n >= low) & (n < high)
        out[token] = dataclasses.replace(gt, ignore=gt.ignore | ~keep)
    return out


def by_views_detected(cases: Mapping[str, CaseGT], preds: Mapping[str, Mapping[str, CasePred]],
                      classes: Sequence[str], counts: Mapping[str, np.ndarray],
                      groups: Sequence[Tuple[str, int, float]] = VIEW_GROUPS) -> dict:
    """Each method's figures on each group of findings (module docstring).

    Args:
        cases: ``{token: CaseGT}``, every scan (negatives included).
        preds: ``{method: {token: CasePred}}``.
        classes: class names, index = label.
        counts: ``{token: (G,) views detecting each finding}`` (:func:`detecting_views`).
        groups: ``(name, low, high)`` view-count groups.

    Returns:
        dict: ``{group: {'findings': n, method: {'CPM': ..., 'FROC': {rate: sens}}}}``;
        a group without findings has ``'findings': 0`` and no method figures.
    """
    out = {}
    for name, low, high in groups:
        grouped = group_cases(cases, counts, low, high)
        num = int(sum(int((~gt.ignore).sum()) for gt in grouped.values()))
        entry = {'findings': num}
        if num:
            for method, method_preds in preds.items():
                result = evaluate_detections(grouped, method_preds, classes, size_bands=())
                entry[method] = {key: result[key] for key in GROUP_FIGURES}
        out[name] = entry
    return out

"""Where the 3D methods lose the findings, by how many views the 2D stage detected each in.

MV2D's queries and the triangulation baseline both start from the 2D stage's per-view
detections. A finding no view detects can be found by neither (unless the 3D stage reads
evidence beyond the detections); a finding detected in one view cannot be triangulated;
from two views on, both can place it. This splits the findings into groups by that count
and scores each method on each group alone, so a benchmark says whether the 2D stage, the
association of views or the 3D stage loses what is missed.

**The count.** A view *detects* a finding when it supports the finding's centre by the
triangulation baseline's association
(:func:`~projects.mv2d_xray.mv2d_xray.baselines.triangulation.supporting_views`): one of
its detections of the finding's class, among those the baseline keeps (``score_thr``,
``max_per_view``), has a gate ``max(gate_px, gate_frac * max(w, h))`` px holding the
projection of the centre. (MV2D's ``view_support`` uses the same gate, over all classes.)
Detections are in img px of the original views, finding centres in ``ct`` mm.

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
from projects.mv2d_xray.core.metric import evaluate_detections
from projects.mv2d_xray.mv2d_xray.baselines.triangulation import (TriangulationConfig,
                                                                  supporting_views)

#: The groups: ``(name, low, high)``, findings detected in ``low <= n < high`` views.
VIEW_GROUPS: Tuple[Tuple[str, int, float], ...] = (('0', 0, 1), ('1', 1, 2), ('2', 2, 3),
                                                   ('3+', 3, math.inf))
#: The figures kept per group and method.
GROUP_FIGURES = ('CPM', 'FROC')


def detecting_views(lidar2img: np.ndarray, gt: CaseGT, dets: Optional[Mapping],
                    cfg: Optional[TriangulationConfig] = None) -> np.ndarray:
    """Per finding of one scan, the number of views that detect it (module docstring).

    Args:
        lidar2img (np.ndarray): ``(V, 4, 4)`` ct -> img of the scan's views.
        gt (CaseGT): the scan's findings (ignore regions included), ``ct`` mm.
        dets (Mapping, optional): the scan's 2D detections, ``boxes`` ``(K, 4)`` xyxy img
            px, ``scores``, ``labels`` and ``view_ids`` ``(K,)`` (index into the views),
            as :func:`~projects.mv2d_xray.mv2d_xray.baselines.triangulation.group_detections`
            gives them; None: no detection.
        cfg (TriangulationConfig, optional): the association's settings (``score_thr``,
            ``max_per_view``, ``gate_px``, ``gate_frac``); the baseline's defaults.

    Returns:
        np.ndarray: ``(G,)`` int64, each in ``0 .. V``.
    """
    if dets is None or len(gt.boxes) == 0:
        return np.zeros(len(gt.boxes), np.int64)
    support = supporting_views(lidar2img, dets['boxes'], dets['scores'], dets['labels'],
                               dets['view_ids'], gt.boxes[:, :3], gt.labels, cfg)
    return support.sum(axis=1).astype(np.int64)


def dataset_detecting_views(infos: Mapping, cases: Mapping[str, CaseGT],
                            dets_by_case: Mapping[str, Mapping],
                            cfg: Optional[TriangulationConfig] = None
                            ) -> Dict[str, np.ndarray]:
    """:func:`detecting_views` for every scan of an info pickle.

    Args:
        infos (Mapping): the loaded info pickle (``data_list`` items with ``token`` and
            ``images``, each view's ``lidar2img``, in the order the detections'
            ``view_ids`` index).
        cases: ``{token: CaseGT}`` of the same scans.
        dets_by_case: ``{token: detections}`` as :func:`detecting_views` reads them; a
            scan missing here has none.
        cfg: the association's settings, as :func:`detecting_views`.

    Returns:
        dict: ``{token: (G,) int64}``.
    """
    out = {}
    for info in infos['data_list']:
        token = info['token']
        lidar2img = np.stack([np.asarray(view['lidar2img'], np.float64)
                              for view in info['images'].values()])
        out[token] = detecting_views(lidar2img, cases[token], dets_by_case.get(token), cfg)
    return out


def group_cases(cases: Mapping[str, CaseGT], counts: Mapping[str, np.ndarray],
                low: int, high: float) -> Dict[str, CaseGT]:
    """The scans with only one group's findings left as findings.

    Args:
        cases: ``{token: CaseGT}``.
        counts: ``{token: (G,)}`` per finding the views detecting it
            (:func:`detecting_views`).
        low, high: the group, ``low <= count < high``.

    Returns:
        dict: ``{token: CaseGT}``, new objects whose findings outside the group (and
        whose ignore regions) are ignore regions.
    """
    out = {}
    for token, gt in cases.items():
        n = np.asarray(counts[token])
        if n.shape != gt.ignore.shape:
            raise ValueError(f'case {token!r}: {n.shape} view counts for '
                             f'{len(gt.ignore)} findings')
        keep = (n >= low) & (n < high)
        out[token] = dataclasses.replace(gt, ignore=gt.ignore | ~keep)
    return out


def by_views_detected(cases: Mapping[str, CaseGT], preds: Mapping[str, Mapping[str, CasePred]],
                      classes: Sequence[str], counts: Mapping[str, np.ndarray],
                      cfg: Optional[TriangulationConfig] = None,
                      groups: Sequence[Tuple[str, int, float]] = VIEW_GROUPS) -> dict:
    """Each method's figures on each group of findings (module docstring).

    Args:
        cases: ``{token: CaseGT}``, every scan (negatives included).
        preds: ``{method: {token: CasePred}}``.
        classes: class names, index = label.
        counts: ``{token: (G,) views detecting each finding}`` (:func:`detecting_views`).
        cfg: the association settings the counts were made with (recorded only).
        groups: ``(name, low, high)`` view-count groups.

    Returns:
        dict: ``settings`` (the association's ``score_thr``, ``max_per_view``,
        ``gate_px``, ``gate_frac``) and ``groups`` ``{group: {'findings': n, method:
        {'CPM': ..., 'FROC': {rate: sensitivity}}}}``; a group without findings has
        ``'findings': 0`` and no method figures.
    """
    cfg = cfg or TriangulationConfig()
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
    settings = {key: getattr(cfg, key)
                for key in ('score_thr', 'max_per_view', 'gate_px', 'gate_frac')}
    return dict(settings=settings, groups=out)

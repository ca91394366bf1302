"""Per-finding cross-view evidence: which detections, in which views, a 3D box came from.

Every 3D box MV2D outputs is decoded from one query; the query was lifted from one 2D
detection (its *source*; with ``merge_dist_mm``, the best-scoring detection of the
finding, which absorbed the others) and cross-attends, in every decoder layer, to the RoI
tokens (``S_h x S_w`` cells each) of its *relevant* detections: the source itself and the
detections the box correlation (:class:`MV2DXrayBoxCorrelation`, ``corr`` /
``corr_mask``) picked in the other views. :func:`explain_query` turns that into one
plain dict per box, the format of ``Det3DDataSample.explanations`` written by
``MV2DXray.predict(..., explain=True)``:

* ``query`` (int): the query's index among its scene's queries (decoder order);
* ``source_view`` (int), ``source_bbox`` (``(4,)`` float32 ``[x1, y1, x2, y2]``, px),
  ``source_score`` (float, the 2D detector's score): the detection the query was lifted
  from;
* ``attended_views`` ``(A,)`` int64, ``attended_bboxes`` ``(A, 4)`` float32 px,
  ``attended_scores`` ``(A,)`` float32: the ``A`` boxes the query attends to, entry 0 the
  source, then its relevant detections in the other views, then (with the RoI head's
  ``view_probes``) its view probes -- boxes at its prior's projection in views without a
  relevant detection, which are no detections: their score is NaN;
* ``attended_probes`` ``(A,)`` bool: which of them are view probes;
* ``attention`` ``(A,)``: the last decoder layer's cross-attention over them (the
  weights of each RoI's cells summed, averaged over the heads; sums to 1);
* ``attention_mean`` ``(A,)``: the same averaged over the decoder layers (sums to 1);
* ``attention_layers`` ``(num_layers, A)``: every layer's (each row sums to 1);
* ``attention_cells`` ``(A, S_h, S_w)``: the last layer's weights per RoI cell (row-major
  over the box: cell ``(i, j)`` is centred at ``x1 + (j + 0.5) (x2 - x1) / S_w``,
  ``y1 + (i + 0.5) (y2 - y1) / S_h``); ``attention`` is their sum per RoI;
* ``view_attention`` ``(V,)``: the share of the last layer's cross-attention each view
  of the scene received (sums to 1; 0 for views without an attended box).

Tensors are on the CPU, detached. Boxes are in the ``img`` frame of the network input:
pixels of the view after the pipeline's resize / crop / flip (``metainfo['img_shape']``,
before padding), the frame of ``metainfo['lidar2img']``. :func:`explanation_to_original`
maps them to the original images (``metainfo['img_aug_matrix']``; then project 3D boxes
with ``metainfo['ori_lidar2img']``).
"""
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from projects.mv2d_xray.core.geometry import transform_boxes2d


class QueryEvidence(NamedTuple):
    """What the queries of a batch were built from and attended to
    (``MV2DXrayRoIHead.forward(..., explain=True)['evidence']``): ``Q`` queries, ``R``
    RoIs, ``M`` relevant-RoI slots per query, ``L`` decoder layers."""
    #: ``(Q,)`` the RoI each query was lifted from.
    query_rois: Tensor
    #: ``(Q, M)`` each query's relevant RoIs (column 0: its own RoI), then its view
    #: probes (indices ``R ..``, with ``view_probes``).
    corr: Tensor
    #: ``(Q, M)`` True where ``corr`` is a relevant RoI or probe (False: padding).
    corr_mask: Tensor
    #: ``(L, Q, M, S_h, S_w)`` cross-attention weight of every RoI cell, averaged over
    #: the heads (0 on padding; sums to 1 over ``(M, S_h, S_w)``).
    cell_attention: Tensor
    #: ``(R + P, 4)`` boxes ``[x1, y1, x2, y2]`` of the RoIs, then of the ``P`` view
    #: probes (``view_probes``; ``P = 0`` without), img px of their views.
    roi_bboxes: Tensor
    #: ``(R + P,)`` view of each.
    roi_view_ids: Tensor
    #: ``(R + P,)`` 2D scores of the RoIs, NaN for the probes; or None (then NaN in the
    #: explanations).
    roi_scores: Optional[Tensor]
    #: Views per scene, ``V``.
    num_views: int
    #: ``R``: indices ``0 .. R-1`` of ``roi_bboxes`` are 2D detections, ``R ..`` view probes.
    num_rois: int


def view_probe_mask(explanation: dict) -> np.ndarray:
    """``(A,)`` bool: which attended entries of an explanation (:func:`explain_query`'s
    dict, tensors or arrays) are view probes: its ``attended_probes``; for a dict without
    them (made by hand, or read back from ``explanations.json``, where a probe's score is
    null), the entries without a 2D score (NaN); all False without either."""
    if 'attended_probes' in explanation:
        return np.asarray(explanation['attended_probes'], bool).reshape(-1)
    if 'attended_scores' not in explanation:
        return np.zeros(len(explanation['attention']), bool)
    return np.isnan(np.asarray(explanation['attended_scores'], np.float64)).reshape(-1)


def view_shares(weights: Tensor, view_ids: Tensor, num_views: int) -> Tensor:
    """Sum per view: ``(A,)`` weights of detections in views ``view_ids`` ``(A,)`` ->
    ``(num_views,)``."""
    return weights.new_zeros(num_views).index_add_(0, view_ids.long(), weights)


def explain_query(evidence: QueryEvidence, query: int, query_in_scene: int) -> dict:
    """The evidence of one query (format: module docstring).

    Args:
        evidence (QueryEvidence): The batch's queries.
        query (int): Index of the query in the batch (into ``evidence.query_rois``).
        query_in_scene (int): Its index among its scene's queries (``query`` field).

    Returns:
        dict: plain ints / floats and detached CPU tensors.
    """
    valid = evidence.corr_mask[query]
    rois = evidence.corr[query][valid]                           # (A,), source first
    cells = evidence.cell_attention[:, query][:, valid]          # (L, A, S_h, S_w)
    layers = cells.flatten(2).sum(-1)                            # (L, A)
    views = evidence.roi_view_ids[rois].long()
    if evidence.roi_scores is not None:
        scores = evidence.roi_scores[rois].float()
    else:
        scores = torch.full((len(rois), ), float('nan'), device=rois.device)
    source = int(evidence.query_rois[query])
    if int(rois[0]) != source:
        raise RuntimeError(f'relevant RoIs of query {query} do not start with its own '
                           f'RoI {source}')
    bboxes = evidence.roi_bboxes[rois].float()
    out = dict(
        query=int(query_in_scene),
        source_view=int(views[0]),
        source_bbox=bboxes[0],
        source_score=float(scores[0]),
        attended_views=views,
        attended_bboxes=bboxes,
        attended_scores=scores,
        attended_probes=rois >= evidence.num_rois,
        attention=layers[-1],
        attention_mean=layers.mean(0),
        attention_layers=layers,
        attention_cells=cells[-1],
        view_attention=view_shares(layers[-1], views, evidence.num_views))
    return {key: value.detach().cpu() if isinstance(value, Tensor) else value
            for key, value in out.items()}


def explanation_to_original(explanation: dict, img_aug_matrix) -> dict:
    """An explanation with its boxes mapped from the network input's ``img`` frame back to
    the original images (the inverse of each view's resize / crop / flip).

    Args:
        explanation (dict): From :func:`explain_query`.
        img_aug_matrix: ``(V, 4, 4)`` original img -> network-input img of every view
            (``metainfo['img_aug_matrix']``, :func:`image_aug_matrix`).

    Returns:
        dict: a copy with ``source_bbox`` and ``attended_bboxes`` in original pixels
        (float32 tensors); everything else shared.
    """
    aug = np.asarray(img_aug_matrix, np.float64).reshape(-1, 4, 4)
    boxes = np.asarray(explanation['attended_bboxes'], np.float64).reshape(-1, 4)
    views = np.asarray(explanation['attended_views'], np.int64).reshape(-1)
    original = np.zeros_like(boxes)
    for view in np.unique(views):
        sel = views == view
        original[sel] = transform_boxes2d(np.linalg.inv(aug[view]), boxes[sel])
    source = transform_boxes2d(np.linalg.inv(aug[explanation['source_view']]),
                               np.asarray(explanation['source_bbox'], np.float64))
    return dict(explanation,
                source_bbox=torch.as_tensor(source, dtype=torch.float32),
                attended_bboxes=torch.as_tensor(original, dtype=torch.float32))

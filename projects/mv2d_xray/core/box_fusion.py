"""Two detectors' 3D boxes of one object fused into one list (an ensemble).

Two detectors that find different findings -- MV2D, strong where several views' 2D
detections hold a finding, and the volume fusion head, stronger where few or none do
(README, blades ablations) -- are combined the way detection ensembles usually are
(weighted box fusion, without averaging the boxes): per class, the boxes of both are
clustered greedily by score (:func:`~projects.mv2d_xray.core.clustering.greedy_clusters`,
"close" = centres within ``dist_mm``); each cluster keeps its best box and class and
scores the mean of the two detectors' best scores in it, a detector without a box in it
counting 0. A finding both detectors hold outranks one that only one holds, and a
finding only one holds is still listed.

numpy only (the core stays torch-free).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .clustering import greedy_clusters


def fuse_boxes(boxes_a: np.ndarray, scores_a: np.ndarray, labels_a: np.ndarray,
               boxes_b: np.ndarray, scores_b: np.ndarray, labels_b: np.ndarray,
               dist_mm: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse two detectors' boxes of one object, per class.

    Args:
        boxes_a, boxes_b: ``(A, 7)`` / ``(B, 7)`` ct boxes ``[x, y, z, dx, dy, dz, yaw]``,
            mm.
        scores_a, scores_b: ``(A,)`` / ``(B,)`` in [0, 1].
        labels_a, labels_b: ``(A,)`` / ``(B,)`` class indices.
        dist_mm (float): boxes of one class whose centres lie within this distance of a
            cluster's head (the best box left) join its cluster.

    Returns:
        tuple: ``boxes`` ``(K, 7)``, ``scores`` ``(K,)`` =
        ``(best score of a in the cluster + best score of b in it) / 2``, ``labels``
        ``(K,)``; one per cluster, by decreasing head score.
    """
    if dist_mm < 0:
        raise ValueError(f'dist_mm must be >= 0, got {dist_mm}')
    parts = []
    for detector in ((boxes_a, scores_a, labels_a), (boxes_b, scores_b, labels_b)):
        b, s, lab = (np.asarray(detector[0], np.float64).reshape(-1, 7),
                     np.asarray(detector[1], np.float64).reshape(-1),
                     np.asarray(detector[2], np.int64).reshape(-1))
        if not len(b) == len(s) == len(lab):
            raise ValueError('boxes, scores and labels of each detector must have the same '
                             f'length, got {len(b)}, {len(s)} and {len(lab)}')
        parts.append((b, s, lab))
    boxes, scores, labels = (np.concatenate([p[k] for p in parts]) for k in range(3))
    from_a = np.arange(len(boxes)) < len(parts[0][1])
    centres = boxes[:, :3]
    close = (np.linalg.norm(centres[:, None] - centres[None], axis=-1) <= dist_mm) \
        & (labels[:, None] == labels[None])
    heads, members = greedy_clusters(scores, close)
    best_a = np.where(members & from_a[None], scores[None], 0.0).max(1, initial=0.0)
    best_b = np.where(members & ~from_a[None], scores[None], 0.0).max(1, initial=0.0)
    return boxes[heads], (best_a + best_b) / 2, labels[heads]

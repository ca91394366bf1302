"""Greedy clustering of scored items: the best-scoring item not yet taken heads a new
cluster and takes every item still free that is close to it; repeat.

Two steps of the model use it, with their own notion of "close" (a boolean matrix the
caller builds from distances in mm):

* the RoI head merges the detections of one finding into one query (triangulated
  priors closer than ``merge_dist_mm``, same scene);
* the duplicate suppression of the 3D predictions keeps one box per finding (centre
  within ``dist_thr_mm`` of, or inside, a better box of the same class).

The loop is sequential (which items are free depends on every earlier cluster), so it
runs in numpy on the CPU; numpy arrays or torch tensors go in and the same kind comes
out (tensors on the device of ``scores``). torch is imported only when a tensor is
passed, so this module stays torch-free like the rest of the core.
"""
from __future__ import annotations

import numpy as np


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith('torch')


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if _is_tensor(x) else np.asarray(x)


def greedy_clusters(scores, close):
    """Greedy clustering by decreasing score.

    Items are visited by decreasing score (equal scores: lower index first; NaN scores
    last). An item not yet taken becomes a cluster head and takes itself and every item
    ``j`` still free with ``close[head, j]``.

    Args:
        scores: ``(N,)`` item scores.
        close: ``(N, N)`` bool, ``close[i, j]``: item ``i``, as a head, takes item
            ``j``. Need not be symmetric (e.g. "``j``'s centre lies inside ``i``'s
            box") nor have a true diagonal (a head always takes itself; an item whose
            row and column are all False stays a cluster of its own).

    Returns:
        tuple: ``heads`` ``(K,)`` int64 indices of the cluster heads, by decreasing
        score, and ``members`` ``(K, N)`` bool, ``members[k, j]``: item ``j`` belongs
        to the cluster of ``heads[k]``. Every item belongs to exactly one cluster.
    """
    score_array = _to_numpy(scores).astype(np.float64).reshape(-1)
    close_array = _to_numpy(close).astype(bool)
    num = len(score_array)
    if close_array.shape != (num, num):
        raise ValueError(f'close must be ({num}, {num}) for {num} scores, got '
                         f'{close_array.shape}')
    taken = np.zeros(num, dtype=bool)
    heads, members = [], []
    for item in np.argsort(-score_array, kind='stable'):
        if taken[item]:
            continue
        cluster = close_array[item] & ~taken
        cluster[item] = True
        taken |= cluster
        heads.append(item)
        members.append(cluster)
    heads = np.asarray(heads, dtype=np.int64)
    members = np.stack(members) if members else np.zeros((0, num), dtype=bool)
    if _is_tensor(scores):
        import torch
        return (torch.from_numpy(heads).to(scores.device),
                torch.from_numpy(members).to(scores.device))
    return heads, members

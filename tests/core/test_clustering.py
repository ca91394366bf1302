"""``projects.mv2d_xray.core.clustering``: the one greedy clustering of scored items
(query merging and centre-distance NMS both use it), numpy or torch."""
import numpy as np
import pytest
import torch

from projects.mv2d_xray.core.clustering import greedy_clusters


@pytest.mark.parametrize('kind', ['numpy', 'torch'])
def test_greedy_clusters_on_a_hand_made_case(kind):
    """Visit order 1, 3 (tie with 1: lower index first), 2, 0, 5, 4. Item 1 takes 0;
    3 cannot take 1 (already a head) but takes 2; 0 is close to 5 but, not a head,
    takes nothing (no chaining); 5 and 4 stay alone (4 -> 5, but 5 went first)."""
    scores = np.array([0.5, 0.9, 0.7, 0.9, 0.1, 0.3])
    close = np.zeros((6, 6), dtype=bool)
    for i, j in [(1, 0), (3, 1), (3, 2), (0, 5), (4, 5)]:
        close[i, j] = True
    if kind == 'torch':
        scores, close = torch.from_numpy(scores), torch.from_numpy(close)
    heads, members = greedy_clusters(scores, close)
    assert type(heads) is type(scores) and type(members) is type(scores)
    assert heads.tolist() == [1, 3, 5, 4]
    assert [row.nonzero()[0].tolist() if kind == 'numpy' else row.nonzero()[:, 0].tolist()
            for row in members] == [[0, 1], [2, 3], [5], [4]]
    heads, members = greedy_clusters(scores[:0], close[:0, :0])
    assert heads.shape == (0, ) and members.shape == (0, 0)

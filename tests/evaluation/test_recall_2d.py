"""``evaluation/recall_2d.py``: the rank of the first overlapping proposal, detections that
overlap, and per-width recalls of records computed by hand."""
import math

import numpy as np
import pytest

from projects.mv2d_xray.mv2d_xray.evaluation.recall_2d import (band_name, first_overlap_rank,
                                                               overlaps_any, recall_2d,
                                                               recall_2d_table)

GT = [[0, 0, 10, 10]]
# IoU with GT: 0 (far), 1 (the box), 25 / 175 = 0.143 (shifted by 5 px each way)
FAR, SAME, SHIFTED = [100, 100, 110, 110], [0, 0, 10, 10], [5, 5, 15, 15]


def test_first_overlap_rank_follows_the_scores_and_the_threshold():
    proposals, scores = [FAR, SAME, SHIFTED], [0.9, 0.5, 0.7]    # ranked: FAR, SHIFTED, SAME
    assert first_overlap_rank(GT, proposals, scores, iou_thr=0.1).tolist() == [1]
    assert first_overlap_rank(GT, proposals, scores, iou_thr=0.2).tolist() == [2]
    # without scores the given order is the ranking: SAME is second
    assert first_overlap_rank(GT, proposals, None, iou_thr=0.2).tolist() == [1]
    assert first_overlap_rank(GT, [FAR], [0.9]).tolist() == [-1]
    assert first_overlap_rank(GT, np.zeros((0, 4)), []).tolist() == [-1]
    assert first_overlap_rank(np.zeros((0, 4)), [SAME]).tolist() == []


def test_equal_scores_keep_their_order():
    # SHIFTED (IoU 0.14) before SAME: with equal scores the rank is SHIFTED's, 0
    assert first_overlap_rank(GT, [SHIFTED, SAME], [0.5, 0.5], iou_thr=0.1).tolist() == [0]
    assert first_overlap_rank(GT, [SHIFTED, SAME], [0.5, 0.5], iou_thr=0.5).tolist() == [1]


def test_mismatched_scores_are_refused():
    with pytest.raises(ValueError, match='2 proposals but 1 scores'):
        first_overlap_rank(GT, [FAR, SAME], [0.3])


def test_overlaps_any():
    assert overlaps_any(GT + [[50, 50, 54, 54]], [SHIFTED]).tolist() == [True, False]
    assert overlaps_any(GT, [SHIFTED], iou_thr=0.2).tolist() == [False]
    assert overlaps_any(GT, np.zeros((0, 4))).tolist() == [False]


def test_recall_by_width_computed_by_hand():
    def box(x, w):
        return [x, 0, x + w, w]

    records = [
        # a 3 px box proposed 12th (11 far proposals before it) and not detected; a 10 px
        # box proposed first and detected
        dict(gt_boxes=[box(0, 3), box(200, 10)],
             proposals=[box(200, 10)] + [box(100 + 5 * i, 3) for i in range(11)]
             + [box(0, 3)],
             proposal_scores=np.linspace(1.0, 0.1, 13), detections=[box(200, 10)]),
        # a 5 px box: no proposal, but a detection
        dict(gt_boxes=[box(40, 5)], proposals=np.zeros((0, 4)), proposal_scores=[],
             detections=[box(40, 5)]),
        # a view without findings changes nothing
        dict(gt_boxes=np.zeros((0, 4)), proposals=[FAR], proposal_scores=[1.0],
             detections=[FAR]),
    ]
    result = recall_2d(records, ranks=(1, 10, 50))
    assert result['ranks'] == [1, 10, 50] and result['iou_thr'] == 0.1
    assert result['all'] == dict(n=3, proposals_first_1=pytest.approx(1 / 3),
                                 proposals_first_10=pytest.approx(1 / 3),
                                 proposals_first_50=pytest.approx(2 / 3),
                                 proposals_any=pytest.approx(2 / 3),
                                 detections=pytest.approx(2 / 3))
    small, middle, large = (result['by_width'][k] for k in ('0-4 px', '4-8 px', '>= 8 px'))
    assert (small['n'], small['proposals_first_10'], small['proposals_first_50'],
            small['detections']) == (1, 0.0, 1.0, 0.0)
    assert (middle['n'], middle['proposals_any'], middle['detections']) == (1, 0.0, 1.0)
    assert (large['n'], large['proposals_first_1'], large['detections']) == (1, 1.0, 1.0)
    table = recall_2d_table(result, 'three views')
    assert table.splitlines()[0] == 'three views'
    assert '| all' in table and '0.67' in table


def test_empty_bands_and_splits_have_no_figures():
    result = recall_2d([dict(gt_boxes=[[0, 0, 5, 5]], proposals=[[0, 0, 5, 5]],
                             detections=[])],
                       width_bands_px=((0, 4), (4, math.inf)))
    assert result['by_width']['0-4 px'] == dict(n=0, proposals_first_10=None,
                                                proposals_first_50=None,
                                                proposals_first_200=None,
                                                proposals_any=None, detections=None)
    assert result['by_width']['>= 4 px']['proposals_first_10'] == 1.0
    assert recall_2d([])['all']['detections'] is None
    assert '| 0-4 px' in recall_2d_table(result) and ' - ' in recall_2d_table(result)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match='iou_thr'):
        recall_2d([], iou_thr=0.0)
    with pytest.raises(ValueError, match='ranks'):
        recall_2d([], ranks=(0, 10))


def test_band_names():
    assert band_name(4.0, 8.0) == '4-8 px' and band_name(8.0, math.inf) == '>= 8 px'

"""Two detectors' boxes fused per class: hand-computed clusters and scores."""
import numpy as np
import pytest

from projects.mv2d_xray.core.box_fusion import fuse_boxes


def boxes(*centres, side=1.0):
    return np.array([[*c, side, side, side, 0.0] for c in centres], np.float64).reshape(-1, 7)


def test_a_finding_both_hold_outranks_one_only_one_holds():
    # a: two findings; b: the first again 1.5 mm away, and one of its own
    fused, scores, labels = fuse_boxes(
        boxes((0, 0, 0), (10, 0, 0)), [0.6, 0.8], [0, 0],
        boxes((1.5, 0, 0), (0, 20, 0), side=2.0), [0.7, 0.9], [0, 0], dist_mm=2.0)
    # clusters by decreasing head score: b's own (0.9), a's second (0.8), b's first with
    # a's first (head 0.7, b's box)
    assert scores.tolist() == pytest.approx([0.45, 0.4, (0.6 + 0.7) / 2])
    assert fused[:, :3].tolist() == [[0, 20, 0], [10, 0, 0], [1.5, 0, 0]]
    assert fused[:, 3].tolist() == [2.0, 1.0, 2.0] and labels.tolist() == [0, 0, 0]


def test_classes_are_fused_apart_and_the_distance_is_inclusive():
    fused, scores, labels = fuse_boxes(
        boxes((0, 0, 0), (5, 0, 0)), [0.5, 0.5], [0, 1],
        boxes((0, 0, 0), (5, 2, 0), (5, 2.001, 0)), [0.5, 0.4, 0.3], [1, 1, 1], dist_mm=2.0)
    # (0,0,0): a's class 0 and b's class 1 stay apart; (5,0,0) class 1 takes b's box at
    # exactly 2 mm, not the one 2.001 mm away
    assert len(fused) == 4
    by_place = {(tuple(b[:3]), int(l)): s for b, s, l in zip(fused, scores, labels)}
    assert by_place[((0, 0, 0), 0)] == pytest.approx(0.25)
    assert by_place[((0, 0, 0), 1)] == pytest.approx(0.25)
    assert by_place[((5, 0, 0), 1)] == pytest.approx((0.5 + 0.4) / 2)
    assert by_place[((5, 2.001, 0), 1)] == pytest.approx(0.15)


def test_one_detector_empty_halves_the_other_and_both_empty_is_empty():
    a = boxes((0, 0, 0), (3, 0, 0))
    fused, scores, labels = fuse_boxes(a, [0.8, 0.2], [2, 2], np.zeros((0, 7)), [], [],
                                       dist_mm=2.0)
    assert np.array_equal(fused, a) and scores.tolist() == [0.4, 0.1]
    assert labels.tolist() == [2, 2]
    fused, scores, labels = fuse_boxes(np.zeros((0, 7)), [], [], np.zeros((0, 7)), [], [],
                                       dist_mm=2.0)
    assert fused.shape == (0, 7) and len(scores) == len(labels) == 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match='dist_mm'):
        fuse_boxes(boxes((0, 0, 0)), [1.0], [0], boxes((0, 0, 0)), [1.0], [0], dist_mm=-1)
    with pytest.raises(ValueError, match='same length'):
        fuse_boxes(boxes((0, 0, 0)), [1.0, 0.5], [0], boxes(), [], [], dist_mm=1)

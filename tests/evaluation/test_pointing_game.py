"""``evaluation/pointing_game.py``: hits, flat maps at the random floor, per-band and
per-view figures computed by hand."""
import numpy as np
import pytest

from projects.mv2d_xray.mv2d_xray.evaluation.pointing_game import (has_peak, hit_fraction,
                                                                   peak_pixels, pointing_game,
                                                                   pointing_hits, pointing_scores,
                                                                   size_band)


def box_map(shape, boxes):
    """1 inside the boxes (whole pixels), 0 outside."""
    saliency = np.zeros(shape)
    for x1, y1, x2, y2 in boxes:
        saliency[y1:y2, x1:x2] = 1.0
    return saliency


def peak_map(shape, row, col):
    saliency = np.zeros(shape)
    saliency[row, col] = 1.0
    return saliency


def test_a_map_that_is_the_ground_truth_scores_1():
    boxes = [[2, 3, 6, 8], [12, 1, 15, 4]]                # two findings, one view
    result = pointing_game([dict(saliency=box_map((10, 20), boxes), boxes=boxes,
                                 diameters_mm=[5.0, 12.0], view=0),
                            dict(saliency=box_map((10, 20), boxes[:1]), boxes=boxes[:1],
                                 view=1)])
    assert result['hit_rate'] == 1.0 and result['n'] == 3 and result['n_flat'] == 0
    assert pointing_hits(box_map((10, 20), boxes), boxes).tolist() == [True, True]


def test_a_flat_map_has_no_peak_and_scores_the_box_area_fraction():
    box = [2, 3, 6, 8]                                     # 4 x 5 px in a 20 x 10 image
    expected = 4 * 5 / (20 * 10)
    for flat in (np.zeros((10, 20)), np.full((10, 20), 0.3)):
        assert not has_peak(flat) and peak_pixels(flat).shape == (0, 2)
        assert pointing_hits(flat, [box]).tolist() == [False]
        assert pointing_scores(flat, [box]) == pytest.approx([expected])
        result = pointing_game([dict(saliency=flat, boxes=[box])])
        assert result['hit_rate'] == pytest.approx(expected)
        assert result['random_floor'] == pytest.approx(expected)
        assert result['n_flat'] == 1
    assert hit_fraction((10, 20), [box]) == pytest.approx([expected])
    # the floor does not depend on the map
    peaked = pointing_game([dict(saliency=peak_map((10, 20), 0, 0), boxes=[box])])
    assert peaked['hit_rate'] == 0.0 and peaked['random_floor'] == pytest.approx(expected)


def test_peak_inside_outside_and_the_tolerance_is_a_distance_to_the_box():
    box = [[2, 3, 6, 8]]
    assert pointing_hits(peak_map((10, 20), 3, 2), box).tolist() == [True]    # (2.5, 3.5)
    assert pointing_hits(peak_map((10, 20), 7, 5), box).tolist() == [True]    # (5.5, 7.5)
    assert pointing_hits(peak_map((10, 20), 8, 5), box).tolist() == [False]   # y 8.5
    right = peak_map((10, 20), 5, 9)                    # centre (9.5, 5.5): 3.5 px right
    assert pointing_hits(right, box, tolerance_px=3.0).tolist() == [False]
    assert pointing_hits(right, box, tolerance_px=3.5).tolist() == [True]
    corner = peak_map((10, 20), 0, 8)                   # (8.5, 0.5): sqrt(2) * 2.5 px
    assert pointing_hits(corner, box, tolerance_px=3.5).tolist() == [False]
    assert pointing_hits(corner, box, tolerance_px=3.6).tolist() == [True]
    # the floor grows with the tolerance: pixel centres 0.5 px outside an edge are within
    # 1 px (6 x 7 px); within 1.6 px, 8 x 9 px less the 4 corners 2.1 px away
    assert hit_fraction((10, 20), box, tolerance_px=1.0) == pytest.approx([6 * 7 / 200])
    assert hit_fraction((10, 20), box, tolerance_px=1.6) == pytest.approx([(8 * 9 - 4)
                                                                          / 200])


def test_ties_any_maximum_inside_counts():
    saliency = np.zeros((10, 20))
    saliency[0, 0] = saliency[4, 4] = 1.0                 # one maximum out, one in
    assert pointing_hits(saliency, [[2, 3, 6, 8]]).tolist() == [True]


def test_per_band_and_per_view_figures_by_hand():
    """10 x 10 images. A (4 px, 4 mm) hit in view 'a'; B (25 px, 8 mm) missed and C
    (20 px, 12 mm) hit by one peak in view 'b', with an ignore region that does not count;
    E (10 px, 2 mm: no band) on a flat map in view 'a'."""
    box_a, box_b, box_c, box_d, box_e = ([0, 0, 2, 2], [5, 5, 10, 10], [0, 5, 4, 10],
                                         [8, 0, 10, 2], [0, 0, 5, 2])
    records = [
        dict(saliency=peak_map((10, 10), 1, 1), boxes=[box_a], diameters_mm=[4.0],
             view='a'),
        dict(saliency=peak_map((10, 10), 7, 2), boxes=[box_b, box_c, box_d],
             diameters_mm=[8.0, 12.0, 5.0], ignore=[False, False, True], view='b'),
        dict(saliency=np.zeros((10, 10)), boxes=[box_e], diameters_mm=[2.0], view='a'),
    ]
    result = pointing_game(records)
    assert result['n'] == 4 and result['n_flat'] == 1
    assert result['hit_rate'] == pytest.approx((1 + 0 + 1 + 0.1) / 4)
    assert result['random_floor'] == pytest.approx((0.04 + 0.25 + 0.20 + 0.10) / 4)
    by_size = result['by_size']
    assert list(by_size) == ['3-6mm', '6-10mm', '>10mm']
    assert by_size['3-6mm'] == dict(hit_rate=1.0, random_floor=pytest.approx(0.04), n=1,
                                    n_flat=0)
    assert by_size['6-10mm'] == dict(hit_rate=0.0, random_floor=pytest.approx(0.25), n=1,
                                     n_flat=0)
    assert by_size['>10mm'] == dict(hit_rate=1.0, random_floor=pytest.approx(0.20), n=1,
                                    n_flat=0)
    assert list(result['by_view']) == ['a', 'b']
    assert result['by_view']['a'] == dict(hit_rate=pytest.approx(0.55),
                                          random_floor=pytest.approx(0.07), n=2, n_flat=1)
    assert result['by_view']['b'] == dict(hit_rate=0.5, random_floor=pytest.approx(0.225),
                                          n=2, n_flat=0)
    assert result['settings'] == dict(tolerance_px=0.0,
                                      size_bands_mm=[['3-6mm', 3.0, 6.0],
                                                     ['6-10mm', 6.0, 10.0],
                                                     ['>10mm', 10.0, None]])


def test_absent_is_none_not_zero():
    result = pointing_game([dict(saliency=peak_map((4, 4), 0, 0), boxes=np.zeros((0, 4)))])
    assert result['hit_rate'] is None and result['random_floor'] is None
    assert result['n'] == 0 and result['by_view'] == {}
    assert all(block is None for block in result['by_size'].values())
    only_large = pointing_game([dict(saliency=peak_map((4, 4), 0, 0), boxes=[[0, 0, 1, 1]],
                                     diameters_mm=[20.0])])
    assert only_large['by_size']['3-6mm'] is None
    assert only_large['by_size']['>10mm']['n'] == 1


def test_size_band_edges():
    assert size_band(3.0) == '3-6mm' and size_band(5.99) == '3-6mm'
    assert size_band(6.0) == '6-10mm' and size_band(10.0) == '>10mm'
    assert size_band(2.9) is None and size_band(None) is None
    assert size_band(float('nan')) is None


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r'\(H, W\)'):
        pointing_hits(np.zeros((2, 3, 4)), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match='finite'):
        pointing_hits(np.full((2, 2), np.nan), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match='diameters'):
        pointing_game([dict(saliency=np.eye(3), boxes=[[0, 0, 1, 1]], diameters_mm=[])])

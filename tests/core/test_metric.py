"""The 3D metric core (``projects/mv2d_xray/core/metric.py``) on hand-built cases with known
answers, and its agreement with mmdet3d's ``indoor_eval``."""
import json
import math

import numpy as np
import pytest

from projects.mv2d_xray.core.metric import (CLASS_AGNOSTIC, FP, TP, CaseGT, CasePred,
                                            aligned_iou_3d, average_precision,
                                            class_agnostic_cases, class_agnostic_preds,
                                            evaluate_detections,
                                            flatten_metrics, format_table, froc_curve,
                                            markdown_table, match_by_distance, match_by_iou,
                                            sensitivity_at)

CLASSES = ('nodule',)


def box(x, y, z, size):
    sx, sy, sz = (size, size, size) if np.isscalar(size) else size
    return [x, y, z, sx, sy, sz, 0.0]


def gt_case(findings):
    """findings: list of (box, diameter, ignore[, label])."""
    if not findings:
        return CaseGT(np.zeros((0, 7)), [], [], [])
    return CaseGT([f[0] for f in findings], [f[3] if len(f) > 3 else 0 for f in findings],
                  [f[2] for f in findings], [f[1] for f in findings])


def pred_case(preds):
    """preds: list of (box, score[, label])."""
    if not preds:
        return CasePred.empty()
    return CasePred([p[0] for p in preds], [p[1] for p in preds],
                    [p[2] if len(p) > 2 else 0 for p in preds])


# three findings in three size bands, a negative scan
GT = {'a': gt_case([(box(0, 0, 0, 4), 4.0, 0), (box(30, 0, 0, 8), 8.0, 0)]),
      'b': gt_case([]),
      'c': gt_case([(box(-20, 10, 5, 12), 12.0, 0)])}


def perfect():
    return {t: pred_case([(list(b), 0.9 - 0.1 * i) for i, b in enumerate(gt.boxes)])
            for t, gt in GT.items()}


def test_perfect_predictions():
    result = evaluate_detections(GT, perfect(), CLASSES)
    for key in ('AP_iou@0.1', 'AP_iou@0.25', 'AP_iou@0.5', 'AP_dist@2mm', 'AP_dist@4mm',
                'AP_dist@8mm', 'AP_dist@16mm', 'mAP_dist', 'CPM'):
        assert result[key] == pytest.approx(1.0), key
    assert set(result['FROC'].values()) == {1.0}
    assert list(result['FROC']) == ['0.125', '0.25', '0.5', '1', '2', '4', '8']
    assert result['centre_error_mm'] == 0.0
    assert result['num_scans'] == 3 and result['num_negative_scans'] == 1
    assert result['num_gt'] == 3
    for band in ('3-6mm', '6-10mm', '>10mm'):
        assert result['by_size'][band]['num_gt'] == 1
        assert result['by_size'][band]['CPM'] == pytest.approx(1.0)
        assert result['by_size'][band]['AP_iou@0.5'] == pytest.approx(1.0)
    assert 'by_class' not in result          # one class only
    json.dumps(result, allow_nan=False)      # no NaN anywhere


@pytest.mark.parametrize('thr', [2.0, 4.0, 8.0, 16.0])
def test_centre_distance_thresholds_are_crossed_exactly(thr):
    gt = {'a': gt_case([(box(0, 0, 0, 40), 40.0, 0)])}   # large: the FROC radius is 20 mm
    keys = ['AP_dist@2mm', 'AP_dist@4mm', 'AP_dist@8mm', 'AP_dist@16mm']
    for shift, hit in ((thr - 1e-3, True), (thr + 1e-3, False)):
        # shift along a diagonal: the distance is what counts, not one axis
        offset = shift / math.sqrt(3)
        pred = {'a': pred_case([(box(offset, offset, offset, 40), 0.8)])}
        result = evaluate_detections(gt, pred, CLASSES)
        for key, t in zip(keys, (2.0, 4.0, 8.0, 16.0)):
            expected = 1.0 if (t > thr or (t == thr and hit)) else 0.0
            assert result[key] == pytest.approx(expected), (shift, key)
        assert result['mAP_dist'] == pytest.approx(np.mean(
            [result[k] for k in keys]))
        if shift < 16:
            assert result['centre_error_mm'] == pytest.approx(shift)


def test_froc_hit_radius_is_half_the_diameter():
    gt = {'a': gt_case([(box(0, 0, 0, 10), 10.0, 0)])}
    inside = evaluate_detections(gt, {'a': pred_case([(box(4.99, 0, 0, 10), 0.5)])}, CLASSES)
    outside = evaluate_detections(gt, {'a': pred_case([(box(5.01, 0, 0, 10), 0.5)])},
                                  CLASSES)
    assert inside['CPM'] == 1.0
    # outside: a miss and one false positive in the only scan -> FP rate 1
    assert outside['CPM'] == 0.0
    assert outside['froc_curve'] == dict(fp_per_scan=[0.0, 1.0], sensitivity=[0.0, 0.0])


@pytest.mark.parametrize('thr', [0.1, 0.25, 0.5])
def test_iou_thresholds_are_crossed_exactly(thr):
    # cubes of side 6 shifted by s along x: IoU = (6 - s) / (6 + s)  ->  s = 6 (1 - t) / (1 + t)
    side = 6.0
    gt = {'a': gt_case([(box(0, 0, 0, side), side, 0)])}
    s_thr = side * (1 - thr) / (1 + thr)
    for shift, hit in ((s_thr - 1e-4, True), (s_thr + 1e-4, False)):
        iou = aligned_iou_3d([box(shift, 0, 0, side)], [box(0, 0, 0, side)])[0, 0]
        assert iou == pytest.approx((side - shift) / (side + shift))
        result = evaluate_detections(gt, {'a': pred_case([(box(shift, 0, 0, side), 0.9)])},
                                     CLASSES)
        assert result[f'AP_iou@{thr:g}'] == (1.0 if hit else 0.0)


def test_aligned_iou_hand_computed():
    a = [box(0, 0, 0, (2, 2, 2))]
    b = [box(1, 1, 1, (2, 2, 2)), box(10, 0, 0, (2, 2, 2)), box(0, 0, 0, (1, 1, 1))]
    # overlap 1x1x1 = 1, union 8 + 8 - 1 = 15; disjoint; contained: 1 / 8
    np.testing.assert_allclose(aligned_iou_3d(a, b), [[1 / 15, 0.0, 1 / 8]])


def test_duplicates_are_false_positives_in_ap_but_not_in_froc():
    gt = {'a': gt_case([(box(0, 0, 0, 8), 8.0, 0), (box(30, 0, 0, 8), 8.0, 0)])}
    pred = {'a': pred_case([(box(0, 0, 0, 8), 0.9),          # TP
                            (box(0.5, 0, 0, 8), 0.8),        # duplicate of the first
                            (box(30, 0, 0, 8), 0.7)])}       # TP
    result = evaluate_detections(gt, pred, CLASSES)
    # AP: TP, FP, TP -> recall .5 .5 1, precision 1 .5 2/3: 101-point envelope is 1 up to
    # recall 0.5 (51 points) and 2/3 above (50 points)
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    for key in ('AP_dist@2mm', 'AP_dist@16mm', 'AP_iou@0.1', 'AP_iou@0.5'):
        assert result[key] == pytest.approx(expected), key
    # FROC (LUNA16): a second hit on a detected finding is neither TP nor FP
    assert result['CPM'] == 1.0
    assert result['froc_curve']['fp_per_scan'][-1] == 0.0
    # the same duplicate without the second finding: still a FP for AP (at lower score)
    status, _ = match_by_distance(np.array([[0.0], [0.5]]), np.array([0.9, 0.8]),
                                  np.array([True]), np.array([False]), 2.0)
    assert status.tolist() == [TP, FP]


def test_iou_matching_follows_voc_not_nearest_free():
    # the second prediction overlaps finding 0 most (taken) and finding 1 enough: VOC /
    # indoor_eval make it a FP; distance matching takes the nearest *free* finding
    iou = np.array([[0.9, 0.0], [0.6, 0.3]])
    status, matched = match_by_iou(iou, np.array([0.9, 0.8]), np.array([True, True]),
                                   np.array([False, False]), 0.25)
    assert status.tolist() == [TP, FP] and matched.tolist() == [0, -1]
    dist = np.array([[0.1, 9.0], [1.0, 1.5]])
    status, matched = match_by_distance(dist, np.array([0.9, 0.8]), np.array([True, True]),
                                        np.array([False, False]), 2.0)
    assert status.tolist() == [TP, TP] and matched.tolist() == [0, 1]


def test_ignore_regions_change_nothing():
    base = evaluate_detections(GT, perfect(), CLASSES)
    gt = dict(GT)
    # ignore regions: one in a negative scan, one next to a finding, one alone
    gt['b'] = gt_case([(box(50, 50, 0, 5), 5.0, 1)])
    gt['a'] = gt_case([(box(0, 0, 0, 4), 4.0, 0), (box(30, 0, 0, 8), 8.0, 0),
                       (box(-40, 0, 0, 6), 6.0, 1)])
    preds = perfect()
    # predictions on the ignore regions, scored above and below the true positives
    preds['b'] = pred_case([(box(50.5, 50, 0, 5), 0.99)])
    preds['a'] = pred_case([(box(0, 0, 0, 4), 0.9), (box(30, 0, 0, 8), 0.8),
                            (box(-40, 0, 0, 6), 0.95), (box(-40.3, 0, 0, 6), 0.1)])
    with_ignore = evaluate_detections(gt, preds, CLASSES)
    for key in ('CPM', 'mAP_dist', 'AP_iou@0.1', 'AP_iou@0.5', 'centre_error_mm'):
        assert with_ignore[key] == base[key], key
    assert with_ignore['FROC'] == base['FROC']
    for band in base['by_size']:
        assert with_ignore['by_size'][band]['CPM'] == base['by_size'][band]['CPM']
    assert with_ignore['num_ignore'] == 2
    # a negative scan holding only an ignore region is still a negative scan
    assert with_ignore['num_negative_scans'] == 1


def test_empty_predictions():
    result = evaluate_detections(GT, {}, CLASSES)
    for key in ('AP_iou@0.1', 'AP_dist@2mm', 'mAP_dist', 'CPM'):
        assert result[key] == 0.0
    assert set(result['FROC'].values()) == {0.0}
    assert result['centre_error_mm'] is None        # nothing matched: undefined, absent
    assert 'centre_error_mm' not in flatten_metrics(result)
    assert flatten_metrics(result)['CPM'] == 0.0


def test_empty_ground_truth_is_absent_not_zero():
    gt = {'x': gt_case([]), 'y': gt_case([(box(0, 0, 0, 5), 5.0, 1)])}
    pred = {'x': pred_case([(box(0, 0, 0, 5), 0.5)])}
    result = evaluate_detections(gt, pred, CLASSES)
    for key in ('CPM', 'FROC', 'mAP_dist', 'AP_dist@2mm', 'AP_iou@0.25', 'centre_error_mm'):
        assert key in result and result[key] is None, key
    assert all(block is None for block in result['by_size'].values())
    assert result['num_gt'] == 0 and result['num_negative_scans'] == 2
    assert flatten_metrics(result) == {}
    text = json.dumps(result, allow_nan=False)
    assert 'NaN' not in text
    assert '| all ' in format_table(result)


def test_negative_scans_count_in_the_fp_rate():
    # one finding (TP at 0.5) in scan p; false positives at 0.9 in two of three negatives
    gt = {'p': gt_case([(box(0, 0, 0, 6), 6.0, 0)]),
          'n1': gt_case([]), 'n2': gt_case([]), 'n3': gt_case([])}
    pred = {'p': pred_case([(box(0, 0, 0, 6), 0.5)]),
            'n1': pred_case([(box(0, 0, 0, 6), 0.9)]),
            'n2': pred_case([(box(0, 0, 0, 6), 0.9)])}
    result = evaluate_detections(gt, pred, CLASSES)
    # 2 FPs / 4 scans = 0.5 FP/scan before the TP: sensitivity 0 at 1/8 and 1/4, 1 from 1/2
    assert result['FROC'] == {'0.125': 0.0, '0.25': 0.0, '0.5': 1.0, '1': 1.0, '2': 1.0,
                              '4': 1.0, '8': 1.0}
    assert result['CPM'] == pytest.approx(5 / 7)
    # the curve (its corners) ends at 0.5 FP/scan: the rates above hold its last sensitivity
    assert result['froc_curve'] == dict(fp_per_scan=[0.0, 0.5], sensitivity=[0.0, 1.0])


def test_froc_steps_ties_and_curve_end():
    # 2 scans, 2 findings; scores: TP .9, FP .8, TP .7 and FP .7 (a tie), FP .1
    fps, sens = froc_curve(np.array([0.9, 0.7]), np.array([0.8, 0.7, 0.1]), num_scans=2,
                           num_findings=2)
    np.testing.assert_allclose(fps, [0, 0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(sens, [0, 0.5, 0.5, 1.0, 1.0])
    # a tie between a TP and a FP is one operating point: at 0.5 FP/scan the second
    # finding is not yet found
    np.testing.assert_allclose(sensitivity_at(fps, sens, [0.25, 0.5, 0.99, 1.0, 8.0]),
                               [0.5, 0.5, 0.5, 1.0, 1.0])
    # a finding never hit does not enter the curve; nothing but misses: sensitivity 0
    fps, sens = froc_curve(np.array([-np.inf]), np.array([]), 1, 1)
    assert sensitivity_at(fps, sens, [8.0]).tolist() == [0.0]


def test_size_bands_ignore_other_sizes_and_keep_all_false_positives():
    gt = {'a': gt_case([(box(0, 0, 0, 4), 4.0, 0), (box(30, 0, 0, 8), 8.0, 0)])}
    pred = {'a': pred_case([(box(30, 0, 0, 8), 0.9),      # finds the 8 mm one
                            (box(-50, 0, 0, 5), 0.8)])}   # a false positive
    result = evaluate_detections(gt, pred, CLASSES)
    small, medium = result['by_size']['3-6mm'], result['by_size']['6-10mm']
    assert result['by_size']['>10mm'] is None
    # 6-10 mm: found before the FP -> sensitivity 1 at every rate >= 0
    assert medium['CPM'] == 1.0 and medium['AP_dist@2mm'] == 1.0
    # 3-6 mm: missed; the hit on the 8 mm finding is ignored there, the FP still counts
    assert small['CPM'] == 0.0 and small['AP_dist@2mm'] == 0.0
    assert small['froc_curve']['fp_per_scan'][-1] == 1.0
    # overall: TP (.9), FP (.8): AP = 101-point of precision 1 up to recall .5
    assert result['AP_dist@2mm'] == pytest.approx(51 / 101)
    flat = flatten_metrics(result)
    assert flat['CPM_6-10mm'] == 1.0 and 'CPM_>10mm' not in flat


def test_several_classes_absent_class_and_mean():
    classes = ('nodule', 'mass', 'calcification')
    gt = {'a': gt_case([(box(0, 0, 0, 6), 6.0, 0, 0), (box(40, 0, 0, 6), 6.0, 0, 1)])}
    pred = {'a': pred_case([(box(0, 0, 0, 6), 0.9, 0),        # right class
                            (box(40, 0, 0, 6), 0.8, 0)])}     # right place, wrong class
    result = evaluate_detections(gt, pred, classes)
    assert result['by_class']['calcification'] is None
    nodule, mass = result['by_class']['nodule'], result['by_class']['mass']
    assert mass['CPM'] == 0.0 and mass['AP_iou@0.1'] == 0.0
    # for 'nodule' the wrong-class prediction is a FP in a single scan: FP rate 1 after TP
    assert nodule['CPM'] == 1.0 and nodule['AP_iou@0.1'] == 1.0
    assert result['CPM'] == pytest.approx(0.5)          # mean over classes with GT
    assert result['AP_iou@0.1'] == pytest.approx(0.5)
    flat = flatten_metrics(result)
    assert flat['nodule/CPM'] == 1.0 and not any(k.startswith('calcification/') for k in flat)
    assert 'calcification' in format_table(result)


def test_class_agnostic_finds_a_finding_by_a_box_of_any_class():
    """A box of the wrong class at a finding misses it per class and finds it without
    classes; a box in the void stays a false positive; the inputs keep their labels."""
    classes = ('pore', 'inclusion', 'crack')
    gt = {'a': gt_case([(box(0, 0, 0, 2), 2.0, 0, 0), (box(10, 0, 0, 2), 2.0, 0, 2),
                        (box(20, 0, 0, 2), 2.0, True, 1)]),
          'b': gt_case([])}
    pred = {'a': pred_case([(box(0.5, 0, 0, 2), 0.9, 1),       # on the pore, as inclusion
                            (box(10, 0.9, 0, 2), 0.8, 2),      # on the crack, as crack
                            (box(20, 0, 0, 2), 0.7, 0)]),      # on the ignore region
            'b': pred_case([(box(0, 0, 0, 2), 0.85, 0)])}      # a false positive
    per_class = evaluate_detections(gt, pred, classes)
    assert per_class['by_class']['pore']['CPM'] == 0.0
    assert per_class['by_class']['crack']['CPM'] == 1.0
    cases, preds = class_agnostic_cases(gt), class_agnostic_preds(pred)
    result = evaluate_detections(cases, preds, CLASS_AGNOSTIC)
    # the pore at 0.9, the FP of 'b' at 0.85 (1 FP in 2 scans: rate 0.5), the crack at 0.8:
    # sensitivity 1/2 at 1/8 and 1/4 FPs per scan, 1 from 1/2 on
    assert result['FROC']['0.25'] == 0.5 and result['FROC']['0.5'] == 1.0
    assert result['CPM'] == pytest.approx((0.5 + 0.5 + 5 * 1.0) / 7)
    assert list(gt['a'].labels) == [0, 2, 1] and list(pred['a'].labels) == [1, 2, 0]
    assert list(cases['a'].ignore) == [False, False, True]
    np.testing.assert_array_equal(preds['a'].scores, [0.9, 0.8, 0.7])


def test_markdown_table_pads_and_aligns():
    """First column left, the others right, every cell padded to its column's width."""
    text = markdown_table([['name', 'CPM'], ['all', '0.5000'], ['>10mm', '-']])
    assert text.splitlines() == ['| name  |    CPM |',
                                 '|-------|-------:|',
                                 '| all   | 0.5000 |',
                                 '| >10mm |      - |']


def test_unknown_case_raises():
    with pytest.raises(KeyError, match='zzz'):
        evaluate_detections(GT, {'zzz': pred_case([])}, CLASSES)


def test_average_precision_modes():
    rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert average_precision(rec, prec) == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert average_precision(rec, prec, 'area') == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([]), np.array([])) == 0.0
    with pytest.raises(ValueError):
        average_precision(rec, prec, '11point')


# -- agreement with mmdet3d's indoor_eval --------------------------------------------------
def _random_cases(seed, num_scans=6, num_classes=2):
    rng = np.random.default_rng(seed)
    cases, preds = {}, {}
    for s in range(num_scans):
        num_gt = rng.integers(1, 5)
        centres = rng.uniform(-60, 60, (num_gt, 3))
        sizes = rng.uniform(3, 20, (num_gt, 3))
        labels = np.arange(num_gt) % num_classes if s < num_classes else \
            rng.integers(0, num_classes, num_gt)
        gts = [(box(*c, tuple(z)), float(z.max()), 0, int(l))
               for c, z, l in zip(centres, sizes, labels)]
        ps = []
        for c, z, l in zip(centres, sizes, labels):
            for _ in range(rng.integers(0, 4)):      # 0-3 noisy copies per finding
                ps.append((box(*(c + rng.normal(0, 0.12, 3) * z), tuple(z * rng.uniform(
                    0.75, 1.3, 3))), float(rng.uniform()), int(l)))
        for _ in range(rng.integers(0, 3)):          # clutter
            ps.append((box(*rng.uniform(-60, 60, 3), tuple(rng.uniform(3, 20, 3))),
                       float(rng.uniform()), int(rng.integers(0, num_classes))))
        cases[f's{s}'] = gt_case(gts)
        preds[f's{s}'] = pred_case(ps)
    return cases, preds


def _indoor_eval_inputs(cases, preds):
    import torch
    from mmdet3d.structures import DepthInstance3DBoxes

    def boxes(array):
        return DepthInstance3DBoxes(torch.as_tensor(np.asarray(array), dtype=torch.float32)
                                    .reshape(-1, 7), origin=(0.5, 0.5, 0.5))

    gt_annos = [dict(gt_bboxes_3d=boxes(g.boxes), gt_labels_3d=g.labels) for g in
                cases.values()]
    dt_annos = [dict(bboxes_3d=boxes(preds[t].boxes),
                     scores_3d=torch.as_tensor(preds[t].scores, dtype=torch.float32),
                     labels_3d=torch.as_tensor(preds[t].labels)) for t in cases]
    return gt_annos, dt_annos


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_agrees_with_mmdet3d_indoor_eval(seed):
    """Same matching as ``indoor_eval`` (VOC: highest-IoU finding, duplicates FP); the only
    difference is the interpolation. With ``'area'`` (``indoor_eval``'s mode) the APs agree
    to float32 precision; our default 101-point AP equals the 101-point interpolation of
    ``indoor_eval``'s own precision / recall curve."""
    from mmdet3d.evaluation.functional.indoor_eval import eval_det_cls, indoor_eval
    from mmdet3d.structures import Box3DMode
    cases, preds = _random_cases(seed)
    gt_annos, dt_annos = _indoor_eval_inputs(cases, preds)
    label2cat = {0: 'a', 1: 'b'}
    theirs = indoor_eval(gt_annos, dt_annos, [0.25, 0.5], label2cat,
                         box_mode_3d=Box3DMode.DEPTH)
    ours_area = evaluate_detections(cases, preds, ('a', 'b'), iou_thrs=(0.25, 0.5),
                                    ap_interpolation='area')
    ours = evaluate_detections(cases, preds, ('a', 'b'), iou_thrs=(0.25, 0.5))
    for thr in (0.25, 0.5):
        for label, name in label2cat.items():
            assert ours_area['by_class'][name][f'AP_iou@{thr:g}'] == pytest.approx(
                theirs[f'{name}_AP_{thr:.2f}'], abs=1e-6)
        assert ours_area[f'AP_iou@{thr:g}'] == pytest.approx(theirs[f'mAP_{thr:.2f}'],
                                                             abs=1e-6)
    # 101-point on indoor_eval's precision / recall (its per-class inputs rebuilt here)
    for label, name in label2cat.items():
        pred_cls, gt_cls = {}, {}
        for i, t in enumerate(cases):
            g = gt_annos[i]
            gt_cls[i] = [g['gt_bboxes_3d'][int(j)] for j in np.flatnonzero(g['gt_labels_3d'] ==
                                                                       label)]
            d = dt_annos[i]
            sel = np.flatnonzero(d['labels_3d'].numpy() == label)
            pred_cls[i] = [(d['bboxes_3d'][int(j)], d['scores_3d'][int(j)].item())
                           for j in sel]
        for (rec, prec, _), thr in zip(eval_det_cls(pred_cls, gt_cls, [0.25, 0.5]),
                                       (0.25, 0.5)):
            assert ours['by_class'][name][f'AP_iou@{thr:g}'] == pytest.approx(
                average_precision(rec, prec), abs=1e-6)
    # and the two interpolations differ by at most a recall step of 1/100 of precision
    for thr in (0.25, 0.5):
        assert abs(ours[f'AP_iou@{thr:g}'] - ours_area[f'AP_iou@{thr:g}']) <= 0.011

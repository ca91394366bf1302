"""Findings grouped by the views whose 2D detections hold them (``views_detected.py``):
counts on boxes placed at known projections, and each group scored alone against figures
computed by hand."""
import numpy as np
import pytest

from projects.mv2d_xray.core.data_format import CaseGT, CasePred
from projects.mv2d_xray.core.geometry import XrayGeometry, project_points
from projects.mv2d_xray.mv2d_xray.baselines.triangulation import TriangulationConfig
from projects.mv2d_xray.mv2d_xray.evaluation.benchmark_report import (markdown_report,
                                                                      views_detected_table)
from projects.mv2d_xray.mv2d_xray.evaluation.views_detected import (VIEW_GROUPS,
                                                                    by_views_detected,
                                                                    dataset_detecting_views,
                                                                    detecting_views,
                                                                    group_cases)

CENTRES = np.array([[10.0, -20.0, 5.0], [-30.0, 15.0, -10.0]])


@pytest.fixture(scope='module')
def lidar2img():
    geometry = XrayGeometry(num_views=4, image_size=(128, 128))
    return np.stack([geometry.lidar2img(v) for v in range(4)])


def finding_box(centre, diameter=6.0):
    return [*centre, diameter, diameter, diameter, 0.0]


def box_at(uv, side=4.0, shift=(0.0, 0.0)):
    """An xyxy box of ``side`` px centred ``shift`` px from ``uv``."""
    u, v = uv[0] + shift[0], uv[1] + shift[1]
    return [u - side / 2, v - side / 2, u + side / 2, v + side / 2]


def test_a_view_detects_a_finding_when_a_gate_holds_its_projection(lidar2img):
    gt = CaseGT([finding_box(c) for c in CENTRES], [0, 0], [False, False], [6.0, 6.0])
    uv, _ = project_points(lidar2img, CENTRES)                         # (4, 2, 2)
    boxes, views = [], []
    # finding 0: views 0 and 2 within the 3 px gate (2.9 px off), view 1 just outside it
    for view, shift in ((0, (2.9, 0.0)), (2, (0.0, -2.9)), (1, (3.1, 0.0))):
        boxes.append(box_at(uv[view, 0], shift=shift))
        views.append(view)
    # finding 1: view 3 by a large box whose gate (half its 20 px side) holds it 9 px off
    # (finding 0's projection there is 21 px from that box's centre)
    boxes.append(box_at(uv[3, 1], side=20.0, shift=(-9.0, 0.0)))
    views.append(3)
    dets = dict(boxes=np.array(boxes), scores=np.array([0.9, 0.8, 0.7, 0.6]),
                labels=np.zeros(4, np.int64), view_ids=np.array(views))
    assert detecting_views(lidar2img, gt, dets).tolist() == [2, 1]
    # a wider gate takes in view 1's detection; a score under the baseline's score_thr
    # does not count; nor do another class's detections
    assert detecting_views(lidar2img, gt, dets, TriangulationConfig(gate_px=3.2)).tolist() \
        == [3, 1]
    low = dict(dets, scores=np.array([0.9, 0.01, 0.7, 0.6]))
    assert detecting_views(lidar2img, gt, low).tolist() == [1, 1]
    assert detecting_views(lidar2img, gt, dict(dets, labels=np.ones(4, np.int64))).tolist() \
        == [0, 0]
    assert detecting_views(lidar2img, gt, None).tolist() == [0, 0]


def test_a_finding_counts_only_the_detections_of_its_class(lidar2img):
    # both findings detected at their projections in all 4 views, by class 0 only
    gt = CaseGT([finding_box(c) for c in CENTRES], [0, 1], [False, False], [6.0, 6.0])
    uv, _ = project_points(lidar2img, CENTRES)
    boxes = [box_at(uv[v, g]) for v in range(4) for g in range(2)]
    dets = dict(boxes=np.array(boxes), scores=np.full(8, 0.9), labels=np.zeros(8, np.int64),
                view_ids=np.repeat(np.arange(4), 2))
    assert detecting_views(lidar2img, gt, dets).tolist() == [4, 0]
    dets['labels'] = np.tile([0, 1], 4)
    assert detecting_views(lidar2img, gt, dets).tolist() == [4, 4]


def test_counts_for_every_scan_of_an_info_pickle(lidar2img):
    """``view_ids`` index the info's views in their order, whatever their names."""
    gt = CaseGT([finding_box(CENTRES[0])], [0], [False], [6.0])
    order = [3, 1, 0, 2]                                   # position -> the geometry's view
    images = {f'VIEW_{v:02d}': dict(lidar2img=lidar2img[v].tolist()) for v in order}
    infos = dict(data_list=[dict(token=token, images=images) for token in ('a', 'b')])
    uv, _ = project_points(lidar2img[order], CENTRES[:1])  # (4, 1, 2), by position
    # detected at positions 0 and 1 (views 3 and 1); position 2 has a box 10 px off
    dets = {'a': dict(boxes=np.array([box_at(uv[0, 0]), box_at(uv[1, 0]),
                                      box_at(uv[2, 0], shift=(10.0, 0.0))]),
                      scores=np.ones(3), labels=np.zeros(3, np.int64),
                      view_ids=np.array([0, 1, 2]))}
    counts = dataset_detecting_views(infos, {'a': gt, 'b': gt}, dets)
    assert {k: v.tolist() for k, v in counts.items()} == {'a': [2], 'b': [0]}


def test_each_group_is_scored_alone():
    # 4 scans, one 6 mm finding each, detected in 0, 1, 2 and 5 views; scan 'd' also holds
    # an ignore region. The method hits the findings of 'b' (score 0.9) and 'd' (0.5), and
    # puts a false positive in 'a' (0.7) and one on the ignore region of 'd' (0.95).
    far = [100.0, 100.0, 100.0]
    cases = {t: CaseGT([finding_box(CENTRES[0])], [0], [False], [6.0]) for t in 'abc'}
    cases['d'] = CaseGT([finding_box(CENTRES[0]), finding_box(CENTRES[1])], [0, 0],
                        [False, True], [6.0, 6.0])
    counts = {'a': np.array([0]), 'b': np.array([1]), 'c': np.array([2]),
              'd': np.array([5, 0])}
    hit = finding_box(CENTRES[0])
    preds = {'mv2d': {'a': CasePred([finding_box(far)], [0.7], [0]),
                        'b': CasePred([hit], [0.9], [0]),
                        'd': CasePred([hit, finding_box(CENTRES[1])], [0.5, 0.95], [0, 0])}}
    with pytest.raises(ValueError, match="case 'd'"):
        group_cases(cases, dict(counts, d=np.array([5])), 1, 2)
    grouped = group_cases(cases, counts, 1, 2)
    assert [(~gt.ignore).sum() for gt in grouped.values()] == [0, 1, 0, 0]
    assert grouped['d'].ignore.tolist() == [True, True]
    report = by_views_detected(cases, preds, ['nodule'], counts)
    assert report['settings'] == dict(score_thr=0.05, max_per_view=30, gate_px=3.0,
                                      gate_frac=0.5)
    result = report['groups']
    assert list(result) == [name for name, _, _ in VIEW_GROUPS]
    assert [result[g]['findings'] for g in result] == [1, 1, 1, 1]
    # one FP over 4 scans (0.25 per scan; the ignore region's prediction is no FP):
    # group '1' is found at 0.9, above it: sensitivity 1 at every rate; group '3+' at 0.5,
    # below the FP: 0 under 1/4 FP per scan, 1 from 1/4 on -- 6 of the 7 rates
    assert result['1']['mv2d']['CPM'] == pytest.approx(1.0)
    assert result['3+']['mv2d']['FROC']['0.125'] == 0.0
    assert result['3+']['mv2d']['FROC']['0.25'] == 1.0
    assert result['3+']['mv2d']['CPM'] == pytest.approx(6 / 7)
    assert result['0']['mv2d']['CPM'] == 0.0 and result['2']['mv2d']['CPM'] == 0.0
    table = views_detected_table(report)
    assert 'max(3 px, 0.5 x its larger side)' in table
    assert table in markdown_report(dict(by_views_detected=report), [], 'title')
    rows = [[cell.strip() for cell in line.strip('|').split('|')]
            for line in table.splitlines() if line.startswith('|')]
    assert rows[0] == ['views detecting the finding', 'findings', 'mv2d CPM / sens@8']
    assert rows[3] == ['1', '1', '1.000 / 1.000'] and rows[-1] == ['3+', '1', '0.857 / 1.000']


def test_a_group_without_findings_has_no_figures():
    cases = {'a': CaseGT([finding_box(CENTRES[0])], [0], [False], [6.0])}
    report = by_views_detected(cases, {'mv2d': {}}, ['nodule'], {'a': np.array([3])})
    result = report['groups']
    assert result['0'] == {'findings': 0}
    assert result['3+']['findings'] == 1 and result['3+']['mv2d']['CPM'] == 0.0
    rows = views_detected_table(report).splitlines()
    assert any(line.replace(' ', '').startswith('|0|0|-|') for line in rows)

"""The benchmark report: layout of benchmark.json, the paired difference and the verdict,
on methods whose figures are known by construction."""
import pytest

from projects.mv2d_xray.core.bootstrap import bootstrap_metrics
from projects.mv2d_xray.core.data_format import CaseGT, CasePred
from projects.mv2d_xray.mv2d_xray.evaluation.benchmark_report import (PAIR, band_names,
                                                                      markdown_report, summarise,
                                                                      verdict, verdict_lines)


def box(diameter):
    return [0.0, 0.0, 0.0, diameter, diameter, diameter, 0.0]


@pytest.fixture(scope='module')
def boot():
    # 30 scans: 4 mm findings in 0-14, 8 mm findings in 15-29
    cases = {f'c{i:02d}': CaseGT([box(4.0 if i < 15 else 8.0)], [0], [False],
                                 [4.0 if i < 15 else 8.0]) for i in range(30)}
    hit = {t: CasePred([gt.boxes[0]], [0.9], [0]) for t, gt in cases.items()}
    preds = dict(mv2d=hit,                                              # finds all
                 triangulation={t: p for t, p in hit.items() if t >= 'c15'},  # 8 mm only
                 triangulation_gt2d=hit)
    return bootstrap_metrics(cases, preds, ['nodule'], pairs=[PAIR], num_resamples=200)


def test_summary_has_each_method_band_and_the_paired_difference(boot):
    bands = band_names(boot['methods']['mv2d']['result'])
    assert bands == ['3-6mm', '6-10mm', '>10mm']
    entry = summarise(boot, bands, {'overall': {'AP': 0.25, 'num_gt': 7}, 'by_view': {}})
    assert entry['mv2d']['CPM'] == 1.0 and entry['mv2d']['CPM_ci'] == [1.0, 1.0]
    assert entry['triangulation']['CPM'] == pytest.approx(0.5)
    assert entry['triangulation']['by_size']['3-6mm']['CPM'] == 0.0
    assert entry['triangulation']['by_size']['6-10mm']['CPM'] == 1.0
    assert entry['triangulation']['by_size']['>10mm'] == {}
    diff = entry['mv2d_minus_triangulation']
    assert diff['CPM'] == pytest.approx(0.5)
    low, high = diff['CPM_ci']
    assert 0.25 < low < 0.5 < high < 0.75
    assert diff['by_size']['3-6mm']['CPM'] == 1.0
    assert entry['2d_stage'] == {'AP': 0.25, 'num_gt': 7}
    assert entry['bootstrap']['num_cases'] == 30
    assert verdict(entry)['winner'] == 'mv2d'
    text = markdown_report(entry, bands, 'chest, test split')
    assert '| MV2D - triangulation (paired) |    all | 0.500 [' in text
    assert '30 test cases; 95 % intervals from 200 case-bootstrap resamples' in text
    assert '2D stage alone, per view (COCO): AP 0.250, num_gt 7' in text


def test_verdict_is_undecided_when_the_interval_spans_zero():
    entry = {'mv2d_minus_triangulation': {'CPM': 0.02, 'CPM_ci': [-0.05, 0.09]}}
    assert verdict(entry)['winner'] == 'undecided'
    entry = {'mv2d_minus_triangulation': {'CPM': -0.2, 'CPM_ci': [-0.3, -0.1]}}
    assert verdict(entry)['winner'] == 'triangulation'


def test_verdict_against_the_per_class_nms_baseline_where_it_was_run():
    entry = {'mv2d_minus_triangulation': {'CPM': 0.09, 'CPM_ci': [0.04, 0.14]},
             'mv2d_minus_triangulation_nms_per_class': {'CPM': -0.2, 'CPM_ci': [-0.3, -0.1]}}
    v = verdict(entry)
    assert (v['winner'], v['CPM_difference']) == ('mv2d', 0.09)
    assert v['nms_per_class'] == dict(winner='triangulation_nms_per_class', CPM_difference=-0.2,
                                      CPM_difference_ci=[-0.3, -0.1])
    assert verdict_lines('blades, test', v) == [
        'blades, test: MV2D - triangulation (paired), CPM 0.090 [0.040, 0.140]: mv2d',
        'blades, test: MV2D - triangulation, NMS per class (paired), CPM -0.200 '
        '[-0.300, -0.100]: triangulation_nms_per_class']
    del entry['mv2d_minus_triangulation_nms_per_class']
    assert 'nms_per_class' not in verdict(entry)
    assert len(verdict_lines('chest, test', verdict(entry))) == 1


def test_verdicts_of_the_volume_head_where_it_was_run():
    """The head's paired differences it holds each get a verdict under ``volume_head`` and a
    printed line, after MV2D's; an entry without the head has neither."""
    entry = {'mv2d_minus_triangulation': {'CPM': 0.02, 'CPM_ci': [-0.01, 0.05]},
             'volume_head_minus_triangulation': {'CPM': 0.09, 'CPM_ci': [0.05, 0.13]},
             'volume_head_minus_mv2d': {'CPM': 0.06, 'CPM_ci': [-0.01, 0.10]}}
    v = verdict(entry)
    assert v['winner'] == 'undecided'
    assert v['volume_head'] == {
        'volume_head_minus_triangulation': dict(winner='volume_head', CPM_difference=0.09,
                                                CPM_difference_ci=[0.05, 0.13]),
        'volume_head_minus_mv2d': dict(winner='undecided', CPM_difference=0.06,
                                       CPM_difference_ci=[-0.01, 0.10])}
    assert verdict_lines('chest, test', v) == [
        'chest, test: MV2D - triangulation (paired), CPM 0.020 [-0.010, 0.050]: undecided',
        'chest, test: volume head - triangulation (paired), CPM 0.090 [0.050, 0.130]: '
        'volume_head',
        'chest, test: volume head - MV2D (paired), CPM 0.060 [-0.010, 0.100]: undecided']
    del entry['volume_head_minus_triangulation'], entry['volume_head_minus_mv2d']
    assert 'volume_head' not in verdict(entry)

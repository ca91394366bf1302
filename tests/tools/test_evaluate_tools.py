"""``tools/evaluate.py``, ``tools/compare_predictions.py`` and ``tools/evaluate_2d.py``: the
tables and JSON they write, and one clear error line (no traceback) for bad input."""
import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT
from eval_fake_data import run_tool, write_eval_dataset


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return write_eval_dataset(str(tmp_path_factory.mktemp('evaluate_data')))


def perfect_predictions(infos_path):
    import mmengine
    infos = mmengine.load(infos_path)
    return {'results': {d['token']: [dict(bbox_3d=i['bbox_3d'], score=0.9, label=0)
                                     for i in d['instances']] for d in infos['data_list']}}


def write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_evaluate_prints_table_and_writes_json(dataset, tmp_path, capsys):
    pred = write(tmp_path, 'pred.json', perfect_predictions(dataset['infos']))
    out = str(tmp_path / 'sub' / 'metrics.json')
    assert run_tool('evaluate', '--gt', dataset['infos'], '--pred', pred, '--out', out) == 0
    printed = capsys.readouterr().out
    assert '| all ' in printed and 'FROC: sensitivity at FP/scan' in printed
    with open(out) as f:
        result = json.load(f)
    assert result['CPM'] == 1.0 and result['FROC']['8'] == 1.0
    assert set(result['by_size']) == {'3-6mm', '6-10mm', '>10mm'}
    # a missing case is an error unless --allow-missing (then it has no detections)
    preds = perfect_predictions(dataset['infos'])
    del preds['results']['evalfake-0002']
    pred = write(tmp_path, 'partial.json', preds)
    assert run_tool('evaluate', '--gt', dataset['infos'], '--pred', pred) == 2
    err = capsys.readouterr().err
    assert "'evalfake-0002'" in err and 'has no entry in the predictions' in err
    assert err.startswith(f'error: {pred}: ')   # names the prediction file (tools/_common.py)
    out2 = str(tmp_path / 'partial_metrics.json')
    assert run_tool('evaluate', '--gt', dataset['infos'], '--pred', pred, '--allow-missing',
                    '--out', out2) == 0
    with open(out2) as f:
        assert json.load(f)['CPM'] == pytest.approx(0.75)   # 3 of 4 findings


def test_evaluate_class_agnostic_finds_findings_named_wrongly(tmp_path, capsys):
    """Every finding predicted at its place with the other class: CPM 0 per class, 1 with
    ``--class-agnostic``, which says so and has the one class."""
    data = write_eval_dataset(str(tmp_path / 'data'), classes=('pore', 'crack'))
    preds = perfect_predictions(data['infos'])
    for boxes in preds['results'].values():
        for b in boxes:
            b['label'] = 1
    pred = write(tmp_path, 'pred.json', preds)
    out, out_agnostic = str(tmp_path / 'm.json'), str(tmp_path / 'agnostic.json')
    assert run_tool('evaluate', '--gt', data['infos'], '--pred', pred, '--out', out) == 0
    assert run_tool('evaluate', '--gt', data['infos'], '--pred', pred, '--out', out_agnostic,
                    '--class-agnostic') == 0
    assert 'class-agnostic: every box against every finding' in capsys.readouterr().out
    with open(out) as f, open(out_agnostic) as g:
        per_class, agnostic = json.load(f), json.load(g)
    assert per_class['CPM'] == 0.0 and per_class['by_class']['crack'] is None
    assert agnostic['CPM'] == 1.0 and agnostic['settings']['classes'] == ['any class']


@pytest.mark.parametrize('tool', ['evaluate', 'compare_predictions'])
def test_scoring_tools_import_no_model_stack(dataset, tmp_path, tool):
    """``tools/evaluate.py`` and ``tools/compare_predictions.py`` stand on the core alone:
    run as scripts in a fresh interpreter, they score prediction files without importing
    torch, mmengine or mmdet3d (the wrapper runs the tool as ``__main__``, then lists the
    heavy modules loaded)."""
    pred = write(tmp_path, 'pred.json', perfect_predictions(dataset['infos']))
    out = tmp_path / 'metrics.json'
    wrapper = textwrap.dedent(f'''
        import runpy, sys
        sys.path.insert(0, 'tools')
        sys.argv = ['tools/{tool}.py', *sys.argv[1:]]
        try:
            runpy.run_path('tools/{tool}.py', run_name='__main__')
        finally:
            heavy = ('torch', 'mmengine', 'mmdet', 'mmdet3d', 'mmcv')
            print('heavy modules:', sorted(m for m in heavy if m in sys.modules))
    ''')
    args = (['--pred', pred] if tool == 'evaluate'
            else ['--pair', pred, pred, '--resamples', '5'])
    proc = subprocess.run([sys.executable, '-c', wrapper, '--gt', dataset['infos'], *args,
                           '--out', str(out)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ('| all ' if tool == 'evaluate' else 'A - B: CPM') in proc.stdout and out.is_file()
    assert proc.stdout.strip().splitlines()[-1] == 'heavy modules: []', proc.stdout


def test_compare_predictions_pairs_and_their_mean(dataset, tmp_path, capsys):
    """A finds all 4 findings, B 3 of them: A - B = 0.25 in CPM; with a second pair A - A
    (0) the mean of the two is 0.125, its interval half of the first pair's (the same
    resamples); the JSON holds every figure; bad input is one line and exit 2."""
    perfect = perfect_predictions(dataset['infos'])
    a = write(tmp_path, 'a.json', perfect)
    missing = json.loads(json.dumps(perfect))
    missing['results']['evalfake-0002'] = []
    b = write(tmp_path, 'b.json', missing)
    out = str(tmp_path / 'comparison.json')
    assert run_tool('compare_predictions', '--gt', dataset['infos'], '--pair', a, b,
                    '--pair', a, a, '--resamples', '200', '--out', out) == 0
    printed = capsys.readouterr().out
    assert 'mean of the 2 pairs' in printed and '| 1: ' in printed
    with open(out) as f:
        result = json.load(f)
    first = result['pairs'][0]['difference']['CPM']
    assert result['pairs'][0]['a_figures']['CPM']['value'] == 1.0
    assert result['pairs'][0]['b_figures']['CPM']['value'] == pytest.approx(0.75)
    assert first['value'] == pytest.approx(0.25)
    assert result['pairs'][1]['difference']['CPM']['ci'] == [0.0, 0.0]
    assert result['mean']['CPM']['value'] == pytest.approx(0.125)
    assert result['mean']['CPM']['ci'] == pytest.approx([first['ci'][0] / 2, first['ci'][1] / 2])
    assert result['settings']['num_resamples'] == 200
    figures = ('CPM', 'FROC@0.125', 'FROC@1', 'FROC@8')           # B misses 1 of 4 findings
    difference = result['pairs'][0]['difference']
    assert [difference[k]['value'] for k in figures] == pytest.approx([0.25] * 4)
    one = str(tmp_path / 'one.json')
    assert run_tool('compare_predictions', '--gt', dataset['infos'], '--pair', a, b,
                    '--band', 'all sizes', '0', 'inf', '--resamples', '20', '--out', one) == 0
    printed = capsys.readouterr().out
    assert 'mean of the' not in printed and 'A - B: CPM_all sizes' in printed  # no mean
    with open(one) as f:
        result = json.load(f)
    assert result['pairs'][0]['difference']['CPM_all sizes']['value'] == pytest.approx(0.25)
    assert result['size_bands_mm'][-1] == ['all sizes', 0.0, None] and result['mean'] is None
    unknown = json.loads(json.dumps(perfect))
    unknown['results']['LIDC-IDRI-9999'] = []
    c = write(tmp_path, 'c.json', unknown)
    for argv, message in (
            (['--pair', a, str(tmp_path / 'nope.json')], 'prediction file not found'),
            (['--pair', a, b, '--resamples', '0'], '--resamples must be at least 1'),
            (['--pair', a, b, '--band', 'x', '2', '1'], 'needs 0 <= LOW_MM < HIGH_MM'),
            (['--pair', a, b, '--band', 'x', 'one', '2'], 'must be numbers'),
            (['--pair', a, b, '--band', '3-6mm', '3', '6'], 'already has a band of that name'),
            (['--pair', a, c], f"{c}: case 'LIDC-IDRI-9999'")):
        assert run_tool('compare_predictions', '--gt', dataset['infos'], *argv) == 2
        err = capsys.readouterr().err
        assert message in err and 'Traceback' not in err


BAD = [
    ('not json', '{"results": {', 'not valid JSON'),
    ('no results', {'predictions': {}}, '"results"'),
    ('list not dict', {'results': {'evalfake-0000': {'bbox_3d': []}}},
     "results['evalfake-0000']: expected a list"),
    ('unknown case', {'results': {'LIDC-IDRI-9999': []}}, "'LIDC-IDRI-9999'"),
    ('nan', {'results': {'evalfake-0000': [
        {'bbox_3d': [0, 0, float('nan'), 1, 1, 1, 0], 'score': 0.5, 'label': 0}]}},
     "results['evalfake-0000'][0]: bbox_3d has a non-finite value"),
    ('negative size', {'results': {'evalfake-0000': [
        {'bbox_3d': [0, 0, 0, 1, 1, 1, 0], 'score': 0.5, 'label': 0},
        {'bbox_3d': [0, 0, 0, 1, -2, 1, 0], 'score': 0.5, 'label': 0}]}},
     "results['evalfake-0000'][1]: bbox_3d has a negative size (dy = -2)"),
    ('six numbers', {'results': {'evalfake-0000': [
        {'bbox_3d': [0, 0, 0, 1, 1, 1], 'score': 0.5, 'label': 0}]}}, 'must be 7 numbers'),
    ('bad label', {'results': {'evalfake-0000': [
        {'bbox_3d': [0, 0, 0, 1, 1, 1, 0], 'score': 0.5, 'label': 3}]}},
     'label 3 is not a class index'),
    ('no score', {'results': {'evalfake-0000': [{'bbox_3d': [0, 0, 0, 1, 1, 1, 0],
                                                  'label': 0}]}}, 'missing score'),
]


@pytest.mark.parametrize('name,content,message', BAD, ids=[b[0] for b in BAD])
def test_evaluate_bad_input_one_clear_line(dataset, tmp_path, capsys, name, content,
                                           message):
    if not isinstance(content, str):
        content = json.dumps(content)     # NaN is written as the (non-standard) NaN token
    pred = write(tmp_path, 'bad.json', content)
    out = tmp_path / 'never.json'
    code = run_tool('evaluate', '--gt', dataset['infos'], '--pred', pred, '--allow-missing',
                    '--out', str(out))
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    assert message in lines[0], lines[0]
    assert 'Traceback' not in err
    assert not out.exists()


@pytest.mark.parametrize('rows', [[['a', 'one', 2.0]], [['a', 1.0]], [5]],
                         ids=['not a number', 'two columns', 'not a row'])
def test_scoring_tools_refuse_malformed_size_bands(dataset, tmp_path, capsys, rows):
    """An info pickle whose ``size_bands_mm`` rows are not ``[name, low, high]``: one
    line naming the setting from both scoring tools (``tools/_common.load_scored_split``)."""
    import mmengine
    infos = mmengine.load(dataset['infos'])
    infos['metainfo'].setdefault('converter', {})['size_bands_mm'] = rows
    gt = str(tmp_path / 'bad_bands.pkl')
    mmengine.dump(infos, gt)
    pred = write(tmp_path, 'pred.json', perfect_predictions(dataset['infos']))
    for argv in (['evaluate', '--gt', gt, '--pred', pred],
                 ['compare_predictions', '--gt', gt, '--pair', pred, pred]):
        assert run_tool(*argv) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and 'size_bands_mm' in lines[0], err


def test_evaluate_missing_files(dataset, tmp_path, capsys):
    assert run_tool('evaluate', '--gt', str(tmp_path / 'nope.pkl'), '--pred', 'x.json') == 2
    assert 'info pickle not found' in capsys.readouterr().err
    assert run_tool('evaluate', '--gt', dataset['infos'], '--pred',
                    str(tmp_path / 'nope.json')) == 2
    assert 'prediction file not found' in capsys.readouterr().err


def _gt_as_dets(coco_path, shift_px=0.0, score=0.9):
    with open(coco_path) as f:
        coco = json.load(f)
    return [dict(image_id=a['image_id'], category_id=a['category_id'],
                 bbox=[a['bbox'][0] + shift_px, *a['bbox'][1:]], score=score)
            for a in coco['annotations'] if not a['iscrowd']]


def test_evaluate_2d_per_view(dataset, tmp_path, capsys):
    dets = write(tmp_path, 'dets.json', _gt_as_dets(dataset['coco']))
    out = str(tmp_path / 'm2d.json')
    assert run_tool('evaluate_2d', '--coco', dataset['coco'], '--dets', dets,
                    '--out', out) == 0
    printed = capsys.readouterr().out
    assert 'VIEW_09' in printed and '| all ' in printed
    with open(out) as f:
        result = json.load(f)
    assert result['overall']['AP'] == pytest.approx(1.0)
    assert len(result['by_view']) == 10
    # every finding box named by its own box (one class here): 40 in the diagonal
    assert result['class_confusion']['counts'] == [[40, 0]]
    assert 'finding \\ detection' in printed and '| nodule ' in printed
    assert all(v['AP@0.5'] == pytest.approx(1.0) and v['num_gt'] == 4
               for v in result['by_view'].values())

    # boxes shifted by a third of their width: IoU 0.5 -> fails 0.75+, passes 0.25
    with open(dataset['coco']) as f:
        coco = json.load(f)
    shifted = [dict(d, bbox=[d['bbox'][0] + d['bbox'][2] / 3, *d['bbox'][1:]])
               for d in _gt_as_dets(dataset['coco'])]
    dets = write(tmp_path, 'shifted.json', shifted)
    assert run_tool('evaluate_2d', '--coco', dataset['coco'], '--dets', dets,
                    '--out', out) == 0
    with open(out) as f:
        result = json.load(f)
    assert result['overall']['AP@0.25'] == pytest.approx(1.0)
    assert result['overall']['AP@0.1'] == pytest.approx(1.0)
    assert result['overall']['AP'] < 0.2                  # only IoU 0.5 of 0.5:0.95
    # a detection on an ignore region (iscrowd) is not a false positive
    crowd = [a for a in coco['annotations'] if a['iscrowd']][0]
    extra = _gt_as_dets(dataset['coco']) + [dict(image_id=crowd['image_id'], category_id=1,
                                                 bbox=crowd['bbox'], score=0.99)]
    dets = write(tmp_path, 'crowd.json', extra)
    assert run_tool('evaluate_2d', '--coco', dataset['coco'], '--dets', dets,
                    '--out', out) == 0
    with open(out) as f:
        assert json.load(f)['overall']['AP'] == pytest.approx(1.0)
    # empty detections: AP 0, no crash
    dets = write(tmp_path, 'empty.json', [])
    assert run_tool('evaluate_2d', '--coco', dataset['coco'], '--dets', dets,
                    '--out', out) == 0
    with open(out) as f:
        assert json.load(f)['overall']['AP@0.1'] == 0.0


def test_evaluate_2d_bad_input(dataset, tmp_path, capsys):
    dets = write(tmp_path, 'bad2d.json', [dict(image_id=99999, category_id=1,
                                               bbox=[0, 0, 1, 1], score=0.5)])
    assert run_tool('evaluate_2d', '--coco', dataset['coco'], '--dets', dets) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'detection [0]: image_id 99999' in err[0]
    assert err[0].startswith(f'error: {dets}: ')              # names the detections file
    dets = write(tmp_path, 'bad2d.json', [dict(token='evalfake-0000', view='VIEW_01',
                                               category_id=1, bbox=[0, 0, -1, 1],
                                               score=0.5)])
    assert run_tool('evaluate_2d', '--coco', dataset['coco'], '--dets', dets) == 2
    assert 'bbox must be 4 finite numbers' in capsys.readouterr().err
    for flag, message in (('--gate-frac', 'gate_px and gate_frac must be >= 0'),
                          ('--score-thr', '--score-thr must be >= 0')):
        assert run_tool('evaluate_2d', '--coco', dataset['coco'], '--dets', dets, flag,
                        '-1') == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    # a JSON file that is no COCO dataset: named, one line
    assert run_tool('evaluate_2d', '--coco', dets, '--dets', dets) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'error: {dets} is not a COCO file: expected images, annotations and '
                   'categories lists']

"""``tools/explain.py`` end to end on the session's demo dataset with an untrained small
demo model: the pictures and ``explanations.json`` of one case, the pointing game of a
split, and one clear line for bad input."""
import json
import os
import os.path as osp

import cv2
import pytest
import torch
from test_train_test import run_tool, small_demo_config


@pytest.fixture(scope='module')
def explain_setup(demo_dataset, tmp_path_factory):
    """``(config file, checkpoint, infos)``: the small demo config and a checkpoint of its
    model with its initial (untrained, seeded) weights."""
    from mmdet3d.registry import MODELS
    from mmengine.registry import init_default_scope

    import projects.mv2d_xray.mv2d_xray  # noqa: F401
    folder = tmp_path_factory.mktemp('explain')
    cfg = small_demo_config(demo_dataset)
    config = str(folder / 'small_demo.py')
    cfg.dump(config)
    init_default_scope('mmdet3d')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    checkpoint = str(folder / 'init.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), checkpoint)
    return config, checkpoint, demo_dataset.val_pkl


def test_explain_one_case(explain_setup, demo_dataset, tmp_path):
    config, checkpoint, infos = explain_setup
    out = tmp_path / 'out'
    result = run_tool('explain.py', config, checkpoint, '--infos', infos, '--case',
                      'LIDC-IDRI-0001', '--top', '2', '--score-thr', '0', '--out', str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'wrote {out}/explanations.json' in result.stdout
    data = json.loads((out / 'explanations.json').read_text())
    assert data['case'] == 'LIDC-IDRI-0001' and len(data['findings']) == 2
    names = [f'VIEW_{v:02d}' for v in range(demo_dataset.geometry.num_views)]
    scores = [f['score'] for f in data['findings']]
    assert scores == sorted(scores, reverse=True)
    for finding in data['findings']:
        assert list(finding['view_attention']) == names
        assert sum(finding['view_attention'].values()) == pytest.approx(1.0, abs=1e-5)
        assert sum(a['attention'] for a in finding['attended']) == pytest.approx(1.0, abs=1e-5)
        assert finding['attended'][0]['view'] == finding['source_view']
        assert len(finding['bbox_3d']) == 7 and finding['class_name'] == 'nodule'
        for picture in finding['pictures'].values():
            image = cv2.imread(str(out / picture))
            assert image is not None and image.shape[0] > 100
    assert not [n for n in os.listdir(out) if n.endswith('.tmp')]


def test_pointing_game_of_a_split(explain_setup, tmp_path):
    config, checkpoint, infos = explain_setup
    out = tmp_path / 'pg'
    result = run_tool('explain.py', config, checkpoint, '--infos', infos, '--pointing-game',
                      '--limit', '1', '--out', str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'pointing game: hit rate' in result.stdout
    data = json.loads((out / 'pointing_game.json').read_text())
    assert data['cases'] == 1
    for method in ('eigen_cam', 'score_cam'):
        block = data['methods'][method]
        assert block['n'] > 0 and 0 <= block['hit_rate'] <= 1
        assert 0 < block['random_floor'] < 0.5      # findings are small parts of a view


def test_recall_2d_of_a_split(explain_setup, demo_dataset, tmp_path):
    """``--recall-2d`` scores every finding box of the cases' views once; the shares grow
    with the proposals' rank and stay in [0, 1]."""
    import pickle

    import numpy as np
    config, checkpoint, infos = explain_setup
    out = tmp_path / 'recall'
    result = run_tool('explain.py', config, checkpoint, '--infos', infos, '--recall-2d',
                      '--limit', '1', '--out', str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'first 10 proposals' in result.stdout and f'wrote {out}/recall_2d.json' in result.stdout
    data = json.loads((out / 'recall_2d.json').read_text())
    with open(infos, 'rb') as f:
        case = pickle.load(f)['data_list'][0]
    boxes = sum(1 for view in case['cam_instances'].values() for inst in view
                if not inst.get('ignore_flag', 0))
    assert data['cases'] == 1 and data['views'] == demo_dataset.geometry.num_views
    assert data['all']['n'] == boxes > 0
    assert sum(band['n'] for band in data['by_width'].values()) == boxes
    shares = [data['all'][f'proposals_first_{k}'] for k in data['ranks']]
    shares.append(data['all']['proposals_any'])
    assert all(0 <= s <= 1 for s in shares) and np.all(np.diff(shares) >= 0)
    assert 0 <= data['all']['detections'] <= 1


@pytest.mark.parametrize('extra, message', [
    (['--case', 'LIDC-IDRI-0001', '--finding', '99'], r'--finding 99: the model found'),
    (['--case', 'nope'], r"case 'nope' is not in the info pickle"),
    (['--case', 'LIDC-IDRI-0001', '--top', '0'], r'--top must be >= 1'),
    (['--recall-2d', '--iou-thr', '0'], r'--iou-thr must be in \(0, 1\], got 0.0'),
])
def test_bad_input_is_one_line(explain_setup, tmp_path, extra, message):
    import re
    config, checkpoint, infos = explain_setup
    out = tmp_path / 'bad'
    result = run_tool('explain.py', config, checkpoint, '--infos', infos, *extra,
                      '--out', str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr[-2000:]
    assert not osp.exists(out) or os.listdir(out) == []


def test_missing_checkpoint_and_out_file(explain_setup, tmp_path):
    config, checkpoint, infos = explain_setup
    result = run_tool('explain.py', config, str(tmp_path / 'none.pth'), '--infos', infos,
                      '--case', 'x', '--out', str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == f'error: checkpoint not found: {tmp_path / "none.pth"}'
    a_file = tmp_path / 'file.txt'
    a_file.write_text('x')
    result = run_tool('explain.py', config, checkpoint, '--infos', infos, '--case', 'x',
                      '--out', str(a_file))
    assert result.returncode == 2
    assert result.stderr.strip() == f'error: --out {a_file} exists and is not a folder'


def test_explain_a_study_equals_explaining_its_case(explain_setup, tmp_path):
    """``--study`` on LIDC-IDRI-0001 exported as a study folder explains the same findings
    (boxes, scores, view attention) as ``--case`` on the converted case."""
    from data_converters.export_study import export_study
    config, checkpoint, infos = explain_setup
    study = str(tmp_path / 'LIDC-IDRI-0001')
    export_study(infos, 'LIDC-IDRI-0001', study)
    outs = {}
    for kind, extra in (('case', ['--infos', infos, '--case', 'LIDC-IDRI-0001']),
                        ('study', ['--study', study])):
        out = tmp_path / kind
        result = run_tool('explain.py', config, checkpoint, *extra, '--top', '2',
                          '--saliency', 'none', '--out', str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        outs[kind] = json.loads((out / 'explanations.json').read_text())
    assert outs['study']['study'] == study
    assert len(outs['study']['findings']) == len(outs['case']['findings']) == 2
    for a, b in zip(outs['case']['findings'], outs['study']['findings']):
        assert a['bbox_3d'] == pytest.approx(b['bbox_3d'], abs=1e-3)
        assert a['score'] == pytest.approx(b['score'], abs=1e-5)
        assert a['source_view'] == b['source_view']
        for view, share in a['view_attention'].items():
            assert b['view_attention'][view] == pytest.approx(share, abs=1e-5)


def test_study_arguments_are_one_line(explain_setup, tmp_path):
    config, checkpoint, infos = explain_setup
    for extra, message in (
            (['--study', str(tmp_path / 'none')], '--study .*: no such folder'),
            (['--study', str(tmp_path), '--infos', infos], 'drop --infos'),
            (['--case', 'x'], '--case, --pointing-game and --recall-2d need --infos'),
            (['--infos', infos, '--case', 'x', '--calibration', 'c.json'],
             '--calibration goes with --study')):
        result = run_tool('explain.py', config, checkpoint, *extra, '--out',
                          str(tmp_path / 'o'))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        import re
        assert re.search(message, lines[0]), lines[0]


def test_a_view_probe_is_recorded_with_a_null_score():
    """A view probe (``model.roi_head.view_probes``) has no 2D score (NaN in the
    explanation): ``explanations.json`` records it as null, since NaN is not JSON, and
    flags it ``probe``; the explanation's ``attended_probes`` decides, not the score."""
    import numpy as np
    from conftest import import_from
    from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
    from mmengine.structures import InstanceData

    from projects.mv2d_xray.core.io import json_bytes
    finding_record = import_from('tools', 'explain').finding_record
    sample = Det3DDataSample(metainfo=dict(img_aug_matrix=np.stack([np.eye(4)] * 2)))
    sample.pred_instances_3d = InstanceData(
        bboxes_3d=LiDARInstance3DBoxes(torch.tensor([[1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 0.0]])),
        scores_3d=torch.tensor([0.7]), labels_3d=torch.tensor([0]))
    explanation = dict(
        source_view=0, source_bbox=torch.tensor([10.0, 10.0, 14.0, 14.0]),
        source_score=0.9, attended_views=torch.tensor([0, 1]),
        attended_bboxes=torch.tensor([[10.0, 10.0, 14.0, 14.0], [20.0, 10.0, 24.0, 14.0]]),
        attended_scores=torch.tensor([0.9, float('nan')]),
        attention=torch.tensor([0.6, 0.4]), attention_mean=torch.tensor([0.5, 0.5]),
        view_attention=torch.tensor([0.6, 0.4]))
    record = finding_record(0, sample, explanation, ['nodule'], ['view0', 'view1'])
    assert [a['score'] for a in record['attended']] == [pytest.approx(0.9), None]
    assert [a['probe'] for a in record['attended']] == [False, True]
    assert json.loads(json_bytes(record))['attended'][1]['attention'] == pytest.approx(0.4)
    flagged = dict(explanation, attended_scores=torch.tensor([0.9, 0.5]),
                   attended_probes=torch.tensor([False, True]))
    record = finding_record(0, sample, flagged, ['nodule'], ['view0', 'view1'])
    assert [a['probe'] for a in record['attended']] == [False, True]
    assert [a['score'] for a in record['attended']] == [pytest.approx(0.9), None]

"""``tools/volume_fusion.py`` end to end on the session's demo dataset (CPU), on the small
demo model of ``test_explain_tool`` (initial, seeded weights) with 20 mm voxels: ``train``
writes a head whose box sides are the training findings' median diameters, ``predict``
gives every val case boxes inside its CT box, ``fuse`` with an empty file halves the
scores; bad input, a checkpoint that is not a head and a crafted pickle stop with one line,
run nothing and write nothing."""
import json

import numpy as np
import pytest
import torch
from test_checkpoint_safety import hostile_checkpoint, one_line
from test_explain_tool import explain_setup  # noqa: F401 -- the fixture
from test_train_test import run_tool

from projects.mv2d_xray.core.data_format import case_gt_from_info, load_infos
from projects.mv2d_xray.core.geometry import index_to_ct

VOXEL_MM = 20.0
SIGMA_MIN_MM = 10.0


@pytest.fixture(scope='module')
def trained_head(explain_setup, demo_dataset, tmp_path_factory):  # noqa: F811
    config, checkpoint, _ = explain_setup
    work_dir = tmp_path_factory.mktemp('volume_fusion')
    result = run_tool('volume_fusion.py', 'train', config, checkpoint, '--infos',
                      demo_dataset.train_pkl, '--work-dir', str(work_dir), '--epochs', '2',
                      '--voxel-mm', str(VOXEL_MM), '--crop-voxels', '6',
                      '--sigma-min-mm', str(SIGMA_MIN_MM))
    assert result.returncode == 0, result.stderr[-3000:]
    return result, str(work_dir / 'volume_fusion.pth')


def test_train_writes_a_head_sized_by_the_training_findings(trained_head, demo_dataset):
    result, head = trained_head
    assert 'epoch 1/2: loss' in result.stdout and 'epoch 2/2: loss' in result.stdout
    assert f'wrote {head}' in result.stdout
    saved = torch.load(head, map_location='cpu', weights_only=True)
    diameters = np.concatenate([
        gt.diameters_mm[~gt.ignore] for gt in map(case_gt_from_info,
                                                   load_infos(demo_dataset.train_pkl)[
                                                       'data_list'])])
    assert saved['head_cfg']['box_size_mm'] == pytest.approx([np.median(diameters)])
    assert saved['head_cfg']['voxel_mm'] == VOXEL_MM and saved['meta']['epochs'] == 2
    assert saved['head_cfg']['sigma_min_mm'] == SIGMA_MIN_MM


def test_predict_and_fuse_on_val(trained_head, explain_setup, demo_dataset,  # noqa: F811
                                 tmp_path):
    config, checkpoint, _ = explain_setup
    _, head = trained_head
    out = tmp_path / 'volume.json'
    result = run_tool('volume_fusion.py', 'predict', config, checkpoint, head, '--infos',
                      demo_dataset.val_pkl, '--out', str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    preds = json.loads(out.read_text())['results']
    infos = {i['token']: i for i in load_infos(demo_dataset.val_pkl)['data_list']}
    assert sorted(preds) == sorted(infos)
    side = torch.load(head, weights_only=True)['head_cfg']['box_size_mm'][0]
    for token, items in preds.items():
        assert items, token
        shape, spacing = infos[token]['ct']['shape'], infos[token]['ct']['spacing_mm']
        low = index_to_ct(np.full(3, -0.5), shape, spacing) - 1.0       # the grid's margin
        high = index_to_ct(np.asarray(shape) - 0.5, shape, spacing) + 1.0
        centres = np.array([p['bbox_3d'][:3] for p in items])
        scores = [p['score'] for p in items]
        assert ((centres >= low) & (centres <= high)).all()
        assert scores == sorted(scores, reverse=True) and 0 <= min(scores) <= max(scores) <= 1
        assert all(p['bbox_3d'][3:6] == pytest.approx([side] * 3) and p['label'] == 0
                   for p in items)
    empty = tmp_path / 'empty.json'
    empty.write_text(json.dumps(dict(results={t: [] for t in infos})))
    fused = tmp_path / 'fused.json'
    result = run_tool('volume_fusion.py', 'fuse', '--infos', demo_dataset.val_pkl, str(empty),
                      str(out), '--out', str(fused))
    assert result.returncode == 0, result.stderr[-3000:]
    halves = json.loads(fused.read_text())['results']
    for token, items in preds.items():
        assert [p['score'] for p in halves[token]] == pytest.approx(
            [p['score'] / 2 for p in items])
        assert np.allclose([p['bbox_3d'] for p in halves[token]],
                           [p['bbox_3d'] for p in items])


def test_bad_input_is_one_line_and_runs_nothing(trained_head, explain_setup,  # noqa: F811
                                                demo_dataset, tmp_path):
    config, checkpoint, _ = explain_setup
    _, head = trained_head
    out = tmp_path / 'out.json'
    work_dir = tmp_path / 'work'
    train = ('train', config, checkpoint, '--infos', demo_dataset.train_pkl, '--work-dir',
             str(work_dir))
    one_line(run_tool('volume_fusion.py', *train, '--epochs', '0'), '--epochs')
    one_line(run_tool('volume_fusion.py', *train, '--crop-voxels', '2'), '--crop-voxels')
    one_line(run_tool('volume_fusion.py', *train, '--sigma-min-mm', '0'), '--sigma-min-mm')
    one_line(run_tool('volume_fusion.py', 'train', config, checkpoint, '--infos',
                      str(tmp_path / 'none.pkl'), '--work-dir', str(work_dir)), 'none.pkl')
    assert not work_dir.exists()
    predict = ('predict', config, checkpoint)
    one_line(run_tool('volume_fusion.py', *predict, checkpoint, '--infos',
                      demo_dataset.val_pkl, '--out', str(out)),
             checkpoint, 'not a volume fusion head')
    marker = tmp_path / 'payload-ran'
    hostile = hostile_checkpoint(tmp_path, marker)
    one_line(run_tool('volume_fusion.py', *predict, hostile, '--infos', demo_dataset.val_pkl,
                      '--out', str(out)), hostile, 'mkdir')
    assert not marker.exists() and not out.exists()
    one_line(run_tool('volume_fusion.py', 'fuse', '--infos', demo_dataset.val_pkl,
                      str(tmp_path / 'missing.json'), head, '--out', str(out)), 'missing.json')
    one_line(run_tool('volume_fusion.py', 'fuse', '--infos', demo_dataset.val_pkl, head, head,
                      '--out', str(out), '--dist-mm', '-1'), '--dist-mm')
    assert not out.exists()

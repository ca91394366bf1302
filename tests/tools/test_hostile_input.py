"""Careless and hostile input to the tools (issue 13): one line "error: ..." and exit
status 2 instead of a traceback or a silently wrong run -- misspelled config keys,
ground-truth labels outside the class list, an empty split, a corrupt PNG, mixed
precision the CPU cannot run, ``--launcher pytorch`` without torchrun, ``--out`` a directory -- and the
full traceback with ``--debug``."""
import json
import os
import os.path as osp
import pickle
import shutil

import pytest
import torch
from conftest import REPO_ROOT
from eval_fake_data import DEFAULT_EVAL_CASES
from eval_fake_data import run_tool as run_tool_inline
from eval_fake_data import write_eval_dataset
from test_train_test import DEMO_CONFIG, run_tool


def one_error_line(proc, *named: str) -> str:
    """The process failed with status 2 and one ``error:`` line naming ``named``."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith('error: '), proc.stderr[-3000:]
    for text in named:
        assert text in lines[-1], lines[-1]
    return lines[-1]


# -- misspelled keys ------------------------------------------------------------------------
@pytest.fixture(scope='module')
def misspelled_config(tmp_path_factory):
    """The demo config with ``detection_proposal.max_per_imgg`` (a config file)."""
    path = tmp_path_factory.mktemp('cfg') / 'misspelled.py'
    path.write_text(f"_base_ = ['{DEMO_CONFIG}']\n"
                    'model = dict(test_cfg=dict(detection_proposal=dict(max_per_imgg=10)))\n')
    return str(path)


def test_misspelled_key_in_a_config_file(misspelled_config, tmp_path):
    out = run_tool('train.py', misspelled_config, '--work-dir', str(tmp_path))
    one_error_line(out, "model.test_cfg.detection_proposal has no key 'max_per_imgg'",
                   "did you mean 'max_per_img'?")
    assert not os.listdir(tmp_path) or not any(f.endswith('.pth') for f in os.listdir(tmp_path))


@pytest.mark.parametrize('option, named', [
    ('model.test_cfg.rcnn.score_thrr=0.1',
     ("model.test_cfg.rcnn has no key 'score_thrr'", "did you mean 'score_thr'?")),
    ('model.train_cfg.rcnn.stage_loss_weight=[1.0]',
     ("model.train_cfg.rcnn has no key 'stage_loss_weight'",
      "did you mean 'stage_loss_weights'?")),
    ('model.roi_head.trianglate_prior=False',
     ("MV2DXrayRoIHead an argument 'trianglate_prior'", "did you mean 'triangulate_prior'?")),
])
def test_misspelled_key_in_cfg_options(tmp_path, option, named):
    out = run_tool('train.py', DEMO_CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
                   option)
    one_error_line(out, *named)


def test_misspelled_constructor_argument_in_a_config_file(tmp_path):
    path = tmp_path / 'bad_arg.py'
    path.write_text(f"_base_ = ['{DEMO_CONFIG}']\n"
                    'model = dict(roi_head=dict(prior_outlier=5.0))\n')
    out = run_tool('train.py', str(path), '--work-dir', str(tmp_path / 'run'))
    one_error_line(out, "MV2DXrayRoIHead an argument 'prior_outlier'",
                   "did you mean 'prior_outlier_mm'?")


def test_debug_shows_the_traceback(misspelled_config, tmp_path):
    out = run_tool('train.py', misspelled_config, '--work-dir', str(tmp_path), '--debug')
    assert out.returncode != 0
    assert 'Traceback' in out.stderr and 'XrayConfigError' in out.stderr


# -- evaluate: labels outside the class list --------------------------------------------------
def test_evaluate_gt_label_outside_the_classes(tmp_path, capsys):
    cases = [list(DEFAULT_EVAL_CASES[0]), []]
    cases[0][1] = dict(cases[0][1], label=3)
    data = write_eval_dataset(str(tmp_path), cases=cases)
    pred = tmp_path / 'pred.json'
    pred.write_text(json.dumps({'results': {}}))
    code = run_tool_inline('evaluate', '--gt', data['infos'], '--pred', str(pred),
                           '--allow-missing', '--out', str(tmp_path / 'm.json'))
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    assert data['infos'] in lines[0] and "case 'evalfake-0000' instance 1 has label 3" \
        in lines[0], lines[0]
    assert not (tmp_path / 'm.json').exists()


def test_evaluate_progress_on_large_inputs(tmp_path, capsys):
    """From 10^5 predicted boxes on, tools/evaluate.py says what it scores and shows a bar."""
    data = write_eval_dataset(str(tmp_path))
    with open(data['infos'], 'rb') as f:
        tokens = [d['token'] for d in pickle.load(f)['data_list']]
    per_case = 100_000 // len(tokens) + 1
    box = dict(bbox_3d=[1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 0.0], score=0.5, label=0)
    pred = tmp_path / 'pred.json'
    pred.write_text(json.dumps({'results': {t: [box] * per_case for t in tokens}}))
    assert run_tool_inline('evaluate', '--gt', data['infos'], '--pred', str(pred)) == 0
    err = capsys.readouterr().err
    assert f'scoring {per_case * len(tokens)} predicted boxes of {len(tokens)} cases' in err
    assert 'class / size band' in err and '4/4' in err


# -- launcher, AMP, --out ---------------------------------------------------------------------
def test_launcher_pytorch_without_torchrun(tmp_path):
    env_keys = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
    if any(k in os.environ for k in env_keys):
        pytest.skip('started by a distributed launcher')
    for tool, args in (('train.py', ()), ('test.py', (__file__, ))):
        out = run_tool(tool, DEMO_CONFIG, *args, '--work-dir', str(tmp_path / 'run'),
                       '--launcher', 'pytorch')
        one_error_line(out, '--launcher pytorch', 'tools/dist_train.sh', 'torchrun')
    assert not (tmp_path / 'run').exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU path of AMP')
@pytest.mark.parametrize('options, named', [
    (['optim_wrapper.type=AmpOptimWrapper'], "AmpOptimWrapper (mmengine's) needs a GPU"),
    (['optim_wrapper.dtype=float16'], 'optim_wrapper.dtype=float16: mixed precision on the '
     'CPU runs in bfloat16 only'),
])
def test_amp_settings_the_cpu_cannot_run(tmp_path, options, named):
    args = ['--amp'] if 'dtype' in options[0] else []
    out = run_tool('train.py', DEMO_CONFIG, '--work-dir', str(tmp_path / 'run'), *args,
                   '--cfg-options', *options)
    one_error_line(out, named)
    assert not (tmp_path / 'run').exists()


def test_amp_on_a_cpu_without_bf16(monkeypatch, capsys):
    """Without CUDA and without CPU bf16 kernels, ``--amp`` stops with one line."""
    import importlib

    from mmengine.config import Config
    monkeypatch.syspath_prepend(osp.join(REPO_ROOT, 'tools'))
    common = importlib.import_module('_common')
    engine = importlib.import_module('projects.mv2d_xray.mv2d_xray.engine.amp_optim_wrapper')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(engine, 'cpu_bf16_supported', lambda: False)
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD'))))
    with pytest.raises(SystemExit) as exc:
        common.enable_amp(cfg)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == f'error: {common.AMP_MESSAGE}'


def test_visualize_metrics_out_a_directory(tmp_path):
    metrics = tmp_path / 'metrics.json'
    metrics.write_text(json.dumps({'settings': {}, 'by_size': {}}))
    out = run_tool('visualize.py', 'metrics', str(metrics), '--out', str(tmp_path))
    one_error_line(out, f'--out {tmp_path} is a directory')
    assert sorted(os.listdir(tmp_path)) == ['metrics.json']


# -- data: an empty split, a corrupt PNG -------------------------------------------------------
@pytest.fixture(scope='module')
def small_config(demo_dataset, tmp_path_factory):
    from test_train_test import small_demo_config
    path = str(tmp_path_factory.mktemp('configs') / 'small.py')
    small_demo_config(demo_dataset).dump(path)
    return path


@pytest.mark.parametrize('split', ['train', 'val'])
def test_empty_split(demo_dataset, small_config, tmp_path, split):
    with open(demo_dataset.val_pkl, 'rb') as f:
        infos = pickle.load(f)
    infos['data_list'] = []
    empty = str(tmp_path / 'empty_infos.pkl')
    with open(empty, 'wb') as f:
        pickle.dump(infos, f)
    option = f'{split}_dataloader.dataset.ann_file={empty}'
    out = run_tool('train.py', small_config, '--work-dir', str(tmp_path / 'run'),
                   '--cfg-options', option, 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1')
    one_error_line(out, empty, 'the split has no cases')
    run = tmp_path / 'run'
    assert not run.exists() or not any(f.endswith('.pth') for f in os.listdir(run))


def test_corrupt_png(demo_dataset, small_config, tmp_path):
    root = str(tmp_path / 'data')
    shutil.copytree(demo_dataset.root, root)
    with open(osp.join(root, osp.basename(demo_dataset.train_pkl)), 'rb') as f:
        infos = pickle.load(f)
    first = infos['data_list'][0]
    image = next(iter(first['images'].values()))['img_path']
    with open(osp.join(root, image), 'r+b') as f:   # keep the PNG signature, break the rest
        f.seek(16)
        f.write(os.urandom(64))
        f.truncate(120)
    out = run_tool('train.py', small_config, '--work-dir', str(tmp_path / 'run'),
                   '--cfg-options', f'train_dataloader.dataset.data_root={root}/')
    one_error_line(out, 'cannot decode the image', image)

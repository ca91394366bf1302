"""Training and testing end to end on the demo dataset (``demo_dataset``), on the CPU:
the model learns, ``tools/train.py --resume`` continues an interrupted run,
``tools/test.py`` evaluates a checkpoint, and data that disagree with the config stop
the tools with one line."""
import copy
import json
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, import_from
from mmengine.config import Config, ConfigDict
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope

DEMO_CONFIG = osp.join(REPO_ROOT, 'configs', 'mv2d_xray', 'mv2d_r18_fpn_1xb1-30e_demo-256.py')
NUM_LAYERS = 2   # decoder layers of the small test model


def small_demo_config(demo_dataset) -> Config:
    """The demo config on the session's demo dataset: its image size, no photometric
    augmentation (deterministic), no worker processes, two decoder layers, at most 5
    detections per view; a log line per iteration and a checkpoint per epoch."""
    cfg = Config.fromfile(DEMO_CONFIG)
    img_size = tuple(int(s) for s in demo_dataset.geometry.image_size)
    root = demo_dataset.root + '/'
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        loader.update(num_workers=0, persistent_workers=False)
        loader.dataset.update(data_root=root, image_size=img_size)
        pipeline = [t for t in loader.dataset.pipeline
                    if t['type'] != 'XrayPhotoMetricDistortion']
        for transform in pipeline:
            if transform['type'] == 'XrayResizeCropFlip':
                transform.update(img_scale=img_size, ratio_range=(1.0, 1.0),
                                 random_crop=False, flip_prob=0.0)
        loader.dataset.pipeline = pipeline
    for key in ('val_evaluator', 'test_evaluator'):
        cfg[key].ann_file = osp.join(root, 'demo_infos_val.pkl')
    model = cfg.model
    model.roi_head.bbox_head.transformer.num_layers = NUM_LAYERS
    model.train_cfg.rcnn.stage_loss_weights = [0.1] * NUM_LAYERS
    model.train_cfg.detection_proposal.max_per_img = 5
    model.test_cfg.detection_proposal.max_per_img = 5
    cfg.train_cfg.update(max_epochs=2, val_interval=2)
    cfg.param_scheduler[0].end = 4
    cfg.param_scheduler[1].update(T_max=2, end=2)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.update(interval=1, max_keep_ckpts=-1)
    cfg.log_processor.window_size = 1
    cfg.work_dir = None
    return cfg


@pytest.fixture(scope='module')
def small_config_file(demo_dataset, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp('configs') / 'mv2d_small_demo.py')
    small_demo_config(demo_dataset).dump(path)
    return path


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['OMP_NUM_THREADS'] = '1'
    return subprocess.run([sys.executable, osp.join(REPO_ROOT, 'tools', tool), *args],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT)


def test_3d_loss_halves_on_demo_cases(demo_dataset):
    """Within 16 epochs over the demo training cases (64 CPU iterations) the 3D loss --
    the decoder layers' focal + L1 terms, averaged over an epoch -- falls to half of the
    first epoch's."""
    from mmdet3d.registry import DATASETS, MODELS

    import projects.mv2d_xray.mv2d_xray  # noqa: F401
    torch.set_num_threads(1)
    init_default_scope('mmdet3d')
    torch.manual_seed(0)
    np.random.seed(0)
    cfg = small_demo_config(demo_dataset)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batches = [model.data_preprocessor(pseudo_collate([dataset[i]]), True)
               for i in range(len(dataset))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)

    def epoch() -> float:
        losses_3d = []
        for batch in batches:
            losses = model(**copy.deepcopy(batch), mode='loss')
            total, _ = model.parse_losses(losses)
            losses_3d.append(float(sum(v for k, v in losses.items()
                                       if re.match(r'l\d+\.loss_', k))))
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
        return float(np.mean(losses_3d))

    means = [epoch() for _ in range(16)]
    assert np.isfinite(means).all()
    assert min(means[1:]) <= 0.5 * means[0], means


def test_train_resume_then_test(small_config_file, demo_dataset, tmp_path):
    """An interrupted run (stopped after epoch 1) resumes at epoch 2 and writes
    ``epoch_2.pth``; ``tools/test.py`` on it prints the metric table and writes the
    metrics and the predictions of every validation case."""
    work_dir = str(tmp_path / 'run')
    # --resume in a work dir without a checkpoint: one warning line, then from scratch
    first = run_tool('train.py', small_config_file, '--work-dir', work_dir, '--resume',
                     '--cfg-options', 'train_cfg.max_epochs=1')
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.startswith(f'work dir: {work_dir}\n'), first.stdout[:300]
    assert f'warning: --resume: no checkpoint in the work dir {work_dir}; training starts ' \
        'from scratch' in first.stderr.splitlines()
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))
    assert not osp.exists(osp.join(work_dir, 'epoch_2.pth'))

    second = run_tool('train.py', small_config_file, '--work-dir', work_dir, '--resume')
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert 'resumed epoch: 1' in log
    assert re.search(r'Epoch\(train\)\s+\[2\]', log)
    assert not re.search(r'Epoch\(train\)\s+\[1\]', log)   # epoch 1 was not trained again
    checkpoint = torch.load(osp.join(work_dir, 'epoch_2.pth'), map_location='cpu',
                            weights_only=False)
    num_train = len(demo_dataset.tokens['train'])
    assert (checkpoint['meta']['epoch'], checkpoint['meta']['iter']) == (2, 2 * num_train)

    test_dir = str(tmp_path / 'test')
    test = run_tool('test.py', small_config_file, osp.join(work_dir, 'epoch_2.pth'),
                    '--work-dir', test_dir)
    assert test.returncode == 0, test.stderr[-3000:]
    out = test.stdout + test.stderr
    assert 'CPM' in out and 'FROC' in out
    # every file written is named
    assert f'metrics written to {osp.join(test_dir, "metrics.json")}' in out
    assert f'3D predictions written to {osp.join(test_dir, "predictions.json")}' in out
    if osp.isfile(osp.join(test_dir, 'dets2d.json')):
        assert f'2D detections written to {osp.join(test_dir, "dets2d.json")}' in out
    metrics = json.load(open(osp.join(test_dir, 'metrics.json')))
    assert metrics and isinstance(metrics, dict)
    predictions = json.load(open(osp.join(test_dir, 'predictions.json')))
    assert set(predictions['results']) == set(demo_dataset.tokens['val'])
    for boxes in predictions['results'].values():
        for box in boxes:
            assert len(box['bbox_3d']) == 7 and np.isfinite(box['score'])

    # the 2D stage alone, as the benchmark runs it for its per-class-NMS baseline: the
    # same 2D detections, a metrics file with the 2D figures only, no 3D predictions.
    # Run from the config the first test dumped into its work dir, which names that
    # run's metrics file: this run writes into its own work dir, the first run's files
    # stay as they were
    first_files = {name: open(osp.join(test_dir, name)).read()
                   for name in os.listdir(test_dir) if name.endswith('.json')}
    assert {'metrics.json', 'predictions.json'} <= set(first_files)
    dumped_config = osp.join(test_dir, osp.basename(small_config_file))
    assert osp.join(test_dir, 'metrics.json') in open(dumped_config).read()
    bench = import_from('tools', 'benchmark_detection')
    only_2d = str(tmp_path / 'test_2d')
    test = run_tool('test.py', dumped_config, osp.join(work_dir, 'epoch_2.pth'),
                    '--work-dir', only_2d, '--cfg-options', *bench.DETECTIONS_ONLY_OPTIONS)
    assert test.returncode == 0, test.stderr[-3000:]
    assert {name: open(osp.join(test_dir, name)).read() for name in first_files} == \
        first_files
    assert set(json.load(open(osp.join(only_2d, 'metrics.json')))) == {'eval_2d'}
    assert not osp.exists(osp.join(only_2d, 'predictions.json'))
    assert json.load(open(osp.join(only_2d, 'dets2d.json'))) == \
        json.load(open(osp.join(test_dir, 'dets2d.json')))


@pytest.mark.parametrize('option, named', [
    ('train_dataloader.dataset.num_views=8', 'num_views=8'),
    ("train_dataloader.dataset.metainfo.classes=['mass']", "'mass'"),
])
def test_config_that_disagrees_with_the_data_stops_with_one_line(small_config_file,
                                                                 tmp_path, option, named):
    out = run_tool('train.py', small_config_file, '--work-dir', str(tmp_path),
                   '--cfg-options', option)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert 'Traceback' not in out.stderr
    assert lines[-1].startswith('error: ') and named in lines[-1]


def test_tools_test_routes_metrics_json():
    """tools/test.py fills ``out_file`` of metrics whose signature has it."""
    import importlib.util

    import projects.mv2d_xray.mv2d_xray  # noqa: F401  (registers XrayDet3DMetric)
    tools = osp.join(REPO_ROOT, 'tools')
    sys.path.insert(0, tools)
    try:
        spec = importlib.util.spec_from_file_location('_tool_test', osp.join(tools, 'test.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(tools)
    cfg = ConfigDict(type='XrayDet3DMetric', ann_file='x.pkl')
    module._route_metrics_json(cfg, 'work/metrics.json')
    assert cfg['out_file'] == 'work/metrics.json'
    # a config dumped by an earlier test names that run's file: routed to this run's
    dumped = [ConfigDict(type='XrayDet3DMetric', ann_file='x.pkl',
                         out_file='earlier/metrics.json'), ConfigDict(type='NoSuchMetric')]
    module._route_metrics_json(dumped, 'work/metrics.json')
    assert dumped[0]['out_file'] == 'work/metrics.json' and 'out_file' not in dumped[1]
    # ... unless the command line names the file
    assert module._names_out_file({'test_evaluator.out_file': 'm.json'})
    assert module._names_out_file({'test_evaluator.0.out_file': 'm.json'})
    assert not module._names_out_file({'test_evaluator.pred_out_file': 'p.json'})
    assert not module._names_out_file({'val_evaluator.out_file': 'm.json'})
    assert not module._names_out_file(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU (bf16) path')
def test_amp_training_on_cpu_resumes(small_config_file, tmp_path):
    """``--amp`` on the CPU trains in bf16 through the plugin's ``XrayAmpOptimWrapper``
    with finite losses (2D and 3D terms), saves its (disabled) loss scaler with the
    optimiser, and ``--resume --amp`` continues from that checkpoint at epoch 2."""
    work_dir = str(tmp_path / 'amp')
    no_val = 'train_cfg.val_begin=100'
    two_cases = 'train_dataloader.dataset.indices=2'     # two iterations per epoch
    first = run_tool('train.py', small_config_file, '--work-dir', work_dir, '--amp',
                     '--cfg-options', 'train_cfg.max_epochs=1', no_val, two_cases)
    assert first.returncode == 0, first.stderr[-3000:]
    log = first.stdout + first.stderr
    assert "type='XrayAmpOptimWrapper'" in log
    from projects.mv2d_xray.mv2d_xray.engine import cpu_bf16_native
    assert ('mixed precision on a CPU without native bf16' in log) != cpu_bf16_native()
    losses = [float(v) for v in re.findall(r'\sloss: (\S+)', log)]
    assert len(losses) == 2 and np.isfinite(losses).all() and min(losses) > 0, losses
    checkpoint = torch.load(osp.join(work_dir, 'epoch_1.pth'), map_location='cpu',
                            weights_only=False)
    assert checkpoint['optimizer']['loss_scaler'] == {}

    second = run_tool('train.py', small_config_file, '--work-dir', work_dir, '--amp',
                      '--resume', '--cfg-options', no_val, two_cases)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert 'resumed epoch: 1' in log and re.search(r'Epoch\(train\)\s+\[2\]', log)
    losses = [float(v) for v in re.findall(r'\sloss: (\S+)', log)]
    assert len(losses) == 2 and np.isfinite(losses).all(), losses
    assert torch.load(osp.join(work_dir, 'epoch_2.pth'), map_location='cpu',
                      weights_only=False)['meta']['epoch'] == 2

"""``tools/benchmark_model.py``: a tiny measurement writes every figure to its JSON (the
parameter count of the config's model, times of every repeat, peak memory above the
process's baseline), and input it cannot use stops with one line."""
import importlib
import json

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from test_hostile_input import one_error_line
from test_train_test import DEMO_CONFIG, run_tool


def test_benchmark_of_the_demo_config_with_amp_and_checkpointing(tmp_path):
    from mmdet3d.registry import MODELS

    from projects.mv2d_xray.mv2d_xray.models import MV2DXray
    out_file = tmp_path / 'bench.json'
    out = run_tool('benchmark_model.py', DEMO_CONFIG, '--views', '2', '--size', '64',
                   '--repeats', '2', '--warmup', '0', '--threads', '1', '--amp', '--with-cp',
                   '--json', str(out_file))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out_file.read_text())
    assert {'train_step_s', 'train_peak_mem_gb', 'infer_latency_s', 'infer_peak_mem_gb',
            'device', 'amp', 'with_cp', 'params'} <= set(result)
    assert (result['device'], result['amp'], result['with_cp']) == ('cpu', True, True)
    assert result['amp_dtype'] == 'bfloat16' and result['machine']['torch_threads'] == 1
    assert (result['views'], result['image_size'], result['sod_mm']) == (2, [64, 64], 300.0)
    assert result['cfg_options'] == {}
    init_default_scope('mmdet3d')
    model = MODELS.build(Config.fromfile(DEMO_CONFIG).model)
    assert isinstance(model, MV2DXray)
    assert result['params'] == sum(p.numel() for p in model.parameters())
    assert result['trainable_params'] == sum(p.numel() for p in model.parameters()
                                             if p.requires_grad) < result['params']
    for key in ('train_step', 'infer_latency'):
        times = result[f'{key}_all_s']
        assert len(times) == 2 and min(times) > 0
        assert result[f'{key}_min_s'] == min(times) <= result[f'{key}_s'] <= max(times)
    for key in ('train', 'infer'):
        assert result[f'{key}_peak_mem_gb'] > result[f'{key}_baseline_mem_gb'] > 0.1
    # the demo data are not there: the data time is the demo's loader (2 persistent
    # workers, rounds of 2 x 2 batches) on the synthetic study written as a dataset
    assert (result['data_source'], result['data_ann_file']) == ('synthetic', None)
    assert (result['data_workers'], result['data_batches_per_round']) == (2, 4)
    assert result['data_pin_memory'] is torch.cuda.is_available()
    times = result['data_time_all_s']
    assert len(times) == 2 and min(times) > 0 and result['data_time_min_s'] == min(times)
    assert 'train step' in out.stdout and f'results written to {out_file}' in out.stdout
    assert 'workers, on a synthetic dataset' in out.stdout


def test_data_only_reads_the_configs_training_data_where_they_exist(tmp_path):
    """``--data-only``: no model, the data time per batch of the config's training
    loader on its own data (here a 3-case dataset of 3 views of 48 x 64 px, no workers:
    one batch per round, the fourth batch from a second epoch)."""
    from xray_fake_data import write_fake_dataset
    root = tmp_path / 'data'
    ann_file = write_fake_dataset(str(root), num_views=3, image_size=(48, 64))
    out_file = tmp_path / 'data.json'
    out = run_tool('benchmark_model.py', DEMO_CONFIG, '--data-only', '--repeats', '3',
                   '--threads', '1', '--json', str(out_file), '--cfg-options',
                   f'train_dataloader.dataset.data_root={root}/',
                   f'train_dataloader.dataset.ann_file={ann_file}',
                   'train_dataloader.dataset.num_views=3',
                   'train_dataloader.dataset.image_size=[48,64]',
                   'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False')
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out_file.read_text())
    assert (result['data_source'], result['data_ann_file']) == ('real', f'{root}/{ann_file}')
    assert (result['data_workers'], result['data_batches_per_round']) == (0, 1)
    assert len(result['data_time_all_s']) == 3 and result['data_time_s'] > 0
    assert result['data_only'] and 'train_step_s' not in result and 'params' not in result
    assert (result['views'], result['image_size']) == (3, [48, 64])
    # the overrides are recorded with the figures they produced
    assert result['cfg_options']['train_dataloader.dataset.image_size'] == [48, 64]
    assert result['cfg_options']['train_dataloader.num_workers'] == 0
    assert 'train step' not in out.stdout and f'on {root}/{ann_file}' in out.stdout


def test_the_synthetic_dataset_reads_back_as_the_synthetic_study(monkeypatch, tmp_path):
    """The dataset the data time is measured on when the config's data are missing: its
    16-bit PNGs and info pickle, read by the config's dataset, give the synthetic
    study's images (to half a 16-bit level) and 2D boxes."""
    import numpy as np
    from mmdet3d.registry import DATASETS

    from projects.mv2d_xray.core.geometry import XrayGeometry
    importlib.import_module('projects.mv2d_xray.mv2d_xray')     # registers the dataset
    bench = benchmark_module(monkeypatch)
    geometry = XrayGeometry(num_views=3, image_size=(40, 56))
    path = bench.write_synthetic_dataset(str(tmp_path), geometry, ['nodule'], 2)
    assert path == str(tmp_path / bench.SYNTHETIC_ANN_FILE)
    init_default_scope('mmdet3d')
    dataset_cfg = Config.fromfile(DEMO_CONFIG).train_dataloader.dataset
    dataset_cfg.update(data_root=str(tmp_path), ann_file=bench.SYNTHETIC_ANN_FILE,
                       num_views=3, image_size=[40, 56],
                       pipeline=[dict(type='LoadXrayMultiViewImages'),
                                 dict(type='LoadXrayAnnotations3D'),
                                 dict(type='PackMV2DXrayInputs')])
    dataset = DATASETS.build(dataset_cfg)
    assert len(dataset) == 2
    item, study = dataset[1], bench.synthetic_study(geometry)
    assert np.abs(item['inputs']['img'].numpy() -
                  study['inputs']['img'][0].numpy()).max() <= 255 / 65535 / 2 + 1e-4
    got, want = item['data_samples'], study['data_samples'][0]
    for key in ('bboxes', 'view_ids'):
        assert torch.allclose(got.gt_instances[key].float(), want.gt_instances[key].float(),
                              atol=1e-4)
    assert torch.allclose(got.gt_instances_3d.bboxes_3d.tensor,
                          want.gt_instances_3d.bboxes_3d.tensor, atol=1e-4)


def benchmark_module(monkeypatch):
    import importlib
    import os.path as osp

    from conftest import REPO_ROOT
    monkeypatch.syspath_prepend(osp.join(REPO_ROOT, 'tools'))
    return importlib.import_module('benchmark_model')


def test_a_missing_config_is_one_line():
    one_error_line(run_tool('benchmark_model.py', 'missing.py', '--views', '3'),
                   'config file not found: missing.py')


@pytest.mark.parametrize('args, named', [
    (['--views', '1'], '--views must be at least 2'),
    (['--size', '0'], '--size must be a positive number of pixels'),
    (['--repeats', '0'], '--repeats must be >= 1'),
    (['--threads', '0'], '--threads must be at least 1'),
    (['--data-only', '--with-cp'], '--data-only measures the data loading only'),
] + ([] if torch.cuda.is_available() else [
    (['--device', 'cuda'], '--device cuda: no CUDA device here')]))
def test_input_the_benchmark_cannot_use(monkeypatch, capsys, args, named):
    """The checks ``main`` runs before it starts a worker (in this process: one line on
    stderr and exit status 2, as ``tools/benchmark_model.py`` prints them)."""
    bench = benchmark_module(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        bench.check_args(bench.parse_args([DEMO_CONFIG, *args]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {named}') and err.count('\n') == 1, err


def test_amp_on_a_cpu_without_bf16(monkeypatch, capsys):
    bench = benchmark_module(monkeypatch)
    engine = importlib.import_module('projects.mv2d_xray.mv2d_xray.engine.amp_optim_wrapper')
    monkeypatch.setattr(engine, 'cpu_bf16_supported', lambda: False)
    with pytest.raises(SystemExit) as exc:
        bench.check_args(bench.parse_args([DEMO_CONFIG, '--amp', '--device', 'cpu']))
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith('error: --amp on the CPU needs bf16 kernels')

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
    assert result['data_time_s'] is None           # the demo data are not there
    assert 'train step' in out.stdout and f'results written to {out_file}' in out.stdout


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

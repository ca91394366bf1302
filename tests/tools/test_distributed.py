"""Several processes on the CPU (torchrun, gloo): ``tools/dist_train.sh`` with 2 processes
trains the same weights on both ranks and the same as one process with the same total
batch; ``tools/dist_test.sh`` gives ``tools/test.py``'s predictions and metrics; too many
processes for the data, and SyncBN without CUDA, stop with one line. About 2 minutes on
2 CPU cores."""
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from test_hostile_input import one_error_line
from test_train_test import run_tool, small_demo_config

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason='the CPU (gloo) path; on a GPU torchrun uses nccl')

#: The losses of 2 processes x 1 study and of 1 process x 2 studies agree to float32
#: summation order (the 3D losses are normalised by the positives averaged over the
#: processes, mmdet's ``reduce_mean``, so their mean equals the 2-study loss).
LOSS_RTOL = 1e-5
#: ... and so do the weights after the optimiser steps (measured: 9e-7).
WEIGHT_ATOL = 1e-5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(OMP_NUM_THREADS='1', PYTHON=sys.executable, PORT=str(free_port()))
    return subprocess.run(['bash', osp.join(REPO_ROOT, 'tools', script), *args],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=600)


@pytest.fixture(scope='module')
def dist_config_file(demo_dataset, tmp_path_factory) -> str:
    """The small demo config made deterministic across process layouts (no dropout, no
    shuffling, a fixed seed), one epoch without validation, and the test hook that
    writes every process's losses and weight hash (``rank_record_hook.py``)."""
    cfg = small_demo_config(demo_dataset)
    cfg.model.roi_head.bbox_head.transformer.update(dropout=0.0, ffn_dropout=0.0)
    cfg.train_dataloader.sampler.shuffle = False
    cfg.train_cfg.update(max_epochs=1, val_begin=100)
    cfg.randomness = dict(seed=0)
    cfg.custom_hooks = [dict(type='RankRecordHook')]
    cfg.custom_imports.imports = ['projects.mv2d_xray.mv2d_xray',
                                  'tests.tools.rank_record_hook']
    path = str(tmp_path_factory.mktemp('dist_config') / 'mv2d_dist_demo.py')
    cfg.dump(path)
    return path


@pytest.fixture(scope='module')
def dist_run(dist_config_file, tmp_path_factory) -> str:
    work_dir = str(tmp_path_factory.mktemp('dist_run'))
    out = run_script('dist_train.sh', dist_config_file, '2', '--work-dir', work_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    return work_dir


def read_ranks(work_dir: str, world_size: int):
    records = []
    for rank in range(world_size):
        with open(osp.join(work_dir, f'rank{rank}.json')) as f:
            records.append(json.load(f))
    assert [r['world_size'] for r in records] == [world_size] * world_size
    return records


def test_two_processes_train_what_one_process_trains(dist_run, dist_config_file, demo_dataset,
                                                     tmp_path):
    """Both ranks finish with bit-identical weights; the mean of their losses at every
    iteration equals the loss of one process on the same two studies (batch 2), and the
    saved weights equal that run's."""
    ranks = read_ranks(dist_run, 2)
    assert ranks[0]['weights_sha256'] == ranks[1]['weights_sha256']
    num_iters = len(demo_dataset.tokens['train']) // 2
    assert [len(r['losses']) for r in ranks] == [num_iters, num_iters]
    assert ranks[0]['losses'] != ranks[1]['losses']       # they saw different studies

    single_dir = str(tmp_path / 'single')
    single = run_tool('train.py', dist_config_file, '--work-dir', single_dir,
                      '--cfg-options', 'train_dataloader.batch_size=2')
    assert single.returncode == 0, single.stderr[-3000:]
    (one, ) = read_ranks(single_dir, 1)
    mean = np.mean([r['losses'] for r in ranks], axis=0)
    np.testing.assert_allclose(mean, one['losses'], rtol=LOSS_RTOL)

    two_procs = torch.load(osp.join(dist_run, 'epoch_1.pth'), weights_only=False)
    one_proc = torch.load(osp.join(single_dir, 'epoch_1.pth'), weights_only=False)
    assert two_procs['meta']['iter'] == one_proc['meta']['iter'] == num_iters
    diffs = {k: float((v.float() - one_proc['state_dict'][k].float()).abs().max())
             for k, v in two_procs['state_dict'].items() if v.is_floating_point()}
    assert max(diffs.values()) < WEIGHT_ATOL, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]


def test_dist_test_gives_the_metrics_of_test_py(dist_run, dist_config_file, tmp_path):
    checkpoint = osp.join(dist_run, 'epoch_1.pth')
    single = run_tool('test.py', dist_config_file, checkpoint, '--work-dir',
                      str(tmp_path / 'one'))
    assert single.returncode == 0, single.stderr[-3000:]
    dist = run_script('dist_test.sh', dist_config_file, checkpoint, '2', '--work-dir',
                      str(tmp_path / 'two'))
    assert dist.returncode == 0, dist.stderr[-3000:]
    results = []
    for name in ('one', 'two'):
        with open(tmp_path / name / 'metrics.json') as f:
            metrics = json.load(f)
        with open(tmp_path / name / 'predictions.json') as f:
            predictions = json.load(f)['results']
        results.append((metrics, predictions))
    (metrics_1, pred_1), (metrics_2, pred_2) = results
    assert metrics_1 == metrics_2
    assert pred_1.keys() == pred_2.keys() and sum(map(len, pred_1.values())) > 0
    for token, boxes in pred_1.items():
        other = pred_2[token]
        assert len(boxes) == len(other)
        np.testing.assert_allclose([b['score'] for b in boxes], [b['score'] for b in other],
                                   rtol=1e-6)
        np.testing.assert_allclose([b['bbox_3d'] for b in boxes],
                                   [b['bbox_3d'] for b in other], atol=1e-4)


def test_more_processes_than_training_cases(dist_config_file, demo_dataset, tmp_path):
    num = len(demo_dataset.tokens['train'])
    work_dir = tmp_path / 'run'
    out = run_script('dist_train.sh', dist_config_file, str(num + 1), '--work-dir',
                     str(work_dir))
    one_error_line(out, f'{num} training cases for {num + 1} processes',
                   'demo_infos_train.pkl', f'at most {num}')
    assert not work_dir.exists()
    one_error_line(run_script('dist_train.sh', dist_config_file, 'two'),
                   'NPROC must be a positive integer')


def test_sync_bn_without_cuda_is_refused(monkeypatch, capsys):
    """``sync_bn`` (mmengine's Runner converts BN to SyncBatchNorm in multi-process runs)
    has no CPU kernel: without CUDA, a multi-process run with it stops with one line."""
    import importlib

    from mmengine.config import Config
    monkeypatch.syspath_prepend(osp.join(REPO_ROOT, 'tools'))
    common = importlib.import_module('_common')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = Config(dict(sync_bn='torch', env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    with pytest.raises(SystemExit) as exc:
        common.setup_distributed(cfg, 'pytorch')
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: sync_bn='torch' needs CUDA")
    common.setup_distributed(cfg, 'none')    # one process: mmengine reverts SyncBN itself


def test_a_run_closes_its_process_group(monkeypatch):
    """``end_distributed`` (called by tools/train.py and tools/test.py when the runner is
    done) closes the process group, so no gloo thread outlives the interpreter: left
    open, a rank could abort at exit ('terminate called without an active exception',
    seen as a failed ``dist_test.sh`` in CI). Without a group it does nothing."""
    import importlib

    import torch.distributed as dist
    monkeypatch.syspath_prepend(osp.join(REPO_ROOT, 'tools'))
    common = importlib.import_module('_common')
    common.end_distributed()                 # no group: nothing to close, no error
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0,
                            world_size=1)
    try:
        common.end_distributed()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

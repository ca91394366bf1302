"""The installed stack: compiled mmcv ops on CPU, mmengine checkpoints, the tools' CLI."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, import_from


def test_mmcv_compiled_ops_run_on_cpu():
    from mmcv.ops import RoIAlign, nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
    dets, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert dets.shape == (2, 5)
    # RoIAlign of a linear ramp: a 2x2 output over the whole 4x4 map averages each quadrant.
    feat = torch.arange(16.).view(1, 1, 4, 4).requires_grad_()
    pooled = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(
        feat, torch.tensor([[0., 0., 0., 4., 4.]]))
    assert torch.allclose(pooled.flatten(), torch.tensor([2.5, 4.5, 10.5, 12.5]))
    pooled.sum().backward()
    assert torch.isclose(feat.grad.sum(), torch.tensor(4.0))


def test_mmdet3d_subpackages_import():
    import mmdet3d.datasets  # noqa: F401
    import mmdet3d.evaluation  # noqa: F401
    import mmdet3d.models  # noqa: F401


def _make_runner(work_dir, max_epochs, resume):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Model(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            out = self.linear(torch.stack(inputs))
            return {'loss': out.pow(2).mean()} if mode == 'loss' else out

    dataset = [dict(inputs=torch.full((2,), float(i))) for i in range(4)]
    return Runner(
        model=Model(), work_dir=str(work_dir), resume=resume,
        train_dataloader=dict(dataset=dataset, batch_size=2,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='pseudo_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        default_scope='mmengine', log_level='WARNING')


def test_runner_checkpoint_resumes(tmp_path):
    """mmengine checkpoints resume inside the tools' checkpoint loading: weights-only, with
    the allow-list of the globals mmengine's own checkpoints hold (no trust needed)."""
    _make_runner(tmp_path, max_epochs=1, resume=False).train()
    ckpt = tmp_path / 'epoch_1.pth'
    assert ckpt.is_file()
    if tuple(int(v) for v in torch.__version__.split('.')[:2]) >= (2, 6):
        # What the allow-list is for: plain weights-only loading rejects the checkpoint.
        with pytest.raises(Exception, match='[Ww]eights only load failed'):
            torch.load(ckpt)
    checkpoint_loading = import_from('tools', '_checkpoints').checkpoint_loading
    runner = _make_runner(tmp_path, max_epochs=2, resume=True)
    with checkpoint_loading(folders=[str(tmp_path)]):
        runner.train()
    assert runner.epoch == 2 and runner.iter == 4   # continued from epoch 1, iteration 2
    assert (tmp_path / 'epoch_2.pth').is_file()


@pytest.mark.parametrize('tool', ['train.py', 'test.py'])
def test_tools_help_and_missing_config(tool, tmp_path):
    script = osp.join(REPO_ROOT, 'tools', tool)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    out = subprocess.run([sys.executable, script, '--help'], capture_output=True,
                         text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0 and '--cfg-options' in out.stdout
    args = [str(tmp_path / 'missing.py')] + (['ckpt.pth'] if tool == 'test.py' else [])
    if tool == 'test.py':
        (tmp_path / 'ckpt.pth').write_bytes(b'')
        args[1] = str(tmp_path / 'ckpt.pth')
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f'error: config file not found: {tmp_path / "missing.py"}']

"""Checkpoints in the tools: loaded without running code (weights-only with the allow-list
of ``projects/mv2d_xray/core/checkpoint.py``, which ``tools/_checkpoints.py``
re-exports; ``--trust-checkpoint`` for anything else), one line for an
unreadable file, and refused when the weights do not fit the model."""
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import import_from
from test_explain_tool import explain_setup  # noqa: F401 -- the fixture
from test_train_test import run_tool

_checkpoints = import_from('tools', '_checkpoints')
CheckpointError, checkpoint_loading = _checkpoints.CheckpointError, _checkpoints.checkpoint_loading


class Payload:
    """Unpickling it creates the folder ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def hostile_checkpoint(folder, marker, state_dict=None) -> str:
    path = str(folder / 'hostile.pth')
    torch.save(dict(state_dict=state_dict or {}, meta=dict(x=Payload(marker))), path)
    return path


def load(path):
    from mmengine.runner.checkpoint import CheckpointLoader
    return CheckpointLoader.load_checkpoint(path, map_location='cpu')


def test_hostile_checkpoint_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / 'payload-ran'
    path = hostile_checkpoint(tmp_path, marker)
    with checkpoint_loading(files=[path]):
        with pytest.raises(CheckpointError) as err:
            load(path)
    message = str(err.value)
    assert '\n' not in message and path in message and 'mkdir' in message
    assert '--trust-checkpoint' in message
    assert not marker.exists()


def test_trust_is_for_the_named_checkpoints_only(tmp_path):
    """``trust`` loads the named file with ``weights_only=False``; another file (e.g. a
    config's ``Pretrained`` weights) stays on safe loading; mmengine's loader and torch's
    allow-list are put back afterwards."""
    from fractions import Fraction

    from mmengine.runner.checkpoint import CheckpointLoader, load_from_local
    ours = str(tmp_path / 'ours.pth')
    torch.save(dict(meta=dict(ratio=Fraction(1, 3))), ours)   # not on the allow-list
    marker = tmp_path / 'payload-ran'
    other = hostile_checkpoint(tmp_path, marker)
    with checkpoint_loading(files=[ours], trust=True):
        assert load(ours)['meta']['ratio'] == Fraction(1, 3)
        with pytest.raises(CheckpointError, match='mkdir'):
            load(other)
    with checkpoint_loading(files=[ours]):
        with pytest.raises(CheckpointError, match='fractions.Fraction'):
            load(ours)
    assert not marker.exists()
    assert CheckpointLoader._get_checkpoint_loader(ours) is load_from_local
    with_numpy = str(tmp_path / 'numpy.pth')
    torch.save(dict(meta=np.zeros(2)), with_numpy)
    with pytest.raises(pickle.UnpicklingError):      # the allow-list is gone again
        torch.load(with_numpy)


@pytest.mark.parametrize('content', [b'', b'\x00garbage' * 100, 'truncated'])
def test_unreadable_checkpoint_is_one_line(tmp_path, content):
    path = str(tmp_path / 'bad.pth')
    if content == 'truncated':
        torch.save(dict(state_dict=dict(w=torch.zeros(1000))), path)
        data = open(path, 'rb').read()
        content = data[:len(data) // 2]
    with open(path, 'wb') as f:
        f.write(content)
    with checkpoint_loading(files=[path]):
        with pytest.raises(CheckpointError) as err:
            load(path)
    assert str(err.value).startswith(f'cannot read checkpoint {path}: ')
    assert '\n' not in str(err.value)


def test_history_buffer_getattr_admits_its_statistics_only():
    from mmengine.logging.history_buffer import HistoryBuffer
    getattr_ = _checkpoints.history_buffer_getattr
    assert getattr_(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for obj, name in ((HistoryBuffer, '__init__'), (HistoryBuffer, '_set_default_statistics'),
                      (os, 'system'), (HistoryBuffer(), 'mean')):
        with pytest.raises(pickle.UnpicklingError):
            getattr_(obj, name)


class Two(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.base = torch.nn.Linear(2, width)
        self.head = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(3)])


def test_fit_checks():
    model = Two()
    full = dict(state_dict=model.state_dict())
    _checkpoints.require_fit(model, full, 'full.pth')
    assert _checkpoints.starting_weights_note(model, full, 'full.pth') is None
    stage = dict(state_dict={f'module.{k}': v for k, v in model.state_dict().items()
                             if k.startswith('base.')})
    with pytest.raises(CheckpointError, match=r'stage\.pth does not fit the model: of its 8 '
                       r'state tensors 6 are missing .* and 0 have another shape'):
        _checkpoints.require_fit(model, stage, 'stage.pth')
    note = _checkpoints.starting_weights_note(model, stage, 'stage.pth')
    assert note == ('load_from stage.pth: 6 of the model\'s 8 state tensors start fresh (not '
                    'in the checkpoint): head (6 of 6)')
    other = dict(state_dict=Two(width=5).state_dict())
    with pytest.raises(CheckpointError, match='does not fit the model'):
        _checkpoints.starting_weights_note(model, other, 'other.pth')
    with pytest.raises(CheckpointError, match='holds no weights'):
        _checkpoints.require_fit(model, dict(meta=dict()), 'empty.pth')
    with pytest.raises(CheckpointError, match='cannot be resumed'):
        _checkpoints.require_resumable(full, 'full.pth')


def one_line(result, *needles):
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_tools_refuse_hostile_and_unfit_checkpoints(explain_setup, tmp_path):  # noqa: F811
    """``tools/test.py`` and ``tools/explain.py``: a crafted checkpoint is refused without
    running (and ``--trust-checkpoint`` is named); a 2D-stage checkpoint of the full model
    is refused with the counts; nothing is written."""
    config, checkpoint, infos = explain_setup
    state = torch.load(checkpoint, map_location='cpu')['state_dict']
    marker = tmp_path / 'payload-ran'
    hostile = hostile_checkpoint(tmp_path, marker, state)
    stage = str(tmp_path / 'stage.pth')
    torch.save(dict(state_dict={k: v for k, v in state.items()
                                if k.startswith('base_detector.')}, meta=dict()), stage)
    for path, needles in ((hostile, (hostile, 'mkdir', '--trust-checkpoint')),
                          (stage, (stage, 'does not fit the model', 'roi_head'))):
        out = tmp_path / 'out'
        result = run_tool('test.py', config, path, '--work-dir', str(out))
        one_line(result, *needles)
        assert not (out / 'metrics.json').exists() and not marker.exists()
        result = run_tool('explain.py', config, path, '--infos', infos, '--case',
                          'LIDC-IDRI-0001', '--out', str(out / 'explain'))
        one_line(result, *needles)
        assert not (out / 'explain').exists() and not marker.exists()
    assert '--trust-checkpoint' in run_tool('test.py', '--help').stdout


def test_train_resume_refuses_bad_checkpoints(explain_setup, tmp_path):  # noqa: F811
    """``tools/train.py --resume``: random bytes, a weights-only checkpoint (no training
    state) and a hostile file end in one line, exit status 2, no checkpoint written."""
    config, checkpoint, _ = explain_setup
    random_bytes = tmp_path / 'random.pth'
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    marker = tmp_path / 'payload-ran'
    cases = ((str(random_bytes), 'cannot read checkpoint'),
             (checkpoint, 'cannot be resumed'),
             (hostile_checkpoint(tmp_path, marker), '--trust-checkpoint'))
    for path, needle in cases:
        work_dir = tmp_path / 'run'
        result = run_tool('train.py', config, '--work-dir', str(work_dir), '--resume', path)
        one_line(result, path, needle)
        assert not list(work_dir.glob('*.pth')) and not marker.exists()

"""Layering and import side effects: the core imports no torch, the plugin never imports
the converter, and importing the plugin leaves checkpoint loading safe."""
import os.path as osp
import subprocess
import sys
import textwrap

from conftest import REPO_ROOT


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_core_data_format_and_metric_import_no_torch():
    out = run_python('''
        import sys
        import projects.mv2d_xray.core.data_format
        import projects.mv2d_xray.core.metric
        import projects.mv2d_xray.core.geometry
        import projects.mv2d_xray.core.io
        import projects.mv2d_xray.core.clustering
        heavy = sorted(m for m in ('torch', 'mmengine', 'mmdet3d', 'data_converters')
                       if m in sys.modules)
        print(heavy)
    ''')
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'


def test_plugin_never_imports_the_converter():
    grep = subprocess.run(['grep', '-rn', 'data_converters', 'projects'], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert grep.stdout.splitlines() == []
    out = run_python('''
        import sys
        import projects.mv2d_xray.mv2d_xray
        print('data_converters' in sys.modules)
    ''')
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'False'


def test_importing_the_plugin_keeps_safe_checkpoint_loading(tmp_path):
    """A checkpoint whose unpickling would create a file: after importing the plugin,
    neither ``torch.load`` nor mmengine's checkpoint loader runs it."""
    marker = tmp_path / 'payload-ran'
    checkpoint = tmp_path / 'hostile.pth'
    out = run_python(f'''
        import os, pickle, torch

        class Payload:
            def __reduce__(self):
                return (os.system, ('touch {marker}',))

        torch.save({{'state_dict': {{}}, 'meta': Payload()}}, {str(checkpoint)!r})

        import projects.mv2d_xray.mv2d_xray  # noqa: F401
        from mmengine.runner.checkpoint import CheckpointLoader, load_from_local
        assert CheckpointLoader._get_checkpoint_loader({str(checkpoint)!r}) \\
            is load_from_local, 'the plugin replaced mmengine\\'s local loader'
        refused = 0
        for load in (lambda: torch.load({str(checkpoint)!r}),
                     lambda: CheckpointLoader.load_checkpoint({str(checkpoint)!r})):
            try:
                load()
            except pickle.UnpicklingError:
                refused += 1
        print(refused)
    ''')
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == '2'   # (mmengine logs its load first)
    assert not osp.exists(marker)


def test_tools_trust_only_the_named_checkpoints(tmp_path):
    """``tools/_common.trusted_checkpoint_loading``: inside it, the named file (and files
    under the named folder) load with ``weights_only=False``, any other file -- e.g. a
    config's ``Pretrained`` weights -- keeps the safe loader, and mmengine's loader is put
    back afterwards."""
    marker = tmp_path / 'payload-ran'
    out = run_python(f'''
        import os, pickle, sys
        import numpy as np
        import torch
        sys.path.insert(0, 'tools')
        from _common import trusted_checkpoint_loading
        from mmengine.runner.checkpoint import CheckpointLoader, load_from_local

        class Payload:
            def __reduce__(self):
                return (os.mkdir, ({str(marker)!r},))

        ours = {str(tmp_path / 'ours.pth')!r}
        run_dir = {str(tmp_path / 'run')!r}
        os.makedirs(run_dir)
        hostile = {str(tmp_path / 'pretrained.pth')!r}
        torch.save({{'meta': np.zeros(3)}}, ours)           # needs weights_only=False
        torch.save({{'meta': np.ones(2)}}, run_dir + '/epoch_1.pth')
        torch.save({{'meta': Payload()}}, hostile)
        results = []
        with trusted_checkpoint_loading(files=[ours], folders=[run_dir]):
            results.append(CheckpointLoader.load_checkpoint(ours)['meta'].tolist())
            results.append(CheckpointLoader.load_checkpoint(
                run_dir + '/epoch_1.pth')['meta'].tolist())
            try:
                CheckpointLoader.load_checkpoint(hostile)
            except pickle.UnpicklingError:
                results.append('refused')
        results.append(CheckpointLoader._get_checkpoint_loader(ours) is load_from_local)
        print(results)
    ''')
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[[0.0, 0.0, 0.0], [1.0, 1.0], 'refused', True]"
    assert not marker.exists()

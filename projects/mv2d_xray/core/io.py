"""File input and output shared by the converter, the plugin and the tools: one atomic
writer, one JSON reader, one info-pickle reader.

* Writing: every file goes to a temporary name in its final folder and is renamed into
  place (:func:`atomic_output`, :func:`atomic_write`, :func:`write_json`), so a failure or
  a kill never leaves a half-written file, and the file gets the usual permissions
  (``0666`` less the umask; ``mkstemp`` alone would leave ``0600``).
* Reading: :func:`read_json` and :func:`read_pickle` fail with one line that names the
  file. :func:`read_pickle` admits only plain data (builtins and numpy arrays / scalars,
  all an mmdet3d v2 info pickle holds), so a crafted pickle cannot run code.

Plain Python and numpy only (no torch, no mmengine).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import os.path as osp
import pickle
import tempfile
from typing import Any, Iterator

#: Suffix of the temporary files of :func:`atomic_output` (``.<name>.<random>.tmp``).
TMP_SUFFIX = '.tmp'


def _current_umask() -> int:
    # os.umask can only be read by setting it; set it straight back
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on
    any error (or interrupt) it is removed. For writers that want a file name (matplotlib,
    OpenCV); :func:`atomic_write` is the one for bytes.

    The folder of ``path`` is created if needed.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix=TMP_SUFFIX,
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)


def json_bytes(obj: Any, indent: int = 2) -> bytes:
    """``obj`` as JSON text with a final newline. NaN and infinities are refused
    (``ValueError``): they are not JSON."""
    return (json.dumps(obj, indent=indent, allow_nan=False) + '\n').encode()


def write_json(path: str, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write(path, json_bytes(obj, indent))


def read_json(path: str, what: str = 'file') -> Any:
    """Load a JSON file with one clear error: ``FileNotFoundError('<what> not found:
    <path>')`` or ``ValueError('<path> is not valid JSON: ...')``."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} not found: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f'{path} is not valid JSON: {exc}') from exc


#: The globals a data pickle may name: numpy's array and scalar reconstruction (both
#: spellings of numpy's core module, 1.x and 2.x) and the builtin containers.
_ALLOWED_GLOBALS = {
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'), ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', '_reconstruct'), ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),  # proto 5
    ('builtins', 'set'), ('builtins', 'frozenset'), ('builtins', 'slice'),
    ('builtins', 'complex'), ('collections', 'OrderedDict'),
    ('_codecs', 'encode'),      # how protocol 2 pickles bytes (numpy arrays' buffers)
}


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data only: any other global is refused."""

    def find_class(self, module: str, name: str):
        if module == '__builtin__':         # protocol 2 spells builtins the Python 2 way
            module = 'builtins'
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f'it refers to {module}.{name}, which a data file does not need (only '
            'builtins and numpy arrays are read)')


def loads_pickle(data: bytes) -> Any:
    """Unpickle plain data (builtins, numpy arrays and scalars); anything else raises
    ``pickle.UnpicklingError`` before it can run."""
    return _DataUnpickler(io.BytesIO(data)).load()


def read_pickle(path: str, what: str = 'pickle') -> Any:
    """Load a data pickle (see :func:`loads_pickle`) with one clear error:
    ``FileNotFoundError('<what> not found: <path>')`` or ``ValueError('cannot read
    <what> <path>: ...')``."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} not found: {path}')
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return loads_pickle(data)
    except Exception as exc:  # noqa: BLE001 -- truncated, foreign or hostile: one line
        raise ValueError(f'cannot read {what} {path}: {type(exc).__name__}: {exc}') from None


def remove_stale_temporaries(folder: str) -> None:
    """Delete the temporary files that killed writers left in ``folder`` and below."""
    if not osp.isdir(folder):
        return
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith('.') and name.endswith(TMP_SUFFIX):
                os.remove(osp.join(root, name))

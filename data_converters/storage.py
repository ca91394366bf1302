"""What a conversion writes, written so that a killed run leaves nothing a later run trusts.

Every file is written to a temporary name in its final folder and renamed into place
(:func:`~projects.mv2d_xray.core.io.atomic_write`): a file either exists complete or not at all. A case is finished
when its *part* file ``DIR/.parts/<token>.case.json`` exists; it is written last, after
the case's PNGs. A re-run skips finished cases and redoes the others (overwriting any PNGs a
killed run left). The split files are then assembled from the part files alone, in a
fixed order, so a resumed run gives byte-identical outputs. Cases that could not be
converted leave ``DIR/.parts/<token>.skip.json`` with the reason (retried on a re-run).

``DIR/.parts/settings.json`` holds the settings that shape every case (geometry, label
rule, rendering, source) and how its patients are split (``--val-fraction``, ``--seed``);
a run with other settings refuses to mix into the folder (``merge`` re-splits it).

The parts and caches are JSON or ``.npz`` read with ``allow_pickle=False``: formats that
cannot carry code. A folder converted by an older converter (``.pkl`` parts) is refused
with one line (:meth:`CaseStore.check_format`): convert into a new folder.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import pickle
from typing import Dict, List, Optional, Tuple

import numpy as np

from data_converters.errors import ConverterError
from projects.mv2d_xray.core.io import (atomic_write, json_bytes, read_json,
                                        remove_stale_temporaries)

PARTS_DIR = '.parts'
SETTINGS_FILE = 'settings.json'
#: The split settings a re-run must repeat (the prefix only names the split files).
SPLIT_KEYS = ('val_fraction', 'seed')
#: A finished case's part file is ``<token>`` + this; a skipped one's ``<token>.skip.json``.
PART_SUFFIX = '.case.json'
SKIP_SUFFIX = '.skip.json'


def dumps_json(obj) -> bytes:
    """The converter's JSON text (indent 1: the COCO files are large)."""
    return json_bytes(obj, indent=1)


def as_json(obj):
    """``obj`` as its JSON text reads back: tuples become lists, dict keys strings. The
    form the converter records settings and cases in, so values compare as recorded."""
    return json.loads(json.dumps(obj))


def part_json(obj) -> bytes:
    """A finished case as compact JSON (no NaN or infinities: they are not JSON). Read
    back, it equals :func:`as_json` of ``obj``, what :func:`canonical_pickle` pickles, so
    the split files stay byte-identical."""
    return json.dumps(obj, separators=(',', ':'), allow_nan=False).encode()


def canonical_pickle(obj) -> bytes:
    """Pickle plain data (JSON types) so that equal data give equal bytes.

    ``pickle`` records which objects are shared (its memo), so two equal structures built
    differently -- in another process, or with a dict reused between items -- pickle to
    different bytes. Rebuilding the data from its JSON text first makes the sharing a
    function of the content alone (tuples become lists).
    """
    return pickle.dumps(as_json(obj), protocol=4)


def write_png(path: str, image: np.ndarray) -> None:
    """Write an 8- or 16-bit grey image (uint8 / uint16) as PNG, atomically (OpenCV's
    encoder is deterministic)."""
    import cv2
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(image))
    if not ok:
        raise OSError(f'could not encode {path}')
    atomic_write(path, buf.tobytes())


def settings_that_differ(recorded: dict, fingerprint: dict) -> List[str]:
    """The top-level keys whose values differ between a folder's recorded fingerprint and
    a source's ``fingerprint()``, compared as JSON records them (tuples and lists alike),
    sorted."""
    fingerprint = as_json(fingerprint)
    return sorted(key for key in set(recorded) | set(fingerprint)
                  if recorded.get(key) != fingerprint.get(key))


class CaseStore:
    """The per-case results of a conversion under ``DIR/.parts``.

    Args:
        out_dir (str): the dataset folder.
    """

    def __init__(self, out_dir: str):
        self.out_dir = osp.abspath(out_dir)
        self.parts_dir = osp.join(self.out_dir, PARTS_DIR)

    # -- settings ----------------------------------------------------------------------
    def settings_path(self) -> str:
        return osp.join(self.parts_dir, SETTINGS_FILE)

    def read_settings(self) -> Optional[dict]:
        path = self.settings_path()
        if not osp.exists(path):
            return None
        return read_json(path, 'conversion settings')

    def recorded_prefix(self, default: str, settings: Optional[dict] = None) -> str:
        """The split files' prefix the folder's conversion recorded (``default`` where it
        recorded none); from ``settings`` where the caller has read them
        (:meth:`read_settings`), else read here."""
        settings = (self.read_settings() if settings is None else settings) or {}
        return (settings.get('split') or {}).get('prefix', default)

    def record_split(self, split: dict) -> None:
        """Record new split settings (``merge --val-fraction / --seed``)."""
        settings = self.read_settings()
        settings['split'] = dict(settings['split'], **as_json(split))
        atomic_write(self.settings_path(), dumps_json(settings))

    def claim(self, fingerprint: dict, split: dict, cleanup: bool = True) -> None:
        """Take the folder for a run with ``fingerprint`` (the settings that shape every
        case): refuse a folder made with other settings; record the split settings; with
        ``cleanup``, delete temporary files of killed runs (not while shards of a job array
        may be writing into the same folder).

        Raises:
            ConverterError: the folder holds a conversion with another fingerprint or
                another split (:data:`SPLIT_KEYS`), or one of an older converter
                (:meth:`check_format`).
        """
        self.check_format()
        os.makedirs(self.parts_dir, exist_ok=True)
        current = self.read_settings()
        keys = [] if current is None else settings_that_differ(current.get('fingerprint', {}),
                                                               fingerprint)
        if keys:
            raise ConverterError(
                f'{self.out_dir} holds a conversion made with other settings '
                f'({", ".join(keys)} differ); use another --out or delete that folder')
        split = as_json(split)
        if current is not None and current.get('split') is not None:
            old = current['split']
            keys = [k for k in SPLIT_KEYS if old.get(k) != split.get(k)]
            if keys:
                def flags(values):
                    return ' '.join(f'--{k.replace("_", "-")} {values.get(k)}' for k in keys)
                raise ConverterError(
                    f'{self.out_dir} holds a conversion split with {flags(old)} (this run: '
                    f'{flags(split)}); use the same values, or re-split its finished cases '
                    f'with "python -m data_converters merge --out {self.out_dir} '
                    f'{flags(split)}"')
        atomic_write(self.settings_path(),
                     dumps_json(dict(fingerprint=as_json(fingerprint), split=split)))
        if cleanup:
            remove_stale_temporaries(self.out_dir)

    def check_format(self) -> None:
        """Refuse a folder whose parts or caches an older converter pickled (``.pkl``
        under ``.parts``): they are not read, since a pickle can carry code.

        Raises:
            ConverterError: such a file exists.
        """
        for folder in (self.parts_dir, osp.join(self.parts_dir, 'cache')):
            if osp.isdir(folder) and any(name.endswith('.pkl') for name in os.listdir(folder)):
                raise ConverterError(
                    f'{self.out_dir} was converted by an older version of the converter (its '
                    f'{PARTS_DIR} holds .pkl files, which are no longer read); convert into '
                    'a new --out, or delete that folder')

    # -- cases -------------------------------------------------------------------------
    def part_path(self, token: str) -> str:
        return osp.join(self.parts_dir, f'{token}{PART_SUFFIX}')

    def skip_path(self, token: str) -> str:
        return osp.join(self.parts_dir, f'{token}{SKIP_SUFFIX}')

    def is_done(self, token: str) -> bool:
        return osp.exists(self.part_path(token))

    def write_case(self, token: str, info: dict) -> None:
        """Record a finished case (after its images are written)."""
        atomic_write(self.part_path(token), part_json(info))
        if osp.exists(self.skip_path(token)):
            os.remove(self.skip_path(token))

    def write_skip(self, token: str, reason: str) -> None:
        atomic_write(self.skip_path(token), dumps_json(dict(token=token, reason=reason)))

    def load(self) -> Tuple[List[dict], Dict[str, str]]:
        """All finished cases (sorted by token) and the skipped ones' reasons."""
        infos, skipped = [], {}
        if not osp.isdir(self.parts_dir):
            return infos, skipped
        self.check_format()
        for name in sorted(os.listdir(self.parts_dir)):
            path = osp.join(self.parts_dir, name)
            if name.startswith('.'):
                continue
            if name.endswith(SKIP_SUFFIX):
                record = read_json(path, 'skipped-case record')
                skipped[record['token']] = record['reason']
            elif name.endswith(PART_SUFFIX):
                infos.append(read_json(path, 'finished case'))
        infos.sort(key=lambda info: info['token'])
        done = {info['token'] for info in infos}
        return infos, {t: r for t, r in skipped.items() if t not in done}

    def cache_path(self, name: str) -> str:
        """Path of a cached intermediate (e.g. a base render) under ``.parts/cache``."""
        return osp.join(self.parts_dir, 'cache', name)

"""The split files of a dataset folder: assembled from its finished cases, or merged from
the shards of a job array.

``<prefix>_infos_{train,val}.pkl`` and ``<prefix>_infos_{train,val}_2d.coco.json`` are
written from the per-case part files alone (:class:`~data_converters.storage.CaseStore`),
in a fixed order, so a resumed or merged run gives byte-identical files. The four files
are written as one set (:func:`write_together`): all to temporary names, then renamed into
place, so a failure never leaves a mixed or incomplete set.
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
import pickle
import shutil
from typing import Dict, List, Optional, Sequence

from data_converters.arguments import FILE_PREFIX
from data_converters.errors import ConverterError
from data_converters.storage import (PART_SUFFIX, SKIP_SUFFIX, CaseStore, canonical_pickle,
                                     dumps_json)
from projects.mv2d_xray.core.acquisition import Acquisition
from projects.mv2d_xray.core.data_format import (build_coco, build_metainfo, coco_path,
                                                 split_patients)
from projects.mv2d_xray.core.io import atomic_output, atomic_write, remove_stale_temporaries

SPLITS = ('train', 'val')
#: The named splits of the benchmark sources (``chest-bench``, ``blades``).
SPLIT_NAMES = ('train', 'val', 'test')


def named_split_counts(num_cases: int, val_fraction: float,
                       test_fraction: float) -> Dict[str, int]:
    """Cases per split of :data:`SPLIT_NAMES`: val and test the rounded fractions of
    ``num_cases``, train the rest."""
    val = int(round(num_cases * val_fraction))
    test = int(round(num_cases * test_fraction))
    return dict(train=num_cases - val - test, val=val, test=test)
#: Split settings key of a source that names its own splits (e.g. ``['train', 'val',
#: 'test']``): patient ``<name>-...`` goes to split ``<name>``, the ``force_val``
#: patients to ``val``; ``val_fraction`` is then unused.
NAMED_SPLITS = 'named_splits'


def split_names(split: dict) -> tuple:
    """The splits a folder's split settings make: :data:`SPLITS`, or the source's own
    (:data:`NAMED_SPLITS`)."""
    return tuple(split.get(NAMED_SPLITS) or SPLITS)


def assign_splits(infos: List[dict], split: dict) -> Dict[str, List[dict]]:
    """``{split: infos}`` by patient: by ``val_fraction`` and ``seed``
    (:func:`~projects.mv2d_xray.core.data_format.split_patients`), or by name
    (:data:`NAMED_SPLITS`).

    Raises:
        ConverterError: with named splits, a patient that fits none of them.
    """
    names = split_names(split)
    force_val = set(split.get('force_val', ()))
    if not split.get(NAMED_SPLITS):
        val = split_patients([info['patient_id'] for info in infos], split['val_fraction'],
                             split['seed'], force_val)
        return {'train': [i for i in infos if i['patient_id'] not in val],
                'val': [i for i in infos if i['patient_id'] in val]}
    lists = {name: [] for name in names}
    for info in infos:
        patient = info['patient_id']
        name = 'val' if patient in force_val else patient.split('-', 1)[0]
        if name not in lists:
            raise ConverterError(f'patient {patient!r} is in none of the named splits '
                                 f'{list(names)} (named_splits: a patient id starts with '
                                 '"<split>-")')
        lists[name].append(info)
    return lists


def split_file_paths(out_dir: str, prefix: str, names: Sequence[str] = SPLITS
                     ) -> Dict[str, Dict[str, str]]:
    """``{split: {'pkl': path, 'coco': path}}`` of a dataset folder, for the splits
    ``names`` (default train and val).

    Raises:
        ConverterError: ``prefix`` is not a plain file name prefix (it would write outside
        ``out_dir``; e.g. one recorded in an edited ``settings.json``).
    """
    if not isinstance(prefix, str) or not FILE_PREFIX.fullmatch(prefix):
        raise ConverterError(f'split file prefix {prefix!r} is not a plain file name prefix '
                             '(letters, digits, _ - and ., no folder)')
    pkl = {split: osp.join(out_dir, f'{prefix}_infos_{split}.pkl') for split in names}
    return {split: dict(pkl=pkl[split], coco=coco_path(pkl[split])) for split in names}


def assemble(out_dir: str, prefix: Optional[str] = None, val_fraction: Optional[float] = None,
             seed: Optional[int] = None) -> Dict[str, List[dict]]:
    """Write the split pickles and COCO files from the finished cases in ``out_dir``.

    The split is by patient (:func:`~projects.mv2d_xray.core.data_format.split_patients`) with the
    prefix, fraction and seed recorded by the last run (or those given here).

    Returns:
        dict: ``{split: data_list}``.

    Raises:
        ConverterError: ``out_dir`` holds no conversion.
    """
    store = CaseStore(out_dir)
    settings = store.read_settings()
    if settings is None:
        raise ConverterError(f'{out_dir} holds no conversion (no {store.settings_path()})')
    split = dict(settings['split'])
    if val_fraction is not None:
        split['val_fraction'] = float(val_fraction)
    if seed is not None:
        split['seed'] = int(seed)
    prefix = prefix or split.pop('prefix')
    split.pop('prefix', None)
    infos, _ = store.load()
    names = split_names(split)
    lists = assign_splits(infos, split)
    fingerprint = settings['fingerprint']
    geometry = Acquisition.from_metainfo(fingerprint['geometry'])
    converter = {k: v for k, v in fingerprint.items() if k not in ('geometry', 'classes')}
    converter['split'] = dict(split, cases={s: len(lists[s]) for s in names},
                              patients={s: len({i['patient_id'] for i in lists[s]})
                                        for s in names})
    paths = split_file_paths(out_dir, prefix, names)
    files = {}
    for name in names:
        data_list = [dict(sample_idx=idx, **info) for idx, info in enumerate(lists[name])]
        metainfo = build_metainfo(geometry, converter, fingerprint['classes'])
        # (pickled in two parts: metainfo keeps its tuples; the data as canonical JSON types)
        data_list = pickle.loads(canonical_pickle(data_list))
        files[paths[name]['pkl']] = pickle.dumps(
            dict(metainfo=metainfo, data_list=data_list), protocol=4)
        files[paths[name]['coco']] = dumps_json(build_coco(data_list, metainfo))
        lists[name] = data_list
    write_together(files)
    if val_fraction is not None or seed is not None:
        store.record_split({k: split[k] for k in ('val_fraction', 'seed')})
    return lists


def write_together(files: Dict[str, bytes]) -> None:
    """Write ``{path: data}`` as one set: every file goes to a temporary name first, and
    only when all are written are they renamed into place, one after the other. A failure
    (a full disk) removes the temporaries and leaves the previous files as they were."""
    with contextlib.ExitStack() as stack:
        for path, data in files.items():
            tmp = stack.enter_context(atomic_output(path))
            with open(tmp, 'wb') as f:
                f.write(data)


def check_inputs(out_dir: str, inputs: Sequence[str]) -> None:
    """Before anything is copied: every input holds a conversion, and all of them (and
    ``out_dir``, if it holds one) were made with the same settings and split.

    Raises:
        ConverterError: naming the folder that differs from the first and the keys.
    """
    from data_converters.storage import SPLIT_KEYS
    folders = ([out_dir] if CaseStore(out_dir).read_settings() is not None else []) \
        + list(inputs)
    reference = None
    for folder in folders:
        store = CaseStore(folder)
        settings = store.read_settings()
        if settings is None:
            raise ConverterError(f'{folder} holds no conversion (no {store.settings_path()})')
        store.check_format()
        if reference is None:
            reference = folder, settings
            continue
        first, known = reference
        keys = sorted(k for k in set(known['fingerprint']) | set(settings['fingerprint'])
                      if known['fingerprint'].get(k) != settings['fingerprint'].get(k))
        keys += [f'split {k}' for k in SPLIT_KEYS
                 if known['split'].get(k) != settings['split'].get(k)]
        if keys:
            raise ConverterError(f'{folder} was converted with other settings than {first} '
                                 f'({", ".join(keys)} differ); nothing was merged')


def merge(out_dir: str, inputs: Sequence[str] = (), prefix: Optional[str] = None,
          val_fraction: Optional[float] = None, seed: Optional[int] = None
          ) -> Dict[str, List[dict]]:
    """Assemble the split files of a sharded conversion.

    Shards of a job array normally write into one shared ``out_dir``; shards written to
    separate folders are given as ``inputs`` and their images and finished cases are
    copied into ``out_dir`` first (their settings must agree).
    """
    store = CaseStore(out_dir)
    if not inputs:
        remove_stale_temporaries(out_dir)      # the shards are done
    check_inputs(out_dir, inputs)
    for folder in inputs:
        other = CaseStore(folder)
        settings = other.read_settings()
        store.claim(settings['fingerprint'], settings['split'])
        if osp.isdir(osp.join(folder, 'images')):
            shutil.copytree(osp.join(folder, 'images'), osp.join(out_dir, 'images'),
                            dirs_exist_ok=True)
        for name in sorted(os.listdir(other.parts_dir)):
            if name.endswith(PART_SUFFIX) or name.endswith(SKIP_SUFFIX):
                token = name[:-len(SKIP_SUFFIX)] if name.endswith(SKIP_SUFFIX) \
                    else name[:-len(PART_SUFFIX)]
                if name.endswith(SKIP_SUFFIX) and store.is_done(token):
                    continue
                with open(osp.join(other.parts_dir, name), 'rb') as f:
                    atomic_write(osp.join(store.parts_dir, name), f.read())
    return assemble(out_dir, prefix, val_fraction, seed)

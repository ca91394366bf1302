"""Command line: ``python -m data_converters {SOURCE,merge} ...`` (``--help`` on each).

One subcommand per registered source (:mod:`data_converters.sources`: ``demo``, ``lidc``),
with the source's own flags and the common ones (output, geometry, label rule, run), and
``merge`` for the split files of a sharded run.

The views are a ring from ``--views/--sod/--sdd/--image-size/--pixel-spacing``, or any
acquisition from a calibration file (``--acquisition FILE``, README "Running on your own
studies"); giving both is refused.

Exit status: 0 when the dataset holds at least one converted case, 1 when nothing could be
converted, 2 on a bad flag value or an unusable folder (one line on stderr, no traceback),
130 on Ctrl-C and 143 on SIGTERM (the workers are stopped; finished cases are kept).
"""
from __future__ import annotations

import argparse
import signal
import sys
from typing import List, Optional

from data_converters.arguments import (file_prefix, fraction, image_size, positive_float,
                                       positive_int, shard)
from data_converters.errors import ConverterError

EPILOG = """\
Outputs in DIR: images/<case>/<view>.png, <prefix>_infos_{train,val}.pkl (mmdet3d v2 info
pickles) and <prefix>_infos_{train,val}_2d.coco.json; DIR/.parts keeps one file per
finished case, so a re-run resumes (finished cases are skipped) and a killed run leaves
nothing half-written. See README.md, "Data format".
"""

MERGE_DESCRIPTION = """\
Write <prefix>_infos_{train,val}.pkl and the COCO files from the finished cases of a
sharded run: shards writing into one --out (the usual job array), or shard folders given
with --inputs (their images and finished cases are copied into --out first).
"""


class _Parser(argparse.ArgumentParser):
    """Reports a bad flag as one line (no usage block)."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message}\n')


class _RingFlag(argparse.Action):
    """Stores a ring flag's value and notes the flag in ``ring_flags`` (the ones given
    explicitly, which ``--acquisition`` refuses)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        given = list(getattr(namespace, 'ring_flags', None) or [])
        setattr(namespace, 'ring_flags', given + [option_string])


def _add_common(parser: argparse.ArgumentParser, source) -> None:
    """The flags every source's subcommand has (output, geometry, label rule, run); the
    ring's defaults are the source's (:attr:`ConversionSource.default_ring`)."""
    default_size, default_prefix = source.default_image_size, source.default_prefix
    ring = dict(views=10, sod=300.0, sdd=600.0, detector_mm=800.0)
    ring.update(source.default_ring)
    parser.add_argument('--out', required=True, metavar='DIR', help='output dataset folder')
    geo = parser.add_argument_group(
        'geometry (README "Conventions"): a ring from these flags, or --acquisition FILE')
    geo.add_argument('--views', type=positive_int, default=ring['views'], action=_RingFlag,
                     help=f'number of views on a circle about z (default: {ring["views"]})')
    geo.add_argument('--image-size', type=image_size, default=(default_size, default_size),
                     action=_RingFlag, metavar='SIZE|HxW',
                     help=f'image size in pixels (default: {default_size})')
    geo.add_argument('--pixel-spacing', type=positive_float, default=None, action=_RingFlag,
                     metavar='MM',
                     help=f'detector pixel pitch (default: {ring["detector_mm"]:g} mm / the '
                          'longer image side)')
    geo.add_argument('--sod', type=positive_float, default=ring['sod'], action=_RingFlag,
                     metavar='MM',
                     help=f'source to isocentre distance (default: {ring["sod"]:g})')
    geo.add_argument('--sdd', type=positive_float, default=ring['sdd'], action=_RingFlag,
                     metavar='MM',
                     help=f'source to detector distance (default: {ring["sdd"]:g})')
    parser.set_defaults(detector_mm=ring['detector_mm'])
    geo.add_argument('--acquisition', default=None, metavar='FILE',
                     help='calibration file (JSON) of any acquisition: per-view P or K and '
                          'Rt, or the ring shorthand (README "Running on your own studies");'
                          ' not with the ring flags above')
    lab = parser.add_argument_group('labels')
    lab.add_argument('--min-readers', type=positive_int, default=3,
                     help='least readers for a ground-truth nodule; others become ignore '
                          'regions (default: 3, LUNA16)')
    lab.add_argument('--min-diameter-mm', type=positive_float, default=3.0,
                     help='least diameter for a ground-truth nodule (default: 3, LUNA16)')
    run = parser.add_argument_group('run')
    run.add_argument('--val-fraction', type=fraction, default=0.2,
                     help='fraction of patients in validation (default: 0.2)')
    run.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    run.add_argument('--workers', type=positive_int, default=1, metavar='K',
                     help='worker processes (default: 1)')
    run.add_argument('--device', default='cpu', choices=('cpu', 'cuda'),
                     help='rendering device (default: cpu)')
    run.add_argument('--limit', type=positive_int, default=None, metavar='K',
                     help='convert only the first K cases (by case id)')
    run.add_argument('--shard', type=shard, default=None, metavar='I/N',
                     help='convert only every N-th case from the I-th (0-based), e.g. one '
                          'task of a job array; then run "merge"')
    run.add_argument('--prefix', type=file_prefix, default=default_prefix,
                     help=f'prefix of the split files (default: {default_prefix})')
    run.add_argument('--no-progress', action='store_true', help='no progress bar')


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one subcommand per registered source
    (:func:`~data_converters.sources.load_sources`), then ``merge``.

    Raises:
        ConverterError: a source module declares an unusable source.
    """
    from data_converters.sources import load_sources
    parser = _Parser(prog='python -m data_converters',
                     description='CT scans with annotations -> multi-view DRRs, mmdet3d v2 '
                                 'info pickles and COCO 2D boxes.', epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True, parser_class=_Parser)
    for name, source in load_sources().items():
        command = sub.add_parser(name, help=source.cli_help,
                                 description=source.cli_description or source.cli_help,
                                 epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        source.add_arguments(command)
        _add_common(command, source)

    merge = sub.add_parser(
        'merge', help='write the split files of a sharded conversion',
        description=MERGE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    merge.add_argument('--out', required=True, metavar='DIR', help='dataset folder')
    merge.add_argument('--inputs', nargs='*', default=(), metavar='DIR',
                       help='shard folders to merge into --out')
    merge.add_argument('--prefix', type=file_prefix, default=None,
                       help='prefix of the split files (default: the shards\' prefix)')
    merge.add_argument('--val-fraction', type=fraction, default=None,
                       help='override the fraction recorded by the shards')
    merge.add_argument('--seed', type=int, default=None,
                       help='override the split seed recorded by the shards')

    export = sub.add_parser(
        'export-study', help='write one converted case as a study folder (images + '
        'calibration.json) for tools/infer.py',
        description='Copy a case\'s view images and write its calibration.json (K + Rt, '
        'the exact matrices): a study folder as tools/infer.py reads it.')
    export.add_argument('--infos', required=True, metavar='PKL', help='info pickle')
    export.add_argument('--case', required=True, metavar='TOKEN', help='case id')
    export.add_argument('--out', required=True, metavar='DIR',
                        help='study folder to write (new or empty)')
    return parser


def _acquisition(args):
    """The run's :class:`~projects.mv2d_xray.core.acquisition.Acquisition`: read from
    ``--acquisition FILE``, else the ring of ``--views/--sod/--sdd/--image-size/
    --pixel-spacing``.

    Raises:
        ConverterError: ``--acquisition`` with a ring flag, a bad calibration file (its
        one-line ``CalibrationError``) or an impossible ring.
    """
    from projects.mv2d_xray.core.acquisition import CalibrationError, load_acquisition
    from projects.mv2d_xray.core.geometry import XrayGeometry
    given = sorted(set(getattr(args, 'ring_flags', None) or []))
    if args.acquisition is not None:
        if given:
            raise ConverterError(
                f'--acquisition {args.acquisition} and {" ".join(given)} cannot be combined: '
                'the calibration file describes the views; drop the ring flag(s)')
        try:
            return load_acquisition(args.acquisition)
        except CalibrationError as err:
            raise ConverterError(f'--acquisition: {err}') from None
    try:
        spacing = args.pixel_spacing
        if spacing is None:
            spacing = args.detector_mm / max(args.image_size)
        return XrayGeometry(num_views=args.views, sod_mm=args.sod, sdd_mm=args.sdd,
                            image_size=args.image_size,
                            pixel_spacing_mm=spacing).to_acquisition()
    except ValueError as err:
        raise ConverterError(str(err)) from None


def _check_device(device: str) -> None:
    if device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            raise ConverterError('--device cuda: no CUDA device is available')


def main(argv: Optional[List[str]] = None) -> int:
    try:
        parser = build_parser()
    except ConverterError as err:
        print(f'python -m data_converters: error: {err}', file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    previous = _terminate_like_interrupt()
    try:
        return _export_study(args) if args.command == 'export-study' else _run(args)
    except ConverterError as err:
        print(f'python -m data_converters {args.command}: error: {err}', file=sys.stderr)
        return 2
    except OSError as err:
        # e.g. a full disk or a folder that became read-only: finished cases are kept
        where = f': {err.filename}' if err.filename else ''
        print(f'python -m data_converters {args.command}: error: {err.strerror or err}'
              f'{where}; the finished cases are kept: fix this and run the same command '
              'again', file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print('interrupted: finished cases are kept; run the same command again to resume',
              file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _export_study(args) -> int:
    from data_converters.export_study import export_study
    path = export_study(args.infos, args.case, args.out)
    print(f'wrote {path} and the images of {args.case} in {args.out}')
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the workers are stopped, finished cases kept."""


def _terminate_like_interrupt():
    """Make SIGTERM raise :class:`Terminated` in the main thread; returns the previous
    handler (None where it cannot be set, e.g. outside the main thread)."""
    def handler(signum, frame):
        raise Terminated()
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def _run(args) -> int:
    from data_converters.checks import (acquisition_warnings, check_acquisition, check_memory,
                                        check_writable)
    from data_converters.findings import LabelRule
    from data_converters.runner import run_conversion
    from data_converters.sources import load_sources
    from data_converters.splits import merge
    from data_converters.storage import CaseStore
    from data_converters.summary import RunReport, print_summary

    if args.command == 'merge':
        lists = merge(args.out, args.inputs, args.prefix, args.val_fraction, args.seed)
        settings = CaseStore(args.out).read_settings()
        prefix = args.prefix or settings['split']['prefix']
        print_summary(args.out, RunReport(lists=lists, prefix=prefix))
        return 0 if any(lists.values()) else 1

    source_class = load_sources()[args.command]
    geometry = _acquisition(args)
    # everything that can be refused is refused before anything is written
    check_acquisition(geometry, source_class.field_of_view_mm, source_class.body_radius_mm,
                      args.acquisition)
    check_memory(geometry, args.workers)
    check_writable(args.out)
    _check_device(args.device)
    rule = LabelRule(min_readers=args.min_readers, min_diameter_mm=args.min_diameter_mm)
    source = source_class.from_args(args, geometry, rule)
    report = run_conversion(source, args.out, args.workers, args.limit, args.shard,
                            args.prefix, progress=not args.no_progress)
    print_summary(args.out, report)
    for line in acquisition_warnings(geometry, args.min_diameter_mm, args.acquisition):
        print(line, file=sys.stderr)
    if args.shard is not None:
        print(f'shard {args.shard[0]}/{args.shard[1]} done; when all shards are: '
              f'python -m data_converters merge --out {args.out}')
    infos, _ = CaseStore(args.out).load()
    return 0 if infos else 1


if __name__ == '__main__':
    sys.exit(main())

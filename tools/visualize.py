"""Pictures of predictions and metrics (PNG, matplotlib Agg).

    # a case: its views (whole and zoomed) with ground-truth 2D / 3D boxes and the
    # predicted 3D boxes projected through each view's lidar2img (and 2D detections)
    python tools/visualize.py case --infos data/demo/demo_infos_val.pkl \\
        --case LIDC-IDRI-0001 --pred PRED.json [--dets2d DETS.json] --out case.png

    # metrics: FROC curves and per-size-band bars from one or more metrics JSONs
    python tools/visualize.py metrics metrics.json [other.json ...] \\
        [--labels model baseline] --out froc.png

``PRED.json`` follows README "Prediction format"; ``DETS.json`` is a list of COCO results
(``image_id`` of the split's COCO file, or ``token`` + ``view``). Green: ground truth
(yellow dotted: ignore regions); magenta wireframes: predicted 3D boxes (opaque = high score);
cyan dashed: predicted 2D boxes.
"""
import argparse
import os.path as osp

from _common import add_debug_flag, fail, run_main


def parse_args():
    parser = argparse.ArgumentParser(description='Draw a case or plot metrics (PNG).')
    sub = parser.add_subparsers(dest='command', required=True)
    case = sub.add_parser('case', help="a case's views with ground truth and predictions")
    case.add_argument('--infos', required=True, metavar='INFOS.pkl', help='info pickle')
    case.add_argument('--case', required=True, metavar='TOKEN', help='case id, e.g. '
                      'LIDC-IDRI-0001')
    case.add_argument('--pred', metavar='PRED.json', help='3D predictions (README format)')
    case.add_argument('--dets2d', metavar='DETS.json', help='2D detections (COCO results)')
    case.add_argument('--coco', metavar='COCO.json', help="COCO file resolving the 2D "
                      "detections' image_id (default: next to --infos)")
    case.add_argument('--data-root', help='dataset directory (default: the folder of '
                      '--infos)')
    case.add_argument('--score-thr', type=float, default=0.1,
                      help='draw predictions scoring at least this (default: 0.1)')
    case.add_argument('--max-preds', type=int, default=5,
                      help='draw at most this many 3D predictions (default: 5)')
    case.add_argument('--columns', type=int, default=5, help='views per row (default: 5)')
    case.add_argument('--zoom-finding', type=int, metavar='K',
                      help='zoom on finding K of the case (default: on all findings, or '
                      'on the largest when they are far apart)')
    case.add_argument('--out', required=True, metavar='case.png', help='PNG to write')
    metrics = sub.add_parser('metrics', help='FROC curves and per-band bars')
    metrics.add_argument('files', nargs='+', metavar='metrics.json',
                         help='metrics JSON of tools/evaluate.py or tools/test.py')
    metrics.add_argument('--labels', nargs='+', help='a name per file (default: file names)')
    metrics.add_argument('--out', required=True, metavar='froc.png', help='PNG to write')
    for sub_parser in (parser, case, metrics):
        add_debug_flag(sub_parser)
    return parser.parse_args()


def _load_json(path: str):
    """:func:`read_json`, failing with its one-line message."""
    from projects.mv2d_xray.core.io import read_json
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def _case_info(args) -> tuple:
    """``(infos, info)``: the info pickle and its case ``--case`` (one error line)."""
    from projects.mv2d_xray.core.data_format import load_infos
    try:
        infos = load_infos(args.infos)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    by_token = {d['token']: d for d in infos['data_list']}
    if args.case not in by_token:
        some = ', '.join(list(by_token)[:5])
        fail(f'case {args.case!r} is not in {args.infos} (cases: {some}...)')
    return infos, by_token[args.case]


def _case_predictions(args, num_classes: int) -> list:
    """The case's 3D predictions of ``--pred`` (README format items; none without it)."""
    from projects.mv2d_xray.core.data_format import load_predictions, predictions_to_json
    if not args.pred:
        return []
    try:
        parsed = load_predictions(args.pred, num_classes)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if args.case not in parsed:
        print(f'note: {args.pred} has no entry for {args.case}')
        return []
    return predictions_to_json({args.case: parsed[args.case]})['results'][args.case]


def _case_dets2d(args) -> list:
    """The case's 2D detections of ``--dets2d`` as ``dict(view, bbox [x, y, w, h] px,
    score)`` (none without it), resolved through the COCO file."""
    from projects.mv2d_xray.core.data_format import coco_path, load_coco, resolve_detections
    if not args.dets2d:
        return []
    coco_file = args.coco or coco_path(args.infos)
    try:
        coco = load_coco(coco_file)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    try:
        resolved = resolve_detections(coco, _load_json(args.dets2d))
    except ValueError as exc:    # a bad detection
        fail(f'{args.dets2d}: {exc}')
    images = {img['id']: img for img in coco['images']}
    dets2d = []
    for det in resolved:
        img = images[det['image_id']]
        if img.get('token') == args.case:
            dets2d.append(dict(view=img.get('view'), bbox=det['bbox'],
                               score=float(det['score'])))
    return dets2d


def draw_case(args):
    from projects.mv2d_xray.core.data_format import infos_classes
    from projects.mv2d_xray.mv2d_xray.visualization.case_views import draw_case as draw
    infos, info = _case_info(args)
    preds = _case_predictions(args, len(infos_classes(infos)))
    dets2d = _case_dets2d(args)
    data_root = args.data_root or osp.dirname(osp.abspath(args.infos))
    try:
        summary = draw(info, data_root, args.out, preds, dets2d, args.score_thr,
                       args.max_preds, args.columns, zoom_finding=args.zoom_finding)
    except FileNotFoundError as exc:
        fail(f'{exc} (is --data-root the dataset directory?)')
    except IndexError as exc:
        fail(str(exc))
    for k, s in summary.items():
        near = 'no prediction drawn' if s['nearest_mm'] is None else \
            f'nearest drawn prediction {s["nearest_mm"]:.1f} mm (score {s["score"]:.2f})'
        print(f'{args.case} finding {k} ({s["diameter_mm"]:.1f} mm): {near}')
    print(f'written {args.out}')


def plot_metrics(args):
    from projects.mv2d_xray.mv2d_xray.visualization.metric_plots import plot_metrics as plot
    labels = args.labels or [osp.splitext(osp.basename(f))[0] for f in args.files]
    if len(labels) != len(args.files):
        fail(f'--labels needs one name per file ({len(args.files)})')
    results = []
    for path, label in zip(args.files, labels):
        result = _load_json(path)
        if not isinstance(result, dict) or 'settings' not in result or 'by_size' not in result:
            fail(f'{path} is not a metrics JSON of tools/evaluate.py / tools/test.py')
        results.append((label, result))
    plot(results, args.out)
    print(f'written {args.out}')


def check_out(path: str) -> None:
    """``--out`` must name a file that can be written (before anything is drawn)."""
    if osp.isdir(path):
        fail(f'--out {path} is a directory; give the PNG file to write, e.g. '
             f'{osp.join(path, "out.png")}')


def main():
    args = parse_args()
    check_out(args.out)
    if args.command == 'case':
        draw_case(args)
    else:
        plot_metrics(args)


if __name__ == '__main__':
    run_main(main)

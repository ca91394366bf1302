"""Per-view COCO evaluation of 2D detections, to judge a 2D stage on its own.

    python tools/evaluate_2d.py --coco data/demo/demo_infos_val_2d.coco.json \\
        --dets DETS.json [--out metrics_2d.json] [--iou-thrs 0.1 0.25 0.5]

``DETS.json`` is a list of COCO results (``image_id``, ``category_id`` = class index + 1,
``bbox`` ``[x, y, w, h]`` in original image pixels, ``score``); instead of ``image_id`` an
item may name ``token`` and ``view``. ``tools/test.py`` writes the model's 2D detections in
this form (``dets2d.json`` beside ``metrics.json``). Prints AP (COCO 0.5:0.95), AP and AR
at each ``--iou-thrs`` per view and overall (pycocotools); ignore regions (``iscrowd``)
count neither way; a view without ground truth is shown as ``-``. Then the class each
finding box is named in each view (its nearest detection of any class within the
triangulation baseline's gate, ``--gate-px`` / ``--gate-frac``, scoring ``>= --score-thr``)
(``evaluation/class_confusion_2d.py``): where a class is often named as another,
``model.test_cfg.rcnn.view_support.class_support`` can let the other's detections support
it (choose the weights on val).
"""
import argparse

from _common import add_debug_flag, fail, run_main, write_metrics


def parse_args():
    parser = argparse.ArgumentParser(
        description='COCO AP / AR of 2D detections per view (pycocotools).')
    parser.add_argument('--coco', required=True, metavar='GT.coco.json',
                        help="the converter's COCO file of the split")
    parser.add_argument('--dets', required=True, metavar='DETS.json',
                        help='2D detections as a JSON list of COCO results')
    parser.add_argument('--out', metavar='metrics_2d.json', help='write the figures here')
    parser.add_argument('--iou-thrs', type=float, nargs='+', default=[0.1, 0.25, 0.5],
                        metavar='IOU', help='IoU thresholds besides COCO 0.5:0.95 '
                        '(default: 0.1 0.25 0.5)')
    parser.add_argument('--max-dets', type=int, default=100,
                        help='detections kept per image (default: 100)')
    parser.add_argument('--gate-px', type=float, default=None,
                        help='class confusion: the smallest association gate, px (default: '
                        "the triangulation baseline's, 3)")
    parser.add_argument('--gate-frac', type=float, default=None,
                        help="class confusion: the gate as a fraction of the detection's "
                        "larger side (default: the baseline's, 0.5)")
    parser.add_argument('--score-thr', type=float, default=None,
                        help='class confusion: detections scoring below are left out '
                        "(default: the baseline's, 0.05)")
    add_debug_flag(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    if any(not 0 < t <= 1 for t in args.iou_thrs) or args.max_dets < 1:
        fail('--iou-thrs must be in (0, 1] and --max-dets >= 1')
    if args.score_thr is not None and not args.score_thr >= 0:
        fail('--score-thr must be >= 0')
    from projects.mv2d_xray.core.data_format import load_coco
    from projects.mv2d_xray.core.io import read_json
    from projects.mv2d_xray.mv2d_xray.baselines.triangulation import TriangulationConfig
    from projects.mv2d_xray.mv2d_xray.evaluation.class_confusion_2d import (
        class_confusion_2d, class_confusion_table)
    from projects.mv2d_xray.mv2d_xray.evaluation.coco2d import evaluate_coco_2d, format_table_2d
    try:
        association = TriangulationConfig(**{
            key: getattr(args, key) for key in ('gate_px', 'gate_frac', 'score_thr')
            if getattr(args, key) is not None})
    except ValueError as exc:
        fail(str(exc))
    try:
        dets = read_json(args.dets, 'detections file')
        coco = load_coco(args.coco)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    try:
        result = evaluate_coco_2d(coco, dets, args.iou_thrs, args.max_dets)
        result['class_confusion'] = class_confusion_2d(coco, dets, association)
    except ValueError as exc:    # a bad detection (the COCO file was read above)
        fail(f'{args.dets}: {exc}')
    print(format_table_2d(result))
    confusion = result['class_confusion']
    print('\nThe class of each finding box\'s nearest detection in its gate, per view:')
    print(class_confusion_table(confusion))
    if args.out:
        write_metrics(result, args.out)


if __name__ == '__main__':
    run_main(main)

"""Triangulation baseline: 3D predictions from per-view 2D detections and the views'
``lidar2img`` (no learning).

    python tools/triangulate.py --infos data/demo/demo_infos_val.pkl \\
        --dets2d DETS.json --out PRED.json
    python tools/triangulate.py --infos data/demo/demo_infos_val.pkl --gt-2d --out PRED.json

``DETS.json`` is a list of COCO results (``image_id``, ``category_id``, ``bbox`` ``[x, y,
w, h]``, ``score``) on the images of the split's COCO file (``--coco``, by default the info
pickle's ``<prefix>_infos_<split>_2d.coco.json``); items may name ``token`` and ``view``
instead of ``image_id``. ``--gt-2d`` uses the COCO file's own 2D ground truth (score 1),
which shows what exact 2D boxes are worth in 3D. Detections are associated across views by
epipolar consistency, centres triangulated (linear least squares, then Levenberg-Marquardt
on the reprojection error), boxes sized from the 2D extents and scored by the detections'
summed score over the number of views; see
``projects/mv2d_xray/mv2d_xray/baselines/triangulation.py``. The output is in README's
prediction format, ready for ``tools/evaluate.py``.
"""
import argparse

from _common import add_debug_flag, fail, run_main, write_predictions


def parse_args():
    parser = argparse.ArgumentParser(
        description='Triangulate per-view 2D detections into 3D predictions '
        '(README prediction format).')
    parser.add_argument('--infos', required=True, metavar='INFOS.pkl',
                        help='info pickle of the split (views and lidar2img)')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--dets2d', metavar='DETS.json',
                        help='2D detections as a JSON list of COCO results')
    source.add_argument('--gt-2d', action='store_true',
                        help="use the COCO file's 2D ground truth as detections")
    parser.add_argument('--coco', metavar='COCO.json',
                        help='COCO file of the split (default: next to --infos, '
                        '<...>_infos_<split>_2d.coco.json)')
    parser.add_argument('--out', required=True, metavar='PRED.json',
                        help='where to write the 3D predictions')
    parser.add_argument('--score-thr', type=float, default=0.05,
                        help='drop 2D detections scoring below (default: 0.05)')
    parser.add_argument('--gate-px', type=float, default=3.0,
                        help='smallest reprojection gate in px (default: 3)')
    parser.add_argument('--gate-frac', type=float, default=0.5,
                        help='gate as a fraction of the 2D box size (default: 0.5)')
    parser.add_argument('--min-views', type=int, default=2,
                        help='views a finding needs (default: 2)')
    parser.add_argument('--min-ray-angle', type=float, default=20.0, metavar='DEG',
                        help='smallest angle between the rays of a seed pair (default: 20)')
    add_debug_flag(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    from projects.mv2d_xray.core.data_format import (coco_path, load_coco, load_infos,
                                                     resolve_detections)
    from projects.mv2d_xray.core.io import read_json
    from projects.mv2d_xray.mv2d_xray.baselines.triangulation import (
        TriangulationConfig, coco_annotations_as_detections, group_detections, triangulate_dataset)
    try:
        cfg = TriangulationConfig(score_thr=args.score_thr, gate_px=args.gate_px,
                                  gate_frac=args.gate_frac, min_views=args.min_views,
                                  min_ray_angle_deg=args.min_ray_angle)
    except ValueError as exc:
        fail(str(exc))
    coco_file = args.coco or coco_path(args.infos)
    try:
        infos = load_infos(args.infos)
        coco = load_coco(coco_file)
        raw_dets = None if args.gt_2d else read_json(args.dets2d, 'detections file')
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    try:
        if args.gt_2d:
            dets = coco_annotations_as_detections(coco)
        else:
            dets = resolve_detections(coco, raw_dets)
        grouped = group_detections(coco, dets, infos)
    except ValueError as exc:    # a bad detection
        fail(f'{args.dets2d}: {exc}')
    except KeyError as exc:      # a detection of a case or view the info pickle lacks
        fail(exc.args[0] if exc.args else str(exc))
    findings = triangulate_dataset(infos, grouped, cfg, progress=True)
    results = {token: [dict(bbox_3d=f['bbox_3d'], score=f['score'], label=f['label'])
                       for f in items] for token, items in findings.items()}
    write_predictions(results, args.out)


if __name__ == '__main__':
    run_main(main)

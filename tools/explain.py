"""Explain a trained model's 3D findings: which views and which image evidence produced each.

    # one case: a picture per finding (its cross-view evidence), the 2D stage's saliency
    # in every view, and explanations.json
    python tools/explain.py CONFIG CHECKPOINT --infos data/demo/demo_infos_val.pkl \\
        --case LIDC-IDRI-0001 --out work_dirs/demo/explain [--finding K | --top K]

    # a study of your own (images + calibration.json, README "Running on your own studies")
    python tools/explain.py CONFIG CHECKPOINT --study DIR [--calibration FILE] \
        --out DIR [--finding K | --top K]

    # how well the 2D stage's saliency points at the findings of a split (pointing game)
    python tools/explain.py CONFIG CHECKPOINT --infos data/demo/demo_infos_val.pkl \\
        --pointing-game --out work_dirs/demo/explain

    # where the 2D stage loses the findings of a split (RPN ranks, detections)
    python tools/explain.py CONFIG CHECKPOINT --infos data/demo/demo_infos_val.pkl \\
        --recall-2d --out work_dirs/demo/explain

Per finding ``k`` (by decreasing 3D score) it writes ``finding_<k>.png``: every view with
the finding's 3D box projected (red), the 2D detection its query was lifted from (yellow)
and the detections it attended to, shaded by the decoder's cross-attention, with a bar of
the attention each view received; and ``saliency_<k>.png``: every view with the 2D
stage's saliency map (EigenCAM on the FPN level of the finding's detection in that view,
or with ``--saliency score`` a box-score-driven Score-CAM of it). ``explanations.json``
holds, per finding, its 3D box (ct mm) and score, its source view and detection, the
attended detections with their attention (last decoder layer and mean over layers; a
view probe of ``model.roi_head.view_probes`` has ``probe`` true and score null) and
``view_attention`` (the share of the cross-attention each view received, summing to 1).
2D boxes in the JSON are in the original images' pixels.

``--pointing-game`` maps every view of every case of ``--infos`` (EigenCAM on the finest
FPN level, and Score-CAM of the view's best detection) and scores whether each map's peak
falls inside a finding's 2D box, overall, per size band and per view, next to the score
of a uniformly random peak (``pointing_game.json``; see
``projects/mv2d_xray/mv2d_xray/evaluation/pointing_game.py``).

``--recall-2d`` runs the 2D stage on every view of every case of ``--infos`` and asks, for
each finding's box, whether one of the view's first 10 / 50 / 200 RPN proposals (the
detector's test-time RPN) overlaps it (IoU >= ``--iou-thr``, default 0.1) and whether one
of the detections that become 3D queries does, per box width (``recall_2d.json``; see
``projects/mv2d_xray/mv2d_xray/evaluation/recall_2d.py``): where a finding the model misses
is lost.
"""
import argparse
import math
import os.path as osp

from _checkpoints import CHECKPOINT_HELP, MAX_UNFIT_FRACTION, TRUST_HELP
from _common import add_debug_flag, fail, load_config, run_main
from _model import build_dataset, build_model, case_inputs, register_modules


def parse_args():
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description="Explain a model's 3D findings on one case (cross-view attention and "
        '2D saliency pictures, explanations.json), or score the 2D saliency maps of a '
        'split with the pointing game.', epilog=CHECKPOINT_HELP + ' A checkpoint whose weights do '
        f'not fit the model (more than {MAX_UNFIT_FRACTION:.0%} of its state tensors missing '
        'or of another shape) is refused.')
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('checkpoint', help='checkpoint file (.pth)')
    parser.add_argument('--trust-checkpoint', action='store_true', help=TRUST_HELP)
    parser.add_argument('--infos', metavar='INFOS.pkl',
                        help='info pickle of a converted split (the images lie beside it); '
                        'with --case or --pointing-game')
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument('--case', metavar='TOKEN', help='the case of --infos to explain, e.g. '
                      'LIDC-IDRI-0001')
    what.add_argument('--study', metavar='DIR',
                      help='a study folder to explain: its images and calibration.json '
                      '(README "Running on your own studies")')
    what.add_argument('--pointing-game', action='store_true',
                      help='score the saliency maps of every case of --infos')
    what.add_argument('--recall-2d', action='store_true',
                      help="where the 2D stage loses the findings of --infos: the RPN's "
                      'ranks and the detections, per box width')
    parser.add_argument('--calibration', metavar='FILE',
                        help='--study: the calibration file, if not DIR/calibration.json')
    parser.add_argument('--out', required=True, metavar='DIR',
                        help='folder for the pictures and the JSON (created if needed)')
    parser.add_argument('--finding', type=int, metavar='K',
                        help='explain only finding K (0 = the highest-scoring)')
    parser.add_argument('--top', type=int, default=3, metavar='K',
                        help='explain the K highest-scoring findings (default: 3)')
    parser.add_argument('--score-thr', type=float, default=0.0, metavar='T',
                        help='explain only findings scoring at least T (default: 0)')
    parser.add_argument('--saliency', choices=('eigen', 'score', 'none'), default='eigen',
                        help='saliency map per view: EigenCAM (default), Score-CAM (K+1 '
                        'forward passes of the 2D stage per view) or none')
    parser.add_argument('--limit', type=int, metavar='N',
                        help='--pointing-game, --recall-2d: only the first N cases')
    parser.add_argument('--iou-thr', type=float, default=0.1, metavar='IOU',
                        help='--recall-2d: the IoU that counts as an overlap (default: 0.1)')
    parser.add_argument('--device', default='cpu', help='torch device (default: cpu)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    add_debug_flag(parser)
    return parser.parse_args()


def check_args(args) -> None:
    """One line (exit 2) for values that cannot work, before anything is loaded."""
    if args.finding is not None and args.finding < 0:
        fail(f'--finding must be >= 0, got {args.finding}')
    if args.top < 1:
        fail(f'--top must be >= 1, got {args.top}')
    if not 0.0 <= args.score_thr <= 1.0:
        fail(f'--score-thr must be in [0, 1], got {args.score_thr}')
    if args.limit is not None and args.limit < 1:
        fail(f'--limit must be >= 1, got {args.limit}')
    if not 0.0 < args.iou_thr <= 1.0:
        fail(f'--iou-thr must be in (0, 1], got {args.iou_thr}')
    if args.study is None and args.infos is None:
        fail('--case, --pointing-game and --recall-2d need --infos (the info pickle of the '
             'split)')
    if args.study is not None and args.infos is not None:
        fail('--study explains a study folder: drop --infos (or use --case with it)')
    if args.calibration is not None and args.study is None:
        fail('--calibration goes with --study')
    if args.study is not None and not osp.isdir(args.study):
        fail(f'--study {args.study}: no such folder')
    if not osp.isfile(args.checkpoint):
        fail(f'checkpoint not found: {args.checkpoint}')
    if args.infos is not None and not osp.isfile(args.infos):
        fail(f'info pickle not found: {args.infos}')
    if osp.exists(args.out) and not osp.isdir(args.out):
        fail(f'--out {args.out} exists and is not a folder')


# -- model and data ---------------------------------------------------------------------------
def case_index(dataset, token: str) -> int:
    tokens = [dataset.get_data_info(i)['token'] for i in range(len(dataset))]
    if token not in tokens:
        fail(f'case {token!r} is not in the info pickle (cases: {", ".join(tokens[:5])}...)')
    return tokens.index(token)


def run_case(model, dataset, index: int, explain: bool):
    """``(inputs, sample)``: the case's preprocessed ``(N, 3, H, W)`` views and the
    model's prediction (with ``explanations`` when ``explain``)."""
    import torch
    data = case_inputs(model, dataset, index)
    with torch.no_grad():
        sample = model(**data, mode='predict', explain=explain)[0]
    return data['inputs']['imgs'][0], sample


def display_views(model, imgs, img_shape) -> list:
    """Grey levels 0..255 of the preprocessed views, cropped to the unpadded image."""
    from projects.mv2d_xray.mv2d_xray.visualization.saliency_views import display_view
    pre = model.data_preprocessor
    mean, std = pre.mean.flatten().tolist(), pre.std.flatten().tolist()
    height, width = img_shape[:2]
    return [display_view(view.cpu().numpy(), mean, std)[:height, :width] for view in imgs]


# -- one case ---------------------------------------------------------------------------------
def selected_findings(sample, args) -> list:
    """Indices of the findings to explain (``pred_instances_3d`` is sorted by score)."""
    scores = sample.pred_instances_3d.scores_3d.tolist()
    if args.finding is not None:
        if args.finding >= len(scores):
            fail(f'--finding {args.finding}: the model found {len(scores)} finding(s) in '
                 f'{args.case or args.study}')
        return [args.finding]
    return [k for k, s in enumerate(scores) if s >= args.score_thr][:args.top]


def detections_per_view(explanation: dict, num_views: int) -> list:
    """Per view, the ``(n, 4)`` boxes (img px) of the 2D detections the finding's query
    attended to there; a view probe, with no 2D score, is no detection."""
    import torch

    from projects.mv2d_xray.mv2d_xray.models.explanation import view_probe_mask
    detected = torch.as_tensor(~view_probe_mask(explanation))
    return [explanation['attended_bboxes'][(explanation['attended_views'] == v) &
                                           detected].numpy()
            for v in range(num_views)]


def finding_saliency(model, imgs, explanation: dict, dets: list, img_shape,
                     method: str) -> list:
    """Per view ``(H, W)`` maps of the 2D stage for the finding's detection in that view
    (the last of the view's :func:`detections_per_view` ``dets``; EigenCAM on the finest
    level where it has none)."""
    from projects.mv2d_xray.mv2d_xray.visualization.saliency import eigen_cam, score_cam
    height, width = img_shape[:2]
    maps = []
    for view in range(len(imgs)):
        box = dets[view][-1].tolist() if len(dets[view]) else None
        if method == 'score' and box is not None:
            label = 0 if explanation.get('label') is None else int(explanation['label'])
            saliency = score_cam(model, imgs[view:view + 1], box, label)
        else:
            saliency = eigen_cam(model, imgs[view:view + 1], box)
        maps.append(saliency.cpu().numpy()[:height, :width])
    return maps


def finding_record(k: int, sample, explanation: dict, classes, view_names) -> dict:
    """The JSON entry of finding ``k`` (2D boxes in the original images' pixels)."""
    from projects.mv2d_xray.mv2d_xray.models.explanation import (explanation_to_original,
                                                                view_probe_mask)
    from projects.mv2d_xray.mv2d_xray.visualization.attention_views import box_array
    meta, pred = sample.metainfo, sample.pred_instances_3d
    original = explanation_to_original(explanation, meta['img_aug_matrix'])
    label = int(pred.labels_3d[k])
    # a view probe (model.roi_head.view_probes) is no detection: its score is null
    probes = view_probe_mask(explanation)
    attended = [dict(view=view_names[int(v)], bbox=[float(x) for x in box],
                     score=None if probe or math.isnan(float(s)) else float(s),
                     probe=bool(probe), attention=float(a), attention_mean=float(m))
                for v, box, s, probe, a, m in zip(original['attended_views'],
                                                  original['attended_bboxes'],
                                                  original['attended_scores'], probes,
                                                  original['attention'],
                                                  original['attention_mean'])]
    return dict(
        finding=k, bbox_3d=[float(v) for v in box_array(pred.bboxes_3d[k])],
        score=float(pred.scores_3d[k]), label=label, class_name=classes[label],
        source_view=view_names[int(original['source_view'])],
        source_bbox=[float(x) for x in original['source_bbox']],
        source_score=float(original['source_score']), attended=attended,
        view_attention={name: float(share) for name, share in
                        zip(view_names, original['view_attention'])},
        pictures=dict(evidence=f'finding_{k}.png', saliency=f'saliency_{k}.png'))


def explain_case(args, cfg, model, dataset) -> None:
    """``--case``: one case of the info pickle."""
    imgs, sample = run_case(model, dataset, case_index(dataset, args.case), True)
    explain_findings(args, model, imgs, sample, dataset.metainfo['classes'], args.case,
                     dict(case=args.case))


def explain_study(args, cfg) -> None:
    """``--study``: a study folder, through the inferencer (its checks: every image
    present and readable, the calibration fitting them, the intensity convention)."""
    from projects.mv2d_xray.mv2d_xray.apis import MV2DXrayInferencer
    inferencer = MV2DXrayInferencer(cfg, args.checkpoint, device=args.device,
                                    trust_checkpoint=args.trust_checkpoint,
                                    warn=lambda message: print(message))
    study, images = inferencer.load_study(args.study, args.calibration)
    data = inferencer.preprocess(study, images)
    sample = inferencer.forward(data, explain=True)
    name = osp.basename(osp.normpath(args.study))
    explain_findings(args, inferencer.model, data['inputs']['imgs'][0], sample,
                     inferencer.classes, name, dict(study=osp.abspath(args.study)))


def explain_findings(args, model, imgs, sample, classes, name: str, where: dict) -> None:
    """The pictures and ``explanations.json`` of the selected findings of one prediction.

    Args:
        model: the model (its 2D stage makes the saliency maps).
        imgs: ``(N, 3, H, W)`` preprocessed views.
        sample: the prediction with ``explanations``.
        classes: class names.
        name (str): the case or study, in titles and messages.
        where (dict): what the JSON records as the input (``case`` or ``study``).
    """
    from tqdm import tqdm

    from projects.mv2d_xray.core.io import write_json
    from projects.mv2d_xray.mv2d_xray.visualization.attention_views import \
        draw_finding_evidence
    from projects.mv2d_xray.mv2d_xray.visualization.saliency_views import \
        draw_saliency_views
    meta, pred = sample.metainfo, sample.pred_instances_3d
    names = list(meta['view_names'])
    views = display_views(model, imgs, meta['img_shape'])
    records = []
    for k in tqdm(selected_findings(sample, args), desc='findings', unit='finding'):
        explanation = dict(sample.explanations[k], label=int(pred.labels_3d[k]))
        draw_finding_evidence(views, meta['lidar2img'], explanation, pred.bboxes_3d[k],
                              osp.join(args.out, f'finding_{k}.png'), view_names=names,
                              score=float(pred.scores_3d[k]))
        if args.saliency != 'none':
            dets = detections_per_view(explanation, len(views))
            maps = finding_saliency(model, imgs, explanation, dets, meta['img_shape'],
                                    args.saliency)
            draw_saliency_views(views, maps, osp.join(args.out, f'saliency_{k}.png'),
                                dets=dets, view_names=names,
                                title=f'{name}, finding {k}: 2D saliency '
                                      f'({args.saliency})')
        records.append(finding_record(k, sample, explanation, classes, names))
    path = osp.join(args.out, 'explanations.json')
    write_json(path, dict(**where, config=args.config, checkpoint=args.checkpoint,
                          num_findings=len(pred.scores_3d), findings=records))
    print(f'{name}: {len(pred.scores_3d)} finding(s), {len(records)} explained')
    for record in records:
        top = max(record['view_attention'], key=record['view_attention'].get)
        print(f"  finding {record['finding']}: score {record['score']:.3f}, centre "
              f"{', '.join(f'{v:.1f}' for v in record['bbox_3d'][:3])} mm, from "
              f"{record['source_view']}, most attention on {top} "
              f"({record['view_attention'][top]:.2f})")
    print(f'wrote {path} and the pictures in {args.out}')


# -- pointing game ----------------------------------------------------------------------------
def gt_boxes_per_view(dataset, index: int, meta) -> list:
    """Per view ``(boxes (M, 4) px of the network input, diameters_mm (M,))`` of the
    case's findings (ignore regions left out)."""
    import numpy as np

    from projects.mv2d_xray.core.geometry import transform_boxes2d
    ann = dataset.get_data_info(index)['ann_info']
    diameters = np.asarray(ann['gt_diameters_mm'], np.float64)
    out = []
    for view, aug in enumerate(np.asarray(meta['img_aug_matrix'])):
        sel = ann['gt_bboxes_view_ids'] == view
        boxes = transform_boxes2d(aug, ann['gt_bboxes'][sel].astype(np.float64))
        out.append((boxes, diameters[ann['gt_bboxes_instance_ids_3d'][sel]]))
    return out


def view_maps(model, imgs, img_shape) -> dict:
    """``{method: per view (H, W) map}``: EigenCAM on the finest FPN level, and Score-CAM
    of the view's best 2D detection (EigenCAM where the view has none)."""
    from projects.mv2d_xray.mv2d_xray.visualization.saliency import (detect_views,
                                                                     eigen_cam, score_cam)
    height, width = img_shape[:2]
    maps = dict(eigen_cam=[], score_cam=[])
    for view, dets in enumerate(detect_views(model, imgs)):
        img = imgs[view:view + 1]
        eigen = eigen_cam(model, img)
        maps['eigen_cam'].append(eigen.cpu().numpy()[:height, :width])
        if len(dets):
            best = int(dets.scores.argmax())
            score = score_cam(model, img, dets.bboxes[best].tolist(), int(dets.labels[best]))
        else:
            score = eigen
        maps['score_cam'].append(score.cpu().numpy()[:height, :width])
    return maps


def pointing_game_split(args, cfg, model, dataset) -> None:
    from tqdm import tqdm

    from projects.mv2d_xray.core.io import write_json
    from projects.mv2d_xray.mv2d_xray.evaluation.pointing_game import pointing_game
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    records = dict(eigen_cam=[], score_cam=[])
    for index in tqdm(range(count), desc='cases', unit='case'):
        imgs, sample = run_case(model, dataset, index, False)
        meta = sample.metainfo
        gts = gt_boxes_per_view(dataset, index, meta)
        for method, maps in view_maps(model, imgs, meta['img_shape']).items():
            for name, saliency, (boxes, diameters) in zip(meta['view_names'], maps, gts):
                records[method].append(dict(saliency=saliency, boxes=boxes,
                                            diameters_mm=diameters, view=name))
    result = {method: pointing_game(recs) for method, recs in records.items()}
    path = osp.join(args.out, 'pointing_game.json')
    write_json(path, dict(infos=args.infos, cases=count, config=args.config,
                          checkpoint=args.checkpoint, methods=result))
    print(pointing_game_table(result))
    print(f'wrote {path}')


def pointing_game_table(result: dict) -> str:
    """Markdown table: hit rate against the random floor, overall and per size band."""
    from projects.mv2d_xray.core.metric import markdown_table

    def cell(block):
        if block is None or block['hit_rate'] is None:
            return '-'
        return f"{block['hit_rate']:.3f} ({block['random_floor']:.4f}, n={block['n']})"

    bands = list(next(iter(result.values()))['by_size'])
    rows = [['map', 'all findings', *bands]]
    for method, block in result.items():
        rows.append([method, cell(block), *(cell(block['by_size'][b]) for b in bands)])
    return ('pointing game: hit rate (uniform-random floor, findings x views)\n'
            + markdown_table(rows))


# -- 2D recall ------------------------------------------------------------------------------
def recall_2d_split(args, model, dataset) -> None:
    """``--recall-2d``: the RPN's ranks and the detections of every view's findings."""
    from tqdm import tqdm

    from projects.mv2d_xray.core.io import write_json
    from projects.mv2d_xray.mv2d_xray.evaluation.recall_2d import recall_2d, recall_2d_table
    from projects.mv2d_xray.mv2d_xray.visualization.saliency import \
        propose_and_detect_views
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    records = []
    for index in tqdm(range(count), desc='cases', unit='case'):
        data = case_inputs(model, dataset, index)
        imgs = data['inputs']['imgs'][0]
        gts = gt_boxes_per_view(dataset, index, data['data_samples'][0].metainfo)
        for (boxes, _), proposals, dets in zip(gts, *propose_and_detect_views(model, imgs)):
            records.append(dict(gt_boxes=boxes, proposals=proposals.bboxes.cpu().numpy(),
                                proposal_scores=proposals.scores.cpu().numpy(),
                                detections=dets.bboxes.cpu().numpy()))
    result = recall_2d(records, iou_thr=args.iou_thr)
    path = osp.join(args.out, 'recall_2d.json')
    write_json(path, dict(infos=args.infos, cases=count, views=len(records),
                          config=args.config, checkpoint=args.checkpoint, **result))
    print(recall_2d_table(result, f'{count} case(s), {len(records)} views'))
    print(f'wrote {path}')


def main():
    args = parse_args()
    check_args(args)
    cfg = load_config(args.config, args.cfg_options)
    register_modules(cfg)
    if args.study is not None:
        explain_study(args, cfg)
        return
    dataset = build_dataset(cfg, args.infos)
    model = build_model(cfg, args.checkpoint, args.device, args.trust_checkpoint)
    if args.pointing_game:
        pointing_game_split(args, cfg, model, dataset)
    elif args.recall_2d:
        recall_2d_split(args, model, dataset)
    else:
        explain_case(args, cfg, model, dataset)


if __name__ == '__main__':
    run_main(main)

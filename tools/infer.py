"""Run a trained model on your own studies: a folder of radiographs and their
``calibration.json`` (README "Running on your own studies").

    python tools/infer.py CONFIG CHECKPOINT --study DIR [--calibration FILE] [--out DIR]
        [--device cpu|cuda] [--score-thr T] [--batch] [--trust-checkpoint]

``--study DIR`` is one study folder, or with ``--batch`` a folder of study folders (each
with its ``calibration.json``; a progress bar counts them). ``--out`` (default
``work_dirs/infer/<name of DIR>``) receives ``predictions.json`` (every 3D box of every
study in the project's prediction format: ``ct`` mm, the format of ``tools/test.py`` and
``tools/evaluate.py``, keyed by the study folder's name) and ``<study>.png`` (every view
with the 3D boxes scoring at least ``--score-thr`` projected, and their scores). One line
per study says how many boxes score at least ``--score-thr`` and where their centres are
(mm).

Everything is checked before anything is written: a study with a missing, extra or
unreadable image, a calibration that does not fit its images, or grey values that do not
fit the model's training (e.g. 16-bit images for a model trained on 8-bit DRRs) stops the
run with one line (exit status 2), and ``--out`` is left as it was. The results are
written to a temporary folder beside ``--out`` and moved in at the end.
"""
import argparse
import os
import os.path as osp
import shutil
import sys
import tempfile

from _checkpoints import CHECKPOINT_HELP, MAX_UNFIT_FRACTION, TRUST_HELP
from _common import add_debug_flag, fail, load_config, run_main

#: The predictions file written to ``--out``.
PREDICTIONS_FILE = 'predictions.json'
#: At most this many boxes are listed in a study's summary line.
SUMMARY_BOXES = 5


def parse_args():
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Predict 3D boxes (ct mm) in study folders: radiographs plus their '
        'calibration.json. Writes predictions.json and a picture per study.',
        epilog=CHECKPOINT_HELP + ' A checkpoint whose weights do not fit the model (more '
        f'than {MAX_UNFIT_FRACTION:.0%} of its state tensors missing or of another shape) '
        'is refused.')
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('checkpoint', help='checkpoint file (.pth)')
    parser.add_argument('--study', required=True, metavar='DIR',
                        help='a study folder (images + calibration.json); with --batch, a '
                        'folder of study folders')
    parser.add_argument('--calibration', metavar='FILE',
                        help='calibration file to use instead of each study\'s '
                        'calibration.json')
    parser.add_argument('--out', metavar='DIR',
                        help='output folder (default: work_dirs/infer/<name of --study>)')
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'),
                        help='torch device (default: cpu)')
    parser.add_argument('--score-thr', type=float, default=0.3, metavar='T',
                        help='boxes scoring at least T are drawn and summarised (default: '
                        '0.3); predictions.json holds every box')
    parser.add_argument('--batch', action='store_true',
                        help='run every study folder directly under --study')
    parser.add_argument('--trust-checkpoint', action='store_true', help=TRUST_HELP)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    add_debug_flag(parser)
    return parser.parse_args()


def check_args(args) -> None:
    """One line (exit 2) for values that cannot work, before anything is loaded."""
    if not 0.0 <= args.score_thr <= 1.0:
        fail(f'--score-thr must be in [0, 1], got {args.score_thr}')
    if not osp.isfile(args.checkpoint):
        fail(f'checkpoint not found: {args.checkpoint}')
    if not osp.isdir(args.study):
        fail(f'study folder not found: {args.study}')
    if args.calibration is not None and not osp.isfile(args.calibration):
        fail(f'calibration file not found: {args.calibration}')
    if args.out is None:
        args.out = osp.join('work_dirs', 'infer', osp.basename(osp.normpath(
            osp.abspath(args.study))))
    if osp.exists(args.out) and not osp.isdir(args.out):
        fail(f'--out {args.out} exists and is not a folder')
    if args.device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            fail('--device cuda: no CUDA device is available (use --device cpu)')


def summary_line(token: str, num_views: int, pred, score_thr: float) -> str:
    """``token: N views, K box(es) scoring >= T: (x, y, z) mm score; ...`` (centres in
    ct mm, the best :data:`SUMMARY_BOXES`)."""
    keep = [k for k in range(len(pred.scores)) if pred.scores[k] >= score_thr]
    boxes = '; '.join(f'({", ".join(f"{v:.1f}" for v in pred.boxes[k, :3])}) mm '
                      f'{pred.scores[k]:.3f}' for k in keep[:SUMMARY_BOXES])
    if len(keep) > SUMMARY_BOXES:
        boxes += f'; and {len(keep) - SUMMARY_BOXES} more'
    return (f'{token}: {num_views} views, {len(keep)} box(es) scoring >= {score_thr:g}'
            + (f': {boxes}' if keep else f' (best score {pred.scores.max():.3f})'
               if len(pred.scores) else ' (no boxes)'))


def draw_study(study, images, pred, score_thr: float, out_file: str) -> None:
    """Every view of ``study`` with the boxes scoring at least ``score_thr`` projected
    through the study's ``lidar2img`` (``ct`` mm -> original ``img`` px)."""
    from projects.mv2d_xray.core.data_format import predictions_to_json
    from projects.mv2d_xray.mv2d_xray.visualization.case_views import draw_case
    acq = study.acquisition
    info = dict(token=study.token, instances=[], images={
        name: dict(lidar2img=acq.lidar2img(v).tolist(), img_path=study.image_paths[v])
        for v, name in enumerate(acq.view_names)})
    preds = predictions_to_json({study.token: pred})['results'][study.token]
    shown = sum(p['score'] >= score_thr for p in preds)
    draw_case(info, study.folder, out_file, preds3d=preds, score_thr=score_thr,
              images=[img.pixels for img in images],
              title=f'{study.token}: {acq.num_views} views, {shown} box(es) scoring >= '
                    f'{score_thr:g} (at most 5 drawn; ct mm)')


def publish(staging: str, out: str) -> None:
    """Move every file of ``staging`` into ``out`` (created if needed; each file replaced
    in one rename), then remove ``staging``."""
    os.makedirs(out, exist_ok=True)
    for name in sorted(os.listdir(staging)):
        os.replace(osp.join(staging, name), osp.join(out, name))
    shutil.rmtree(staging)


def check_studies(args) -> dict:
    """Find and read every study (the core only: fast, before the model is loaded);
    ``{folder: (study, images or None, values)}`` -- the images are kept for a single
    study, the value ranges of every image for the intensity check."""
    from projects.mv2d_xray.core.study import find_studies, find_study, read_images
    folders = find_studies(args.study) if args.batch else [args.study]
    checked = {}
    for folder in folders:
        study = find_study(folder, args.calibration)
        images = read_images(study)
        checked[folder] = (study, images if len(folders) == 1 else None,
                           [img.values() for img in images])
    return checked


def main():
    args = parse_args()
    check_args(args)
    checked = check_studies(args)
    cfg = load_config(args.config, args.cfg_options)
    from tqdm import tqdm

    from projects.mv2d_xray.core.data_format import predictions_to_json
    from projects.mv2d_xray.core.io import write_json
    from projects.mv2d_xray.core.study import read_images
    from projects.mv2d_xray.mv2d_xray.apis import MV2DXrayInferencer
    inferencer = MV2DXrayInferencer(cfg, args.checkpoint, device=args.device,
                                     trust_checkpoint=args.trust_checkpoint,
                                     warn=lambda m: tqdm.write(f'warning: {m}', file=sys.stderr))
    for study, _, values in checked.values():      # still nothing written
        inferencer.check_intensity(study, values)
    parent = osp.dirname(osp.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.{osp.basename(osp.abspath(args.out))}.', dir=parent)
    try:
        preds, lines = {}, []
        progress = tqdm(list(checked.values()), desc='studies', unit='study',
                        disable=not args.batch)
        for study, images, _ in progress:
            images = images or read_images(study)
            sample = inferencer.forward(inferencer.preprocess(study, images))
            pred = preds[study.token] = inferencer.postprocess(sample)
            draw_study(study, images, pred, args.score_thr,
                       osp.join(staging, f'{study.token}.png'))
            lines.append(summary_line(study.token, study.num_views, pred, args.score_thr))
            if args.batch:
                progress.write(lines[-1])
        write_json(osp.join(staging, PREDICTIONS_FILE), predictions_to_json(preds))
        publish(staging, args.out)
    finally:
        if osp.isdir(staging):
            shutil.rmtree(staging)
    if not args.batch:
        print(lines[0])
    print(f'wrote {osp.join(args.out, PREDICTIONS_FILE)} and {len(preds)} picture(s) in '
          f'{args.out}')


if __name__ == '__main__':
    run_main(main)

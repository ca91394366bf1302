"""Train and run the volume fusion head (``XrayVolumeFusionHead``) on a trained MV2D's
frozen 2D stage, and fuse its boxes with MV2D's.

    python tools/volume_fusion.py train CONFIG CHECKPOINT --infos TRAIN.pkl --work-dir DIR
    python tools/volume_fusion.py predict CONFIG CHECKPOINT DIR/volume_fusion.pth \\
        --infos VAL.pkl --out VOLUME.json
    python tools/volume_fusion.py fuse --infos VAL.pkl MV2D.json VOLUME.json --out FUSED.json

``train`` runs the config's test pipeline and MV2D's 2D stage (its finest FPN level) once
over every case of ``--infos``, keeps the features in memory (fp16; 1.4 GB for the
blades benchmark's 216 training parts), and trains the head on them: one case per step,
a window of ``--crop-voxels`` voxels along the grid's longest axis (70 % of the windows
around a finding), AdamW with a one-cycle schedule. It writes ``volume_fusion.pth`` (the
head's weights and settings) to ``--work-dir``. Why not mmengine's Runner: the 2D stage
is frozen, so its features are computed once instead of at every step (on 2 CPU cores
the difference between ~20 min and hours); the loop is one optimiser and one schedule.

``predict`` writes the head's boxes for every case of ``--infos`` (README prediction
format). ``fuse`` combines two prediction files per class
(``projects/mv2d_xray/core/box_fusion.py``; MV2D's first): the benchmark's choice for
the blades (README, "the views' features added in 3D").
"""
import argparse
import os.path as osp
import time

from _checkpoints import CHECKPOINT_HELP, TRUST_HELP, CheckpointError
from _common import add_debug_flag, fail, load_config, run_main, write_predictions
from _model import build_dataset, build_model, case_inputs, register_modules

#: The head's checkpoint file in ``--work-dir``.
HEAD_FILE = 'volume_fusion.pth'
#: Windows centred near a finding (the rest anywhere along the axis).
NEAR_FINDING_FRACTION = 0.7


def parse_args():
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Train and run the volume fusion head on a trained MV2D (its 2D stage '
        'frozen), and fuse its boxes with MV2D\'s.', epilog=CHECKPOINT_HELP)
    sub = parser.add_subparsers(dest='command', required=True)
    for name, help_text in (('train', 'train the head on the cases of --infos'),
                            ('predict', 'the head\'s 3D boxes for the cases of --infos')):
        cmd = sub.add_parser(name, help=help_text, epilog=CHECKPOINT_HELP)
        cmd.add_argument('config', help='the trained MV2D\'s config file')
        cmd.add_argument('checkpoint', help='the trained MV2D\'s checkpoint (.pth)')
        if name == 'predict':
            cmd.add_argument('head', help=f'the head\'s checkpoint ({HEAD_FILE} of train)')
        cmd.add_argument('--infos', required=True, metavar='INFOS.pkl',
                         help='info pickle of the split (its folder is the data root)')
        cmd.add_argument('--trust-checkpoint', action='store_true', help=TRUST_HELP)
        cmd.add_argument('--cfg-options', nargs='+', action=DictAction,
                         help='override config settings, key=value')
        add_debug_flag(cmd)
    train = sub.choices['train']
    train.add_argument('--work-dir', required=True, help=f'where to write {HEAD_FILE}')
    train.add_argument('--epochs', type=int, default=8, help='passes over the cases '
                       '(default: 8)')
    train.add_argument('--lr', type=float, default=2e-3, help='the one-cycle schedule\'s '
                       'peak learning rate (default: 2e-3)')
    train.add_argument('--crop-voxels', type=int, default=64, help='the training window '
                       'along the grid\'s longest axis, voxels; 0: the whole grid '
                       '(default: 64)')
    train.add_argument('--voxel-mm', type=float, default=0.5, help='voxel side, mm '
                       '(default: 0.5)')
    train.add_argument('--sigma-min-mm', type=float, default=0.5, help='the smallest '
                       'target Gaussian\'s sigma, mm; a finding\'s is max(this, d / 6) '
                       '(default: 0.5; about half a voxel suits coarse grids)')
    train.add_argument('--seed', type=int, default=0, help='seed of the head\'s weights, '
                       'the case order and the windows (default: 0)')
    predict = sub.choices['predict']
    predict.add_argument('--out', required=True, metavar='PRED.json',
                         help='where to write the 3D predictions')
    fuse = sub.add_parser('fuse', help='fuse two prediction files per class (MV2D\'s '
                          'first, the head\'s second)')
    fuse.add_argument('--infos', required=True, metavar='INFOS.pkl',
                      help='info pickle of the split (the cases and classes)')
    fuse.add_argument('first', help='prediction file (MV2D)')
    fuse.add_argument('second', help='prediction file (the volume fusion head)')
    fuse.add_argument('--dist-mm', type=float, default=2.0, help='boxes of one class '
                      'whose centres lie this close are one finding (default: 2.0, the '
                      'blades configs\' dist_thr_mm)')
    fuse.add_argument('--out', required=True, metavar='PRED.json',
                      help='where to write the fused predictions')
    add_debug_flag(fuse)
    return parser.parse_args()


def check_args(args) -> None:
    """One line and exit 2 for bad input, before anything is loaded."""
    if not osp.isfile(args.infos):
        fail(f'info pickle not found: {args.infos}')
    if args.command == 'fuse':
        for path in (args.first, args.second):
            if not osp.isfile(path):
                fail(f'prediction file not found: {path}')
        if not args.dist_mm >= 0:
            fail(f'--dist-mm must be >= 0, got {args.dist_mm}')
        return
    for path in (args.checkpoint, getattr(args, 'head', None)):
        if path is not None and not osp.isfile(path):
            fail(f'checkpoint not found: {path}')
    if args.command == 'train':
        if args.epochs < 1:
            fail(f'--epochs must be >= 1, got {args.epochs}')
        if not args.lr > 0:
            fail(f'--lr must be > 0, got {args.lr}')
        if args.crop_voxels < 0 or 0 < args.crop_voxels < 3:
            fail(f'--crop-voxels must be 0 (no window) or >= 3, got {args.crop_voxels}')
        if not args.voxel_mm > 0:
            fail(f'--voxel-mm must be > 0, got {args.voxel_mm}')
        if not args.sigma_min_mm > 0:
            fail(f'--sigma-min-mm must be > 0, got {args.sigma_min_mm}')
        if osp.exists(args.work_dir) and not osp.isdir(args.work_dir):
            fail(f'--work-dir {args.work_dir} exists and is not a folder')


# -- the frozen 2D stage's features -----------------------------------------------------------
def view_features(args, cfg):
    """Every case of ``--infos`` through the config's test pipeline and the frozen 2D stage.

    Returns:
        tuple: the split's class names and an iterator over its cases, each computed when
        it is read (``predict`` holds one case's features at a time), a dict: ``token``,
        ``feats`` ``(V, C, h, w)`` fp16 (the finest FPN level), ``lidar2img`` ``(V, 4, 4)`` ct ->
        img px of the network input, ``img_shape`` ``(H, W)`` of that input, and its
        ground truth ``gt`` (``core.data_format.CaseGT``) and CT box ``ct_min`` /
        ``ct_max`` (ct mm).
    """
    import numpy as np
    import torch
    from tqdm import tqdm

    from projects.mv2d_xray.core.data_format import (case_gt_from_info, infos_classes,
                                                     load_infos)
    register_modules(cfg)
    try:
        model = build_model(cfg, args.checkpoint, 'cpu', args.trust_checkpoint)
        infos = load_infos(args.infos)
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        fail(str(exc))
    by_token = {info['token']: info for info in infos['data_list']}
    dataset = build_dataset(cfg, args.infos)

    def cases():
        for index in tqdm(range(len(dataset)), desc='2D features', unit='case'):
            with torch.no_grad():
                data = case_inputs(model, dataset, index)
                imgs = data['inputs']['imgs']                               # (1, V, 3, H, W)
                feats = model.extract_feat(imgs)[0].to(torch.float16)
            meta = data['data_samples'][0].metainfo
            info = by_token[meta['token']]
            corners = case_ct_box(info)
            yield dict(token=meta['token'], feats=feats,
                       lidar2img=torch.as_tensor(np.asarray(meta['lidar2img']),
                                                 dtype=torch.float32),
                       img_shape=tuple(imgs.shape[-2:]), gt=case_gt_from_info(info),
                       ct_min=corners[0], ct_max=corners[1])
    return infos_classes(infos), cases()


def case_ct_box(info: dict):
    """``(ct_min, ct_max)``: the corners of the case's CT volume, ct mm (x, y, z); one line
    and exit 2 for an info item without the CT's shape and spacing."""
    from projects.mv2d_xray.mv2d_xray.baselines.triangulation import ct_bounds
    bounds = ct_bounds(info, voxel_edges=True)
    if bounds is None:
        fail(f'case {info.get("token")!r} has no CT shape and spacing_mm in its info '
             '(the head\'s grid covers the CT volume)')
    return bounds[:, 0], bounds[:, 1]


# -- train --------------------------------------------------------------------------------
def class_box_sizes(cases, num_classes: int):
    """Per class the median diameter of the training findings (1 mm for a class with
    none): the side of the boxes the head's peaks are read as."""
    import numpy as np
    sizes = []
    for label in range(num_classes):
        d = np.concatenate([c['gt'].diameters_mm[(c['gt'].labels == label) & ~c['gt'].ignore]
                            for c in cases])
        sizes.append(float(np.median(d)) if len(d) else 1.0)
    return sizes


def training_window(grid, centres, crop: int, rng):
    """A window of ``crop`` voxels of ``grid`` ``(X, Y, Z, 3)`` along its longest axis:
    with probability :data:`NEAR_FINDING_FRACTION` around a random finding centre
    (``centres`` ``(G, 3)`` ct mm, jittered by up to a quarter window), else anywhere."""
    import numpy as np
    axis = int(np.argmax(grid.shape[:3]))
    length = grid.shape[axis]
    if not crop or length <= crop:
        return grid
    if len(centres) and rng.random() < NEAR_FINDING_FRACTION:
        line = grid.movedim(axis, 0)[:, 0, 0, axis].numpy()      # the axis' positions, mm
        centre = centres[rng.integers(len(centres)), axis]
        nearest = int(np.argmin(np.abs(line - centre)))
        start = nearest - crop // 2 + int(rng.integers(-(crop // 4), crop // 4 + 1))
        start = int(np.clip(start, 0, length - crop))
    else:
        start = int(rng.integers(0, length - crop + 1))
    return grid.narrow(axis, start, crop)


def train_epoch(head, cases, optimizer, schedule, crop_voxels: int, rng, desc: str) -> float:
    """One pass over ``cases`` in a random order, one case per step: a training window of
    its grid, CenterNet's target there, one optimiser and schedule step. Returns the mean
    loss."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from projects.mv2d_xray.mv2d_xray.models.volume_fusion_head import heat_target
    losses = []
    for index in tqdm(rng.permutation(len(cases)), desc=desc, unit='case', leave=False):
        case, gt = cases[index], cases[index]['gt']
        centres = gt.boxes[:, :3]
        grid = training_window(head.grid(case['ct_min'], case['ct_max']), centres,
                               crop_voxels, rng)
        heat, ignored = heat_target(
            grid, torch.as_tensor(centres, dtype=torch.float32), torch.as_tensor(gt.labels),
            torch.as_tensor(gt.diameters_mm), torch.as_tensor(gt.ignore), head.num_classes,
            head.sigma_min_mm)
        logits = head(case['feats'].float(), case['lidar2img'], case['img_shape'], grid)
        loss = head.loss(logits, heat, ignored)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def train(args, cfg) -> None:
    import numpy as np
    import torch

    from projects.mv2d_xray.core.io import atomic_output
    from projects.mv2d_xray.mv2d_xray.models.volume_fusion_head import XrayVolumeFusionHead
    classes, cases = view_features(args, cfg)
    cases = list(cases)                        # each step draws any case: all in memory
    if not cases:
        fail(f'{args.infos} has no cases')
    head_cfg = dict(in_channels=int(cases[0]['feats'].shape[1]),
                    box_size_mm=class_box_sizes(cases, len(classes)), voxel_mm=args.voxel_mm,
                    sigma_min_mm=args.sigma_min_mm)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    head = XrayVolumeFusionHead(**head_cfg).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * len(cases), pct_start=0.05)
    start = time.time()
    for epoch in range(args.epochs):
        desc = f'epoch {epoch + 1}/{args.epochs}'
        loss = train_epoch(head, cases, optimizer, schedule, args.crop_voxels, rng, desc)
        print(f'{desc}: loss {loss:.4f} ({time.time() - start:.0f} s)', flush=True)
    path = osp.join(args.work_dir, HEAD_FILE)
    with atomic_output(path) as tmp:
        torch.save(dict(state_dict=head.state_dict(), head_cfg=head_cfg,
                        meta=dict(config=args.config, checkpoint=args.checkpoint,
                                  infos=args.infos, epochs=args.epochs, lr=args.lr,
                                  crop_voxels=args.crop_voxels, seed=args.seed)), tmp)
    print(f'wrote {path}')


# -- predict ------------------------------------------------------------------------------
def load_head(path: str):
    """The head saved by ``train`` (weights-only loading: a file from elsewhere cannot run
    code)."""
    from projects.mv2d_xray.core.checkpoint import torch_load
    from projects.mv2d_xray.mv2d_xray.models.volume_fusion_head import XrayVolumeFusionHead
    try:
        saved = torch_load(path, map_location='cpu')
        head = XrayVolumeFusionHead(**saved['head_cfg'])
        head.load_state_dict(saved['state_dict'])
    except CheckpointError as exc:
        fail(str(exc))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        fail(f'{path}: not a volume fusion head saved by tools/volume_fusion.py train '
             f'({type(exc).__name__}: {(str(exc).splitlines() or [""])[0][:200]})')
    return head.eval()


def predict(args, cfg) -> None:
    import torch

    from projects.mv2d_xray.core.data_format import CasePred, predictions_to_json
    head = load_head(args.head)
    classes, cases = view_features(args, cfg)
    if len(classes) != head.num_classes:
        fail(f'{args.head}: the head has {head.num_classes} classes, {args.infos} has '
             f'{len(classes)} ({", ".join(classes)})')
    preds = {}
    with torch.no_grad():
        for case in cases:
            if case['feats'].shape[1] != head.view_reduce[0].in_channels:
                fail(f'{args.head}: the head reads {head.view_reduce[0].in_channels} feature '
                     f'channels, the model of {args.config} gives {case["feats"].shape[1]}')
            grid = head.grid(case['ct_min'], case['ct_max'])
            logits = head(case['feats'].float(), case['lidar2img'], case['img_shape'], grid)
            boxes, scores, labels = head.predict(logits, grid)
            preds[case['token']] = CasePred(boxes.numpy(), scores.numpy(), labels.numpy())
    write_predictions(predictions_to_json(preds)['results'], args.out)


# -- fuse ---------------------------------------------------------------------------------
def fuse(args) -> None:
    from _common import load_scored_split

    from projects.mv2d_xray.core.box_fusion import fuse_boxes
    from projects.mv2d_xray.core.data_format import CasePred, predictions_to_json
    cases, _, _, (first, second) = load_scored_split(args.infos, [args.first, args.second],
                                                     allow_missing=True)
    empty = CasePred.empty()
    fused = {}
    for token in cases:
        a, b = first.get(token, empty), second.get(token, empty)
        fused[token] = CasePred(*fuse_boxes(a.boxes, a.scores, a.labels, b.boxes, b.scores,
                                            b.labels, args.dist_mm))
    write_predictions(predictions_to_json(fused)['results'], args.out,
                      'fused 3D predictions')


def main():
    args = parse_args()
    check_args(args)
    if args.command == 'fuse':
        fuse(args)
        return
    cfg = load_config(args.config, args.cfg_options)
    if args.command == 'train':
        train(args, cfg)
    else:
        predict(args, cfg)


if __name__ == '__main__':
    run_main(main)

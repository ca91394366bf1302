"""The held-out benchmark: does MV2D beat triangulating its own 2D detections?

    python tools/benchmark_detection.py                      # build or reuse, train, score
    python tools/benchmark_detection.py --quick              # a smoke run (minutes)
    make benchmark

Per domain (``chest``: the chest benchmark source; ``blades``: generated cast blades) it

1. builds the benchmark data with the domain's converter command, and the domain's
   training build if it has one (chest: ``<data>-tn15``, 15 nodules in every training
   case), or reuses a finished build (the converter skips finished cases);
2. trains the domain's 2D stage, then MV2D from it, on the training build, with a fixed
   seed (a finished run is skipped, an interrupted one resumed);
3. runs ``tools/test.py`` on the **test split** -- the only step that reads it; settings
   are chosen on val, which ``tools/train.py`` validates on -- giving MV2D's 3D boxes and
   its per-view 2D detections;
4. triangulates those 2D detections (``triangulation``) and the exact 2D boxes
   (``triangulation_gt2d``, the association ceiling) with ``tools/triangulate.py``, and
   scores the 2D stage alone per view (COCO AP / AR, ``tools/evaluate_2d.py``); where the
   findings have several classes (blades), MV2D's 2D stage is run a second time alone
   (:data:`DETECTIONS_ONLY_OPTIONS`) with its detections NMSed per class
   (:data:`NMS_PER_CLASS_OPTION`; the config's NMS across classes suppresses a box of
   one class beside another's) and those are triangulated too
   (``triangulation_nms_per_class``, the stronger baseline there);
5. with ``--volume-head``, trains the volume fusion head (``XrayVolumeFusionHead``,
   ``tools/volume_fusion.py train``) on MV2D's frozen 2D stage with the domain's settings
   (:attr:`Domain.volume_head_args`) into ``volume_head-<MV2D's folder>``, reused while
   its settings and MV2D's checkpoint are unchanged, and predicts the split with it
   (``volume_head``; the chest's settings add ~36 min on 2 CPU cores, past the 90 min of
   ``make benchmark``, so it is not a default);
6. scores the 3D methods on the same cases with 95 % case-bootstrap intervals and
   the paired bootstrap of MV2D - each triangulation of its 2D detections (and of the
   head - each of those, and - MV2D: :mod:`projects.mv2d_xray.core.bootstrap`), and each
   method again on the findings grouped by how many views' 2D detections hold them (0, 1,
   2, 3 or more: :mod:`projects.mv2d_xray.mv2d_xray.evaluation.views_detected`): where
   they are lost.

Settings of MV2D's test step are tried on val with ``--split val --variant NAME
--test-cfg-options KEY=VALUE ...`` (e.g. ``model.test_cfg.rcnn.view_support.weight=0.5``):
the trainings are reused; MV2D's test run and the baselines on its 2D detections are
redone (the overrides may change the 2D detections too), and the report is stored as
``<split>+<NAME>``. Settings of MV2D's training go in ``--cfg-options KEY=VALUE ...``
(e.g. ``model.roi_head.view_probes=True``): MV2D is trained anew from the same 2D stage
into a folder named after those options (``mv2d-model.roi_head.view_probes=True-<hash>``;
variants with the same ``--cfg-options`` share it) and tested with them. Settings of the
2D stage's training go in ``--cfg-options-2d KEY=VALUE ...`` (e.g. a longer schedule): the
2D stage is trained anew into ``2d-stage-<the options>-<hash>`` and MV2D from it into a
folder named after both lists of options (MV2D starts from that checkpoint with its own
config: an override of the 2D stage's model belongs in ``--cfg-options`` too, or its
weights do not load). ``--amp-2d`` trains the 2D stage in mixed precision (the wrapper
``tools/train.py --amp`` sets: bf16 on the CPU, faster only where the CPU has native
bf16), and ``--cycles-2d N`` as N runs of its schedule, each from the one before's last
checkpoint (``load_from``; each run in the folder one command with that ``load_from`` in
``--cfg-options-2d`` trains into). ``--train-nodules-2d N`` (chest) trains the 2D stage on
another build whose every training case holds N findings (``<data>-tn<N>``, the converter's
``--train-nodules N``; val and test as in the benchmark's build), while MV2D trains on the
domain's training build. ``--cross-fit-2d K`` (cross-fitting) trains MV2D's 3D stage on 2D
detections made on unseen images, as val's and test's are: the training cases are cut into
K folds by position (case ``i`` in fold ``i % K``), a 2D stage trained on the other folds
(``2d-stage-fold<k>of<K>``, the 2D stage's config and overrides) detects on each fold with
its test step (``crossfit-dets-fold<k>of<K>-<hash>/dets2d.json``), and MV2D, from the full
2D stage whose features and test-time detections it keeps, takes its training queries
from those files (``model.train_cfg.detections_file``). A finished training is reused only
while its config's training settings and its training overrides (data folders, seed,
schedule) are unchanged (their SHA-1 is recorded beside it; an edit of the test step keeps
the training); otherwise the run stops and says which folder to delete. ``--quick`` works
in ``<domain>-quick`` and reports as ``quick-<split>``, apart from the full run's trainings
and entries. Each run adds its entries to an existing ``benchmark.json`` / ``benchmark.md``
in ``--work-dir`` when it ends (an entry of the same domain and split is replaced; the file
is read again then, so runs side by side in one ``--work-dir`` keep each other's entries).

It writes ``benchmark.json`` (per domain and split, per method ``CPM``, ``CPM_ci`` and the
other figures with ``_ci``, ``by_size``; ``mv2d_minus_triangulation`` and, with several
classes, ``mv2d_minus_triangulation_nms_per_class``; with ``--volume-head`` the method
``volume_head`` and its ``volume_head_minus_*`` differences; ``2d_stage``;
``by_views_detected``; with several classes ``class_agnostic``, the same figures with every
box scored against every finding whatever their classes; under ``run`` the machine, time
and command), ``benchmark.md`` and ``froc_<domain>_<split>.png`` (one curve per method) to
``--work-dir`` (default ``work_dirs/benchmark``) and prints where they are.
"""
import argparse
import hashlib
import json
import math
import os
import os.path as osp
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from _common import add_debug_flag, check_amp_device, fail, run_main
from volume_fusion import HEAD_FILE

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@dataclass(frozen=True)
class Domain:
    """One benchmark domain: how its data is built and which configs train on it.

    Attributes:
        source: the converter's source (``python -m data_converters SOURCE``).
        data: the data folder (the configs' ``data_root``).
        prefix: the split files' prefix (``<prefix>_infos_<split>.pkl``).
        config_2d: the 2D stage's config.
        config: MV2D's config (trained from the 2D stage, ``load_from``).
        build_args: extra converter arguments of the full benchmark.
        quick_build_args: converter arguments of ``--quick``.
        quick_cfg: ``--cfg-options`` of ``--quick`` (short schedules).
        target_bands: size bands reported besides the dataset's (``(name, low_mm,
            high_mm)``, ``low <= d < high``): those of the issue's targets.
        train_nodules_flag: the converter flag that puts N findings in every training
            case (``--train-nodules-2d``); None where the source has none.
        train_nodules: the findings per training case of the build both stages train on
            (``<data>-tn<N>``, built with ``train_nodules_flag``; the configs'
            ``train_data_root``; its val and test splits are the benchmark's); None: they
            train on ``data``.
        volume_head_args: ``tools/volume_fusion.py train`` arguments of the volume fusion
            head (``--volume-head``; the tool's defaults where empty).
    """
    source: str
    data: str
    prefix: str
    config_2d: str
    config: str
    build_args: Tuple[str, ...] = ()
    quick_build_args: Tuple[str, ...] = ()
    quick_cfg: Tuple[str, ...] = field(default=('train_cfg.max_epochs=1',))
    target_bands: Tuple[Tuple[str, float, float], ...] = ()
    train_nodules_flag: Optional[str] = None
    train_nodules: Optional[int] = None
    volume_head_args: Tuple[str, ...] = ()


DOMAINS: Dict[str, Domain] = {
    # the chest benchmark (data_converters/sources/chest_bench.py): 440 cases, 320^2; both
    # stages train on the build with 15 nodules per training case. Two workers build both
    # in 7.7 min on 2 CPU cores (README "Chest benchmark")
    'chest': Domain(
        source='chest-bench', data='data/chest-bench', prefix='chest_bench',
        config_2d='configs/mv2d_xray/mv2d-2d-stage_r18_fpn_1xb1-12e_chest-bench-320.py',
        config='configs/mv2d_xray/mv2d_r18_fpn_1xb1-6e_chest-bench-320.py',
        build_args=('--workers', '2'),
        quick_build_args=('--cases', '12', '--deformations', '1,1,1',
                          '--test-fraction', '0.34', '--val-fraction', '0.25'),
        target_bands=(('>=6mm', 6.0, math.inf), ), train_nodules_flag='--train-nodules',
        train_nodules=15,
        # the sixty-seventh session's head (README chest ablations, "the volume fusion head
        # on the chest"; fixed before any result): 4 mm voxels (P2's cell is 5 mm at the
        # isocentre), sigma >= half a voxel, 96 mm windows, 5 epochs; 32 min on 2 CPU cores
        volume_head_args=('--voxel-mm', '4', '--sigma-min-mm', '2', '--crop-voxels', '24',
                          '--epochs', '5')),
    # generated cast blades (data_converters/sources/blades.py) at the blades demo's
    # acquisition and size (its model runs on a CPU), 360 parts: 216 / 72 / 72, so that
    # the test split holds over 100 defects (157)
    'blades': Domain(
        source='blades', data='data/benchmark_blades', prefix='blades',
        config_2d='configs/mv2d_xray/mv2d-2d-stage_r18_fpn_1xb1-12e_blades-bench-256.py',
        config='configs/mv2d_xray/mv2d_r18_fpn_1xb1-7e_blades-bench-256.py',
        build_args=('--cases', '360', '--image-size', '256', '--pixel-spacing', '0.703125',
                    '--span-mm', '40', '60', '--defect-mm', '0.6', '2.5', '--crack-mm',
                    '1.5', '6', '--detectable-mm', '0.6'),
        quick_build_args=('--cases', '6', '--image-size', '256', '--pixel-spacing',
                          '0.703125', '--span-mm', '40', '60', '--defect-mm', '0.6', '2.5',
                          '--crack-mm', '1.5', '6', '--detectable-mm', '0.6',
                          '--test-fraction', '0.34', '--val-fraction', '0.34'),
        target_bands=(('>=1mm', 1.0, math.inf), )),
}


#: The test-step override of the per-class-NMS baseline: MV2D's 2D detections (its queries
#: and the triangulation's input) NMSed per class. Blades, fifty-eighth session (README "A
#: stronger baseline"): the triangulation of those scored +0.084 CPM on val and +0.119 on
#: test over the config's NMS across classes; MV2D's own test step with it, +0.004 on val.
NMS_PER_CLASS_OPTION = 'model.test_cfg.detection_proposal.nms.class_agnostic=False'
#: The test-step overrides that run MV2D's 2D stage alone (no 3D head; not frozen, which
#: needs a 3D head and means nothing at test time), for the per-class-NMS baseline's
#: detections: the same 2D detections as the full test step's with the same options
#: (checked on the blades val split with the fifty-eighth session's training: the same 8794
#: detections, byte for byte), without the 3D step. The metric is told there are no 3D
#: boxes (its ``metrics.json`` holds the 2D figures only, not 3D figures of 0).
#: After the variant's overrides: mmengine applies ``model.roi_head=None`` after a
#: ``model.roi_head.KEY`` given before it, and fails on one given after it.
DETECTIONS_ONLY_OPTIONS = ('model.roi_head=None', 'model.freeze_base_detector=False',
                           'test_evaluator.evaluate_3d=False')

#: ``--quick``: the head's arguments after the domain's (argparse: the last one wins).
QUICK_VOLUME_HEAD_ARGS = ('--epochs', '1')

#: ``--amp-2d``: the wrapper override of ``tools/train.py --amp`` (mixed precision: bf16 on
#: the CPU, the wrapper's fp16 with a loss scale on a GPU).
AMP_2D_OPTION = 'optim_wrapper.type=XrayAmpOptimWrapper'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Held-out benchmark: MV2D against triangulating its own 2D detections '
        'and the exact 2D boxes, on the test split, with bootstrap confidence intervals.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Outputs in --work-dir: benchmark.json, benchmark.md, froc_<domain>_<split>.png, '
        'and per domain the data, the two trainings, the test run and the baselines.')
    parser.add_argument('--domains', nargs='+', default=['chest', 'blades'],
                        choices=sorted(DOMAINS),
                        help='which benchmarks (default: chest blades)')
    parser.add_argument('--work-dir', default='work_dirs/benchmark',
                        help='where everything is written (default: work_dirs/benchmark)')
    parser.add_argument('--split', default='test',
                        help='the split scored (default: test; val is for choosing settings)')
    parser.add_argument('--seed', type=int, default=0, help='training seed (default: 0)')
    parser.add_argument('--resamples', type=int, default=1000,
                        help='bootstrap resamples (default: 1000)')
    parser.add_argument('--quick', action='store_true',
                        help='a smoke run: tiny data under --work-dir, one epoch per stage, '
                        '200 resamples')
    parser.add_argument('--variant', default=None,
                        help='a name for MV2D settings tried on val (with --test-cfg-options '
                        'and / or --cfg-options); its report is stored as <split>+<variant>')
    parser.add_argument('--test-cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help="config overrides of MV2D's test run only (tools/test.py "
                        '--cfg-options), e.g. model.test_cfg.rcnn.view_support.weight=0.5')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help="config overrides of MV2D's training and test: MV2D is trained "
                        'anew from the same 2D stage into <domain>/mv2d-<the options> '
                        '(shared by variants with the same options), e.g. '
                        'model.roi_head.view_probes=True')
    parser.add_argument('--cfg-options-2d', nargs='+', default=[], metavar='KEY=VALUE',
                        help="config overrides of the 2D stage's training: the 2D stage is "
                        'trained anew into <domain>/2d-stage-<the options>, and MV2D from '
                        'it (a model override belongs in --cfg-options too), e.g. '
                        'train_cfg.max_epochs=12 param_scheduler.1.T_max=12 '
                        'param_scheduler.1.end=12')
    parser.add_argument('--amp-2d', action='store_true',
                        help='train the 2D stage in mixed precision (bf16 on the CPU; the '
                        'wrapper tools/train.py --amp sets, the same folders as '
                        f'--cfg-options-2d {AMP_2D_OPTION}); faster on a CPU with native '
                        'bf16 or a GPU, but on an AVX2 CPU a bf16 step is 20-50x slower. '
                        'With --variant')
    parser.add_argument('--cycles-2d', type=int, default=1, metavar='N',
                        help="train the 2D stage as N runs of its config's schedule, each "
                        "from the one before's last checkpoint (its warm-up and cosine "
                        'restarted; each run in its own folder, reused as any training). '
                        'Default 1; with --variant when more')
    parser.add_argument('--train-nodules-2d', type=int, default=None, metavar='N',
                        help='train the 2D stage on another build of the data whose every '
                        'training case holds N findings (<data>-tn<N>, built with the '
                        "converter's --train-nodules N; its val and test splits are the "
                        "benchmark's); MV2D still trains on the domain's training build "
                        '(chest: <data>-tn15). Chest only; with --variant')
    parser.add_argument('--cross-fit-2d', type=int, default=None, metavar='K',
                        help="train MV2D's 3D stage on cross-fitted 2D detections: the "
                        'training cases are cut into K folds (by position: case i in fold '
                        'i %% K); a 2D stage trained on the other folds detects on each '
                        '(<domain>/2d-stage-fold<k>of<K>, <domain>/crossfit-dets-fold<k>of'
                        '<K>), and MV2D takes its training queries from those detections '
                        '(model.train_cfg.detections_file); its features and its test '
                        'step use the full 2D stage. With --variant; K >= 2')
    parser.add_argument('--volume-head', action='store_true',
                        help="also train the volume fusion head on MV2D's frozen 2D stage "
                        "(tools/volume_fusion.py, the domain's settings) and score its boxes "
                        'as volume_head, paired with the triangulations and with MV2D; chest: '
                        '~36 min more on 2 CPU cores')
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.resamples < 10:
        parser.error('--resamples must be at least 10')
    if args.cycles_2d < 1:
        parser.error(f'--cycles-2d must be at least 1, got {args.cycles_2d}')
    if bool(args.variant) != bool(args.test_cfg_options or args.cfg_options
                                  or args.cfg_options_2d or args.amp_2d
                                  or args.cycles_2d > 1
                                  or args.train_nodules_2d is not None
                                  or args.cross_fit_2d is not None):
        parser.error('--variant and --test-cfg-options / --cfg-options / --cfg-options-2d '
                     '/ --amp-2d / --cycles-2d / --train-nodules-2d / --cross-fit-2d go '
                     'together')
    if args.cross_fit_2d is not None:
        if args.cross_fit_2d < 2:
            parser.error(f'--cross-fit-2d must be at least 2, got {args.cross_fit_2d}')
        if args.cycles_2d > 1 or args.train_nodules_2d is not None:
            parser.error('--cross-fit-2d trains its fold stages as the 2D stage of the '
                         "domain's training build in one run: not with --cycles-2d or "
                         '--train-nodules-2d')
    if args.train_nodules_2d is not None and args.train_nodules_2d < 1:
        parser.error(f'--train-nodules-2d must be at least 1, got {args.train_nodules_2d}')
    for name in args.domains:
        if args.train_nodules_2d and DOMAINS[name].train_nodules_flag is None:
            parser.error(f'--train-nodules-2d: the {name} benchmark has no such build '
                         f'({DOMAINS[name].source} has no option for the findings per '
                         'training case)')
    if args.variant is not None and not re.fullmatch(r'[\w.-]+', args.variant):
        parser.error(f'--variant must be letters, digits, "_", "-" or ".", '
                     f'got {args.variant!r}')
    for flag, options in (('--test-cfg-options', args.test_cfg_options),
                          ('--cfg-options', args.cfg_options),
                          ('--cfg-options-2d', args.cfg_options_2d)):
        for option in options:
            if '=' not in option:
                parser.error(f'{flag} takes KEY=VALUE, got {option!r}')
    others = [o for o in args.cfg_options_2d
              if o.startswith('optim_wrapper.type=') and o != AMP_2D_OPTION]
    if args.amp_2d and others:
        parser.error(f'--amp-2d sets {AMP_2D_OPTION}; --cfg-options-2d names another: '
                     f'{others[0]}')
    if args.quick:
        args.resamples = min(args.resamples, 200)
    return args


# -- steps (each one command, run from the repository root) ----------------------------------
def run_step(name: str, command: List[str], log: List[dict]) -> None:
    """Run one command, echo it, time it; stop with one line if it fails."""
    print(f'\n== {name}\n$ {shlex.join(command)}', flush=True)
    start = time.time()
    done = subprocess.run(command, cwd=REPO)
    log.append(dict(step=name, command=shlex.join(command),
                    seconds=round(time.time() - start, 1)))
    if done.returncode != 0:
        fail(f'{name} failed (exit {done.returncode}): {shlex.join(command)}')


def split_files(data: str, prefix: str, split: str) -> Tuple[str, str]:
    """The info pickle and COCO file of a split."""
    pkl = osp.join(data, f'{prefix}_infos_{split}.pkl')
    return pkl, pkl[:-len('.pkl')] + '_2d.coco.json'


def finished_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``tools/train.py`` finished in ``work_dir`` (``last_checkpoint``),
    or None."""
    marker = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(marker):
        return None
    with open(marker) as f:
        path = f.read().strip()
    return path if osp.isfile(path) else None


#: Config keys that do not change a training: the test step and the bookkeeping.
NOT_TRAINING_KEYS = ('work_dir', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                     'test_evaluator', 'val_cfg', 'test_cfg', 'visualizer', 'log_processor',
                     'log_level', 'launcher', 'default_hooks', 'env_cfg')
#: The line of a ``benchmark_done`` marker that records the training settings.
DIGEST_PREFIX = 'training-settings-sha1 '


def is_training_key(key: str) -> bool:
    """Whether a dotted config key (``train_cfg.max_epochs``, ``model.test_cfg``) belongs
    to the training settings: not under one of :data:`NOT_TRAINING_KEYS`, not under
    ``model.test_cfg``."""
    return key.split('.')[0] not in NOT_TRAINING_KEYS and \
        not (key + '.').startswith('model.test_cfg.')


def is_training_option(option: str) -> bool:
    """Whether a ``KEY=VALUE`` override changes a training (:func:`is_training_key`)."""
    return is_training_key(option.split('=', 1)[0])


def training_digest(config: str, cfg_options: Sequence[str] = ()) -> str:
    """SHA-1 of the training settings of ``config`` with its ``_base_`` files resolved
    (its keys and the model's that :func:`is_training_key` keeps), then the overrides of
    ``cfg_options`` that change a training (:func:`is_training_option`: the training
    data's folder among them), so that a test-step change reuses a training and a
    training change does not."""
    from mmengine.config import Config
    settings = Config.fromfile(config, import_custom_modules=False).to_dict()
    settings = {k: v for k, v in settings.items() if is_training_key(k)}
    # mmengine's Runner registers no hook for an empty `custom_hooks`, as for none: a
    # config that clears its base's hooks (the chest 2D stage, of MV2D's EMAHook) trains
    # as before, and keeps the digest its trainings were recorded with
    if settings.get('custom_hooks') == []:
        del settings['custom_hooks']
    if isinstance(settings.get('model'), dict):
        settings['model'] = {k: v for k, v in settings['model'].items()
                             if is_training_key(f'model.{k}')}
    settings = dict(config=settings,
                    overrides=[o for o in cfg_options if is_training_option(o)])
    text = json.dumps(settings, sort_keys=True, default=repr)
    return hashlib.sha1(text.encode()).hexdigest()


def recorded_digest(done_marker: str) -> Optional[str]:
    """The training-settings digest a ``benchmark_done`` marker records, or None (a
    marker written before digests were recorded)."""
    with open(done_marker) as f:
        for line in f:
            if line.startswith(DIGEST_PREFIX):
                return line[len(DIGEST_PREFIX):].strip()
    return None


def mark_done(done_marker: str, product: str, digest: str) -> None:
    """Write a ``benchmark_done`` marker: what the step made (a checkpoint), then its
    settings' digest (:data:`DIGEST_PREFIX`, read back by :func:`recorded_digest`)."""
    with open(done_marker, 'w') as f:
        f.write(product + '\n' + DIGEST_PREFIX + digest + '\n')


def train(name: str, config: str, work_dir: str, cfg_options: Sequence[str],
          log: List[dict]) -> str:
    """Train (or resume) ``config`` into ``work_dir``; returns the last checkpoint.

    A finished training is reused when its recorded training settings are those of
    ``config`` and ``cfg_options`` now (:func:`training_digest`); when they differ (the
    config's training part was edited since, or the training data moved), this stops
    with one line rather than test a stale model."""
    done_marker = osp.join(work_dir, 'benchmark_done')
    digest = training_digest(config, cfg_options)
    if osp.isfile(done_marker) and finished_checkpoint(work_dir):
        recorded = recorded_digest(done_marker)
        if recorded is not None and recorded != digest:
            fail(f'{work_dir} holds a training of {config} with other training settings '
                 '(the config or the training overrides -- data, seed, schedule -- changed '
                 'since, or it was recorded before the overrides were): delete that folder '
                 'to retrain, or use another --work-dir')
        note = '' if recorded is not None else '; its settings were not recorded'
        print(f'\n== {name}: already trained ({finished_checkpoint(work_dir)}{note})')
        return finished_checkpoint(work_dir)
    command = [sys.executable, 'tools/train.py', config, '--work-dir', work_dir]
    if finished_checkpoint(work_dir):
        command.append('--resume')
    command += ['--cfg-options', *cfg_options]
    run_step(name, command, log)
    checkpoint = finished_checkpoint(work_dir)
    if checkpoint is None:
        fail(f'{name}: no checkpoint in {work_dir} after training')
    mark_done(done_marker, checkpoint, digest)
    return checkpoint


def data_options(domain: Domain, data: str, split: str, train_data: str) -> List[str]:
    """``--cfg-options`` pointing a config's training data at ``train_data``, its val /
    test data at ``data``, and its test loader and metric at ``split``."""
    root = data.rstrip('/') + '/'
    pkl, _ = split_files(data, domain.prefix, split)
    return [f"train_dataloader.dataset.data_root={train_data.rstrip('/')}/",
            f'train_dataloader.dataset.ann_file={domain.prefix}_infos_train.pkl',
            f'val_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.ann_file={domain.prefix}_infos_val.pkl',
            f'val_evaluator.ann_file={root}{domain.prefix}_infos_val.pkl',
            f'test_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.ann_file={osp.basename(pkl)}',
            f'test_evaluator.ann_file={pkl}']


def training_folder(stem: str, cfg_options: Sequence[str]) -> str:
    """The folder of a training: ``stem`` (``2d-stage``, ``mv2d``), or with training
    overrides ``<stem>-<the overrides>-<hash>``: the overrides joined by ``+`` (other
    characters than letters, digits, ``._=+-`` as ``_``, at most 80) and the first 8 hex
    digits of the SHA-1 of the exact list, so different overrides never share a
    training."""
    if not cfg_options:
        return stem
    readable = re.sub(r'[^\w.=+-]', '_', '+'.join(cfg_options))[:80]
    digest = hashlib.sha1('\n'.join(cfg_options).encode()).hexdigest()[:8]
    return f'{stem}-{readable}-{digest}'


def mv2d_folder(cfg_options: Sequence[str], cfg_options_2d: Sequence[str] = ()) -> str:
    """The folder of an MV2D training: named after its own overrides and, when the 2D
    stage it starts from was trained with overrides, after those too (marked ``2d:``),
    so that MV2D from another 2D stage never reuses this one's training."""
    return training_folder('mv2d', [f'2d:{o}' for o in cfg_options_2d] + list(cfg_options))


def train_build(data: str, train_nodules: Optional[int]) -> Optional[str]:
    """The folder of a training build with ``train_nodules`` findings per training case
    (:attr:`Domain.train_nodules`, ``--train-nodules-2d N``): ``<data>-tn<N>``; None
    without one."""
    return None if not train_nodules else f"{data.rstrip('/')}-tn{train_nodules}"


def stage_2d_options(cfg_options_2d: Sequence[str], data_2d: Optional[str],
                     amp: bool = False, load_from: Optional[str] = None) -> List[str]:
    """The 2D stage's training overrides: :data:`AMP_2D_OPTION` first with ``amp`` (taken
    out of ``--cfg-options-2d``, so ``--amp-2d`` and ``--cfg-options-2d`` naming it share
    one folder), then ``--cfg-options-2d`` with ``load_from`` in place of the ``load_from``
    it holds (or after it), then the training data root of its own build when it has one
    (so that build names its folders too) -- the overrides, in their order, of one
    command with that ``load_from`` in ``--cfg-options-2d``."""
    given = [o for o in cfg_options_2d if not (amp and o == AMP_2D_OPTION)]
    if load_from is not None:       # at the place of the last load_from given, or the end
        place = max((i for i, o in enumerate(given) if o.startswith('load_from=')),
                    default=len(given))
        given = [o for o in given[:place] if not o.startswith('load_from=')] + \
            [f'load_from={load_from}'] + given[place + 1:]
    options = ([AMP_2D_OPTION] if amp else []) + given
    if data_2d is not None:
        options.append(f"train_dataloader.dataset.data_root={data_2d.rstrip('/')}/")
    return options


def repo_path(path: str) -> str:
    """``path`` relative to the repository root when it lies inside it (a folder name
    that does not depend on where the clone is), else absolute."""
    path = osp.abspath(path)
    inside = osp.commonpath([path, REPO]) == REPO
    return osp.relpath(path, REPO) if inside else path


def train_2d_stage(name: str, domain: Domain, out: str, options: Sequence[str],
                   args: argparse.Namespace, data_2d: Optional[str],
                   log: List[dict]) -> Tuple[str, List[str]]:
    """Train the 2D stage as ``args.cycles_2d`` runs of its config's schedule under
    ``out`` (:func:`stage_2d_options`; ``options`` before them): the first as
    ``--cfg-options-2d`` says, each later one from the last checkpoint of the one before
    (``load_from``, repository-relative: a warm restart of the warm-up and the cosine,
    trained into the folder -- and with the training digest -- of one command with that
    ``load_from`` in ``--cfg-options-2d``). Returns the last checkpoint and the last
    run's overrides, which name MV2D's folder."""
    checkpoint, cycles = None, args.cycles_2d
    for cycle in range(1, cycles + 1):
        options_2d = stage_2d_options(args.cfg_options_2d, data_2d, args.amp_2d,
                                      checkpoint and repo_path(checkpoint))
        title = f'{name}: training the 2D stage' + \
            (f' (run {cycle} of {cycles})' if cycles > 1 else '')
        checkpoint = train(title, domain.config_2d,
                           osp.join(out, training_folder('2d-stage', options_2d)),
                           list(options) + options_2d, log)
    return checkpoint, options_2d


def load_split(pkl: str) -> dict:
    """A split's info pickle (one line if it is not one)."""
    from projects.mv2d_xray.core.data_format import load_infos
    try:
        return load_infos(pkl)
    except (OSError, ValueError) as exc:
        fail(str(exc))


def count_cases(pkl: str) -> int:
    """The number of cases of an info pickle (one line if it is not one)."""
    return len(load_split(pkl)['data_list'])


def fold_indices(num_cases: int, num_folds: int, fold: int) -> Tuple[List[int], List[int]]:
    """``--cross-fit-2d``: the training-pickle positions a fold's 2D stage trains on (every
    case not in ``fold``) and those it detects on (case ``i`` is in fold ``i % num_folds``)."""
    held_out = [i for i in range(num_cases) if i % num_folds == fold]
    return [i for i in range(num_cases) if i % num_folds != fold], held_out


def indices_option(loader: str, indices: Sequence[int]) -> str:
    """The ``--cfg-options`` override restricting a loader's dataset to ``indices``
    (mmengine ``BaseDataset(indices=...)``)."""
    return f"{loader}.dataset.indices=[{','.join(str(i) for i in indices)}]"


def cross_fit_detections(name: str, domain: Domain, out: str, options: Sequence[str],
                         args: argparse.Namespace, train_data: str,
                         log: List[dict]) -> List[str]:
    """``--cross-fit-2d K``: per fold, train the 2D stage on the other folds of
    ``train_data``'s training cases (``2d-stage-fold<k>of<K>``, the 2D stage's overrides as
    :func:`train_2d_stage`'s first run) and detect on the fold with its test step
    (``tools/test.py``: ``dets2d.json`` in ``crossfit-dets-fold<k>of<K>-<hash>``, reused
    while made by that checkpoint). Returns the detection files, one per fold."""
    folds = args.cross_fit_2d
    pkl, _ = split_files(train_data, domain.prefix, 'train')
    num_cases = count_cases(pkl)
    if num_cases < folds:
        fail(f'--cross-fit-2d {folds}: {pkl} holds only {num_cases} training cases')
    options_2d = stage_2d_options(args.cfg_options_2d, None, args.amp_2d)
    files = []
    for fold in range(folds):
        train_idx, held_out = fold_indices(num_cases, folds, fold)
        tag = f'fold{fold + 1}of{folds}'
        checkpoint = train(f'{name}: training the 2D stage of {tag} (cross-fitting)',
                           domain.config_2d,
                           osp.join(out, training_folder(f'2d-stage-{tag}', options_2d)),
                           list(options) + options_2d +
                           [indices_option('train_dataloader', train_idx)], log)
        digest = hashlib.sha1(checkpoint.encode()).hexdigest()[:8]
        dets_dir = osp.join(out, f'crossfit-dets-{tag}-{digest}')
        dets, marker = osp.join(dets_dir, 'dets2d.json'), osp.join(dets_dir, 'benchmark_done')
        if osp.isfile(marker) and osp.isfile(dets):
            print(f'\n== {name}: the 2D detections of {tag}: already made ({dets})')
        else:
            run_step(f'{name}: the 2D detections of {tag} (cross-fitting)',
                     [sys.executable, 'tools/test.py', domain.config_2d, checkpoint,
                      '--work-dir', dets_dir, '--cfg-options',
                      f"test_dataloader.dataset.data_root={train_data.rstrip('/')}/",
                      f'test_dataloader.dataset.ann_file={osp.basename(pkl)}',
                      indices_option('test_dataloader', held_out),
                      f'test_evaluator.ann_file={pkl}'], log)
            if not osp.isfile(dets):
                fail(f'{name}: tools/test.py wrote no 2D detections ({dets})')
            with open(marker, 'w') as f:
                f.write(checkpoint + '\n')
        files.append(dets)
    return files


def volume_head_folder(mv2d_dir: str) -> str:
    """The volume fusion head's training folder: beside the MV2D training whose frozen 2D
    stage it reads, named after it (``volume_head-mv2d``)."""
    return osp.join(osp.dirname(mv2d_dir), f'volume_head-{osp.basename(mv2d_dir)}')


def volume_head_digest(checkpoint: str, command: Sequence[str]) -> str:
    """SHA-1 of what a head's training depends on: MV2D's checkpoint (its path, relative
    to the repository where it lies inside it, size and modification time: a retrained
    MV2D writes a new file at the same path) and the training command after the
    checkpoint (data, settings, seed, overrides)."""
    stat = os.stat(checkpoint)
    text = json.dumps([repo_path(checkpoint), stat.st_size, stat.st_mtime_ns,
                       list(command[command.index(checkpoint) + 1:])])
    return hashlib.sha1(text.encode()).hexdigest()


def volume_fusion_command(verb: str, domain: Domain, checkpoint: str,
                          args: argparse.Namespace, *more: str) -> List[str]:
    """``tools/volume_fusion.py VERB`` on MV2D's config and ``checkpoint`` with ``more``
    arguments, then the run's ``--cfg-options`` (MV2D's model overrides: its checkpoint
    loads with them)."""
    command = [sys.executable, 'tools/volume_fusion.py', verb, domain.config, checkpoint,
               *more]
    if args.cfg_options:
        command += ['--cfg-options', *args.cfg_options]
    return command


def train_volume_head(name: str, domain: Domain, checkpoint: str, head_dir: str,
                      train_pkl: str, args: argparse.Namespace, log: List[dict]) -> str:
    """Train the volume fusion head on the frozen 2D stage of MV2D's ``checkpoint`` with
    the cases of ``train_pkl`` into ``head_dir``; returns the head's checkpoint.

    A finished head (its ``benchmark_done`` marker) is reused while
    :func:`volume_head_digest` is unchanged; otherwise this stops with one line rather
    than score a head of another MV2D or other settings. ``tools/volume_fusion.py`` does
    not resume: an interrupted head trains again."""
    head_args = list(domain.volume_head_args)
    if args.quick:
        head_args += QUICK_VOLUME_HEAD_ARGS
    command = volume_fusion_command('train', domain, checkpoint, args, '--infos', train_pkl,
                                    '--work-dir', head_dir, *head_args,
                                    '--seed', str(args.seed))
    head = osp.join(head_dir, HEAD_FILE)
    done_marker = osp.join(head_dir, 'benchmark_done')
    digest = volume_head_digest(checkpoint, command)
    if osp.isfile(done_marker) and osp.isfile(head):
        if recorded_digest(done_marker) != digest:
            fail(f'{head_dir} holds a volume fusion head of another MV2D checkpoint or '
                 'other settings: delete that folder to retrain, or use another --work-dir')
        print(f'\n== {name}: already trained ({head})')
        return head
    run_step(name, command, log)
    if not osp.isfile(head):
        fail(f'{name}: no {HEAD_FILE} in {head_dir} after training')
    mark_done(done_marker, head, digest)
    return head


def report_key(args: argparse.Namespace) -> str:
    """The split's key in the report: ``test``, or ``val+<variant>`` for a variant;
    ``quick-`` before it for ``--quick``, so a smoke run never replaces a real entry."""
    key = args.split if args.variant is None else f'{args.split}+{args.variant}'
    return f'quick-{key}' if args.quick else key


def run_domain(name: str, domain: Domain, args: argparse.Namespace,
               log: List[dict]) -> Dict[str, str]:
    """Steps 1-5 for one domain; returns the prediction and metric files."""
    out = osp.join(args.work_dir, f'{name}-quick' if args.quick else name)
    data = osp.join(out, 'data') if args.quick else domain.data
    build = domain.quick_build_args if args.quick else domain.build_args
    run_step(f'{name}: benchmark data', [sys.executable, '-m', 'data_converters',
                                         domain.source, '--out', data, *build], log)
    pkl, coco = split_files(data, domain.prefix, args.split)
    if not osp.isfile(pkl):
        fail(f'{data} has no {args.split} split ({pkl})')
    from projects.mv2d_xray.core.data_format import infos_classes

    # several classes (blades): the triangulation of 2D detections NMSed per class differs
    # from that of the config's, NMSed across classes, and is run besides it (step 4)
    several_classes = len(infos_classes(load_split(pkl))) > 1
    train_data = train_build(data, domain.train_nodules) or data
    data_2d = train_build(data, args.train_nodules_2d)
    if data_2d == train_data:
        data_2d = None                  # the domain's own training build: the same training
    # one build per number of findings (the domain's, then --train-nodules-2d's)
    for nodules in dict.fromkeys(n for n in (domain.train_nodules, args.train_nodules_2d)
                                 if n):
        run_step(f'{name}: training data ({nodules} findings per training case)',
                 [sys.executable, '-m', 'data_converters', domain.source, '--out',
                  train_build(data, nodules), *build, domain.train_nodules_flag,
                  str(nodules)], log)
    options = data_options(domain, data, args.split, train_data) + \
        [f'randomness.seed={args.seed}']
    quick = list(domain.quick_cfg) if args.quick else []
    ckpt_2d, options_2d = train_2d_stage(name, domain, out, options + quick, args, data_2d,
                                         log)
    key = report_key(args)
    mv2d_options = list(args.cfg_options)
    if args.cross_fit_2d:
        dets = cross_fit_detections(name, domain, out, options + quick, args, train_data,
                                    log)
        mv2d_options.append(f"model.train_cfg.detections_file=[{','.join(dets)}]")
    mv2d_dir = osp.join(out, mv2d_folder(mv2d_options, options_2d))
    ckpt = train(f'{name}: training MV2D', domain.config, mv2d_dir,
                 options + quick + mv2d_options + [f'load_from={ckpt_2d}'], log)
    test_dir = osp.join(out, f'test-{key}')

    def test_command(work_dir: str, *more: str) -> List[str]:
        """MV2D's test step into ``work_dir``, the overrides of this run, then ``more``."""
        return [sys.executable, 'tools/test.py', domain.config, ckpt, '--work-dir', work_dir,
                '--cfg-options', *options, *args.cfg_options, *args.test_cfg_options, *more]
    run_step(f'{name}: MV2D on the {key} split', test_command(test_dir), log)
    files = dict(infos=pkl, coco=coco, mv2d=osp.join(test_dir, 'predictions.json'),
                 dets2d=osp.join(test_dir, 'dets2d.json'),
                 triangulation=osp.join(out, f'triangulation-{key}', 'predictions.json'),
                 triangulation_gt2d=osp.join(out, f'triangulation_gt2d-{key}',
                                             'predictions.json'),
                 metrics_2d=osp.join(out, f'metrics_2d-{key}.json'))

    def triangulate_command(out_file: str, *source: str) -> List[str]:
        """``tools/triangulate.py`` on the split's cases from ``source`` (``--dets2d FILE``
        or ``--gt-2d``) into ``out_file``."""
        return [sys.executable, 'tools/triangulate.py', '--infos', pkl, *source, '--out',
                out_file]
    run_step(f'{name}: triangulating MV2D\'s 2D detections',
             triangulate_command(files['triangulation'], '--dets2d', files['dets2d']), log)
    if several_classes:
        nms_dir = osp.join(out, f'test_nms_per_class-{key}')
        run_step(f'{name}: MV2D\'s 2D detections NMSed per class on the {key} split',
                 test_command(nms_dir, *DETECTIONS_ONLY_OPTIONS, NMS_PER_CLASS_OPTION), log)
        files['triangulation_nms_per_class'] = osp.join(
            out, f'triangulation_nms_per_class-{key}', 'predictions.json')
        run_step(f'{name}: triangulating them',
                 triangulate_command(files['triangulation_nms_per_class'], '--dets2d',
                                     osp.join(nms_dir, 'dets2d.json')), log)
    run_step(f'{name}: triangulating the exact 2D boxes',
             triangulate_command(files['triangulation_gt2d'], '--gt-2d'), log)
    run_step(f'{name}: the 2D stage per view (COCO)',
             [sys.executable, 'tools/evaluate_2d.py', '--coco', coco, '--dets',
              files['dets2d'], '--out', files['metrics_2d']], log)
    if args.volume_head:
        head = train_volume_head(
            f'{name}: training the volume fusion head', domain, ckpt,
            volume_head_folder(mv2d_dir), split_files(train_data, domain.prefix, 'train')[0],
            args, log)
        files['volume_head'] = osp.join(out, f'volume_head-{key}', 'predictions.json')
        run_step(f'{name}: the volume fusion head on the {key} split',
                 volume_fusion_command('predict', domain, ckpt, args, head, '--infos', pkl,
                                       '--out', files['volume_head']), log)
    return files


def score_domain(name: str, files: Dict[str, str], args: argparse.Namespace) -> dict:
    """Step 6: the bootstrap report of one domain's split, and its FROC plot."""
    from tqdm import tqdm

    from projects.mv2d_xray.core.bootstrap import bootstrap_metrics
    from projects.mv2d_xray.core.data_format import (infos_size_bands, load_coco,
                                                     load_gt_cases, load_infos,
                                                     load_predictions, resolve_detections)
    from projects.mv2d_xray.core.io import read_json
    from projects.mv2d_xray.core.metric import (CLASS_AGNOSTIC, DEFAULT_SIZE_BANDS,
                                                class_agnostic_cases, class_agnostic_preds)
    from projects.mv2d_xray.mv2d_xray.baselines.triangulation import group_detections
    from projects.mv2d_xray.mv2d_xray.evaluation.benchmark_report import (METHODS, PAIRS,
                                                                          band_names,
                                                                          result_curves, summarise,
                                                                          verdict)
    from projects.mv2d_xray.mv2d_xray.evaluation.views_detected import (by_views_detected,
                                                                        dataset_detecting_views)
    from projects.mv2d_xray.mv2d_xray.visualization.metric_plots import plot_metrics
    infos = load_infos(files['infos'])
    cases, classes = load_gt_cases(infos, files['infos'])
    preds = {method: load_predictions(files[method], len(classes)) for method in METHODS
             if method in files}
    print(f'\n== {name}: bootstrap over {len(cases)} {args.split} cases '
          f'({args.resamples} resamples)', flush=True)
    bootstrap_kwargs = dict(
        pairs=[pair for pair in PAIRS if set(pair) <= set(preds)],
        num_resamples=args.resamples, seed=args.seed,
        size_bands=tuple(infos_size_bands(infos) or DEFAULT_SIZE_BANDS)
        + DOMAINS[name].target_bands,
        progress=lambda r: tqdm(r, unit='resample', file=sys.stderr))
    boot = bootstrap_metrics(cases, preds, classes, **bootstrap_kwargs)
    bands = band_names(boot['methods']['mv2d']['result'])
    entry = summarise(boot, bands, read_json(files['metrics_2d']))
    if len(classes) > 1:    # whether the findings are found at all, apart from their names
        print(f'== {name}: the same without classes', flush=True)
        entry['class_agnostic'] = summarise(bootstrap_metrics(
            class_agnostic_cases(cases),
            {method: class_agnostic_preds(p) for method, p in preds.items()},
            CLASS_AGNOSTIC, **bootstrap_kwargs), bands)
    # where the findings are lost: grouped by the views whose 2D detections hold them
    coco = load_coco(files['coco'])
    dets = group_detections(coco, resolve_detections(coco, read_json(files['dets2d'],
                                                                      '2D detections')),
                            infos)
    entry['by_views_detected'] = by_views_detected(
        cases, preds, classes, dataset_detecting_views(infos, cases, dets))
    entry['verdict'] = verdict(entry)
    plot_metrics(result_curves(boot),
                 osp.join(args.work_dir, f'froc_{name}_{report_key(args)}.png'))
    return entry


def machine() -> str:
    cores = os.cpu_count()
    return f'{platform.processor() or platform.machine()}, {cores} CPU cores, ' \
        f'{platform.system()} {platform.release()}'


def load_report(path: str) -> dict:
    """The ``domains`` of an earlier ``benchmark.json`` (to add this run's entries to);
    empty when there is none. A file that is not a benchmark report stops with one line."""
    from projects.mv2d_xray.core.io import read_json
    if not osp.isfile(path):
        return {}
    try:
        domains = read_json(path)['domains']
        if not isinstance(domains, dict):
            raise TypeError(f"'domains' is a {type(domains).__name__}")
    except Exception as exc:
        fail(f'{path} is not a benchmark report ({type(exc).__name__}: {exc}); '
             'use another --work-dir or delete it')
    return domains


def merge_report(path: str, entries: Dict[str, Dict[str, dict]]) -> dict:
    """The ``domains`` of the report at ``path`` with this run's ``entries`` (domain ->
    report key -> entry) added, an entry of the same key replaced. The file is read again
    here, after the run, not at its start: runs of hours in one ``--work-dir`` (variants
    on val side by side) would otherwise drop the entries another run wrote meanwhile."""
    domains = load_report(path)
    for name, keyed in entries.items():
        domains.setdefault(name, {}).update(keyed)
    return domains


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.amp_2d:         # before the data builds: one line where bf16 cannot run
        from mmengine.config import ConfigDict
        wrapper = AMP_2D_OPTION.split('=', 1)[1]
        check_amp_device(ConfigDict(optim_wrapper=dict(type=wrapper)), '--amp-2d')
    from projects.mv2d_xray.core.io import atomic_write, write_json
    from projects.mv2d_xray.mv2d_xray.evaluation.benchmark_report import (markdown_report,
                                                                          verdict_lines)
    os.makedirs(args.work_dir, exist_ok=True)
    json_path = osp.join(args.work_dir, 'benchmark.json')
    md_path = osp.join(args.work_dir, 'benchmark.md')
    load_report(json_path)      # a file that is not a report stops the run before any work
    key = report_key(args)
    entries: Dict[str, Dict[str, dict]] = {}
    for name in args.domains:
        start, log = time.time(), []
        run = dict(command=shlex.join([sys.executable, *sys.argv]), machine=machine(),
                   started=time.strftime('%Y-%m-%d %H:%M:%S %Z'), quick=args.quick,
                   seed=args.seed, test_cfg_options=args.test_cfg_options,
                   cfg_options=args.cfg_options, cfg_options_2d=args.cfg_options_2d,
                   amp_2d=args.amp_2d, cycles_2d=args.cycles_2d,
                   train_nodules_2d=args.train_nodules_2d,
                   cross_fit_2d=args.cross_fit_2d, volume_head=args.volume_head, steps=log)
        files = run_domain(name, DOMAINS[name], args, log)
        entry = score_domain(name, files, args)
        entry['run'] = dict(run, seconds=round(time.time() - start, 1))
        entries[name] = {key: entry}
    domains = merge_report(json_path, entries)
    markdown = ['# Detection benchmark', '']
    for name, splits in domains.items():
        for split_key, entry in splits.items():
            run = entry.get('run', {})
            markdown.append(markdown_report(entry, list(entry['mv2d']['by_size']),
                                            f'{name}, {split_key} split',
                                            split_key.split('+')[0]))
            if run:
                markdown.append(f"Machine: {run['machine']}; started {run['started']}; "
                                f"{run['seconds']:.0f} s. Command: `{run['command']}`\n")
    write_json(json_path, dict(domains=domains))
    atomic_write(md_path, '\n'.join(markdown).encode())
    print('\n' + '\n'.join(markdown))
    for name in args.domains:
        print('\n'.join(verdict_lines(f'{name}, {key}', domains[name][key]['verdict'])))
    print(f'\nwritten: {json_path}, {md_path}, ' + ', '.join(
        osp.join(args.work_dir, f'froc_{n}_{key}.png') for n in args.domains))


if __name__ == '__main__':
    run_main(main)

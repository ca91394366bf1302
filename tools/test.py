"""Test (and evaluate) a checkpoint with mmengine's Runner (the flags of mmdet3d 1.4's tool).

    python tools/test.py CONFIG CHECKPOINT [--trust-checkpoint] [--work-dir DIR]
        [--cfg-options ...] [--launcher ...]

Several processes: ``tools/dist_test.sh CONFIG CHECKPOINT NPROC`` (same metrics). Without
CUDA the config's dataloaders do not pin memory (``_common.pin_memory_only_with_cuda``).

The metrics are printed as a table and, for the project's metric, written to
``<work dir>/metrics.json`` (the format of ``tools/evaluate.py``; the 2D figures alone for
a model run without its 3D stage, ``model.roi_head=None test_evaluator.evaluate_3d=False``),
with ``predictions.json`` and ``dets2d.json`` beside it. Always into this run's work dir,
also from the config an earlier test dumped into its own (which names that run's files);
only ``--cfg-options test_evaluator.out_file=PATH`` puts them elsewhere.
"""
import argparse
import inspect
import os.path as osp

from _checkpoints import (CHECKPOINT_HELP, MAX_UNFIT_FRACTION, TRUST_HELP, checkpoint_loading,
                          require_fit)
from _common import (add_debug_flag, check_launcher, default_work_dir, end_distributed, fail,
                     load_config, pin_memory_only_with_cuda, run_main, set_local_rank,
                     setup_distributed)


def parse_args():
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Test a checkpoint (mmengine Runner).',
                                     epilog=CHECKPOINT_HELP + ' A checkpoint whose weights '
                                     'do not fit the model (more than '
                                     f'{MAX_UNFIT_FRACTION:.0%} of its state tensors missing '
                                     'or of another shape) is refused.')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (.pth)')
    parser.add_argument('--trust-checkpoint', action='store_true', help=TRUST_HELP)
    parser.add_argument('--work-dir', help='where to write logs and metrics.json')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    add_debug_flag(parser)
    args = parser.parse_args()
    set_local_rank(args.local_rank)
    return args


def _route_metrics_json(evaluator_cfg, path: str) -> None:
    """Point metrics that can write a JSON file (an ``out_file`` argument) at ``path``,
    whatever ``out_file`` the config holds: the config that mmengine dumps into a test's
    work dir carries that run's ``out_file``, and a later test from that config with
    another ``--work-dir`` would otherwise overwrite the first run's metrics and
    predictions (``main`` skips this when ``--cfg-options`` names an ``out_file``)."""
    from mmdet3d.registry import METRICS
    from mmengine.registry import DefaultScope
    metrics = evaluator_cfg if isinstance(evaluator_cfg, list) else [evaluator_cfg]
    with DefaultScope.overwrite_default_scope('mmdet3d'):
        for metric in metrics:
            cls = METRICS.get(metric.get('type')) if isinstance(metric, dict) else None
            if cls is not None and 'out_file' in inspect.signature(cls).parameters:
                metric['out_file'] = path


def _names_out_file(cfg_options) -> bool:
    """Whether ``--cfg-options`` sets a test metric's ``out_file`` (``test_evaluator.
    out_file``, or ``test_evaluator.N.out_file`` for a list of metrics)."""
    return any(key.startswith('test_evaluator.') and key.endswith('.out_file')
               for key in cfg_options or {})


def main():
    args = parse_args()
    check_launcher(args.launcher)
    if not osp.isfile(args.checkpoint):
        fail(f'checkpoint not found: {args.checkpoint}')
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = default_work_dir(cfg, args.config, args.work_dir)
    cfg.load_from = args.checkpoint
    setup_distributed(cfg, args.launcher)
    pin_memory_only_with_cuda(cfg)
    if cfg.get('test_evaluator') is not None and not _names_out_file(args.cfg_options):
        _route_metrics_json(cfg.test_evaluator, osp.join(cfg.work_dir, 'metrics.json'))

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    with checkpoint_loading(files=[args.checkpoint], trust=args.trust_checkpoint,
                            check=lambda name, ckpt: require_fit(runner.model, ckpt, name)):
        runner.test()
    end_distributed()


if __name__ == '__main__':
    run_main(main)

"""Train a model from a config with mmengine's Runner (the flags of mmdet3d 1.4's tool).

    python tools/train.py configs/mv2d_xray/CONFIG.py [--work-dir DIR] [--amp]
        [--resume [CKPT]] [--trust-checkpoint] [--cfg-options key=value ...]
        [--launcher none|pytorch|slurm|mpi]

Run it from anywhere; the repository root is put on ``sys.path``. For several GPUs or
processes use ``tools/dist_train.sh CONFIG NPROC`` (gloo and a CPU-capable DDP wrapper
when there is no CUDA: ``_common.setup_distributed``). Without CUDA the config's
dataloaders do not pin memory (``_common.pin_memory_only_with_cuda``).
"""
import argparse
import os.path as osp
import sys

from _checkpoints import (CHECKPOINT_HELP, TRUST_HELP, checkpoint_loading, require_fit,
                          require_resumable, starting_weights_note)
from _common import (add_debug_flag, check_amp_device, check_launcher, check_world_size,
                     default_work_dir, enable_amp, end_distributed, fail, load_config,
                     pin_memory_only_with_cuda, run_main, set_local_rank, setup_distributed)


def parse_args():
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Train a detector (mmengine Runner).',
        epilog='Checkpoints and logs go to the work dir (the config\'s work_dir, else '
        'work_dirs/<config name>). ' + CHECKPOINT_HELP + ' load_from (e.g. a 2D-stage '
        'checkpoint) may leave parts of the model fresh (logged); a checkpoint of another '
        'model, or one without training state given to --resume, is refused.')
    parser.add_argument('config', help='config file, e.g. configs/mv2d_xray/...py')
    parser.add_argument('--work-dir', help='where to save logs and checkpoints')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (mmengine\'s AmpOptimWrapper: fp16 '
                        'with a dynamic loss scale on a GPU, or optim_wrapper.dtype=bfloat16; '
                        'bf16 on the CPU); the 3D head stays fp32')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or without a value from the '
                        'latest checkpoint in the work dir')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help=TRUST_HELP + ' (load_from, the --resume checkpoint, the work '
                        'dir\'s checkpoints when resuming)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (e.g. '
                        'train_cfg.max_epochs=2 optim_wrapper.optimizer.lr=1e-4)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher (dist_train.sh uses pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    parser.add_argument('--check-world-size', type=int, metavar='N', help=argparse.SUPPRESS)
    add_debug_flag(parser)
    args = parser.parse_args()
    set_local_rank(args.local_rank)
    return args


def main():
    args = parse_args()
    if args.check_world_size is not None:
        # tools/dist_train.sh's check before it starts the processes: the config and
        # the info pickle only (no plugin import, about a second)
        if args.check_world_size < 1:
            fail(f'the number of processes must be at least 1, got {args.check_world_size}')
        check_world_size(load_config(args.config, args.cfg_options, False),
                         args.check_world_size)
        return
    check_launcher(args.launcher)
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = default_work_dir(cfg, args.config, args.work_dir)
    print(f'work dir: {osp.abspath(cfg.work_dir)}', flush=True)

    if args.amp:
        enable_amp(cfg)
    else:
        check_amp_device(cfg)
    setup_distributed(cfg, args.launcher)
    pin_memory_only_with_cuda(cfg)

    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
        from mmengine.runner.checkpoint import find_latest_checkpoint
        if not osp.isdir(cfg.work_dir) or find_latest_checkpoint(cfg.work_dir) is None:
            print(f'warning: --resume: no checkpoint in the work dir {cfg.work_dir}; '
                  'training starts from scratch', file=sys.stderr, flush=True)
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            fail(f'checkpoint to resume from not found: {args.resume}')
        cfg.resume, cfg.load_from = True, args.resume

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if runner.distributed:   # torchrun without dist_train.sh's check
        check_world_size(cfg, runner.world_size)

    def check(name: str, checkpoint) -> None:
        if cfg.get('resume'):
            require_resumable(checkpoint, name)
            require_fit(runner.model, checkpoint, name)
        else:
            note = starting_weights_note(runner.model, checkpoint, name)
            if note:
                runner.logger.info(note)

    # the named checkpoints: load_from (e.g. the 2D stage) and the run's own (resume)
    with checkpoint_loading(files=[cfg.get('load_from')],
                            folders=[cfg.work_dir] if cfg.get('resume') else [],
                            trust=args.trust_checkpoint, check=check):
        runner.train()
    end_distributed()


if __name__ == '__main__':
    run_main(main)

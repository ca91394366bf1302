"""Benchmark a model config: one training step and one N-view inference pass on
synthetic studies at the config's acquisition.

    python tools/benchmark_model.py CONFIG [--views N] [--size S] [--amp] [--with-cp]
        [--device cpu|cuda] [--repeats K] [--warmup W] [--threads T] [--json OUT]
        [--cfg-options k=v ...]

What it measures, each in a fresh process (so peaks do not mix):

* ``train``: ``model.train_step`` -- data preprocessing, forward, losses, backward and
  the optimiser step of the config's ``optim_wrapper`` (``--amp``: the plugin's
  ``XrayAmpOptimWrapper``, as ``tools/train.py --amp``) -- on one study of ``N`` views;
* ``infer``: ``model.test_step`` (eval mode, no gradients; bf16/fp16 autocast with
  ``--amp``) on one study: the latency per study;
* ``data`` (when the config's training info pickle exists): seconds per batch of the
  config's training pipeline read in the main process (``num_workers=0``).

Each is run ``--warmup`` times untimed, then ``--repeats`` times; the JSON holds every
time, the minimum and the median (the printed figure). Memory: on CUDA
``torch.cuda.max_memory_allocated`` after the warm-up (tensors only; the caching
allocator reserves more); on the CPU the peak resident set size of the worker process
(``ru_maxrss``: the whole process -- Python, torch, mmdet3d, the model, activations,
the allocator's slack), with ``*_baseline_mem_gb``, the RSS after the imports and the
synthetic batch, before the model is built, to subtract.

The synthetic study: ``N`` views of ``S x S`` px (default: the config's
``num_views`` and ``image_size``) from ``XrayGeometry`` at the config's ``sod_mm``
(the default 800 mm detector and sdd 600 mm), noise with three bright 3D boxes of
12-30 mm within 60 mm of the isocentre, their 2D boxes projected with the view matrices.
The weights are the config's initialisation (no checkpoint): the untrained 2D stage
gives up to ``detection_proposal.max_per_img`` detections per view, as a trained one
on a busy image does.
"""
import argparse
import json
import os
import os.path as osp
import platform
import resource
import subprocess
import sys
import time

from _common import add_debug_flag, fail, load_config, run_main  # noqa: E402

#: What a worker prints before its JSON result (one line).
RESULT_MARK = 'BENCHMARK_RESULT '


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Time per training step, inference latency per study, peak memory '
                    'and parameter count of a model config on synthetic studies.')
    parser.add_argument('config', help='model config, e.g. configs/mv2d_xray/...py')
    parser.add_argument('--views', type=int, help='views per study (default: the config\'s '
                        'num_views; at least 2)')
    parser.add_argument('--size', type=int, help='square image size in px (default: the '
                        'config\'s image_size)')
    parser.add_argument('--amp', action='store_true', help='mixed precision as tools/train.py '
                        '--amp (fp16 on CUDA, bf16 on the CPU)')
    parser.add_argument('--with-cp', action='store_true', help='gradient checkpointing in '
                        'the backbone (model.base_detector.backbone.with_cp=True)')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default=None,
                        help='default: cuda when available, else cpu')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs (default: 3)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs first (default: 1)')
    parser.add_argument('--threads', type=int, help='CPU threads of torch in the workers '
                        '(default: torch\'s, one per core; 1 gives steadier CPU timings on a '
                        'machine shared with other jobs)')
    parser.add_argument('--json', help='write the results to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--worker', choices=['train', 'infer', 'data'], help=argparse.SUPPRESS)
    add_debug_flag(parser)
    return parser.parse_args(argv)


# -- the synthetic study -------------------------------------------------------------------
def acquisition(cfg, views, size):
    """``XrayGeometry`` of the config's acquisition (``train_dataloader.dataset``:
    ``num_views``, ``sod_mm``, ``image_size``), with ``views`` / ``size`` if given."""
    from projects.mv2d_xray.core.geometry import XrayGeometry
    dataset = cfg.get('train_dataloader', dict()).get('dataset', dict())
    num_views = views or int(dataset.get('num_views', 10))
    image_size = (size, size) if size else tuple(dataset.get('image_size', (1024, 1024)))
    return XrayGeometry(num_views=num_views, sod_mm=float(dataset.get('sod_mm', 300.0)),
                        image_size=image_size)


def synthetic_study(geometry, seed: int = 0) -> dict:
    """One study in the data loader's format (``inputs.img`` a list with one
    ``(V, 3, H, W)`` float tensor 0..255, ``data_samples`` a list with one
    ``Det3DDataSample``: ``lidar2img`` / ``cam2img`` ``(V, 4, 4)``, 3D GT boxes in ct mm
    and their per-view 2D boxes in px)."""
    import numpy as np
    import torch
    from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
    from mmengine.structures import InstanceData

    from projects.mv2d_xray.core.geometry import project_boxes3d
    rng = np.random.default_rng(seed)
    num_views, (height, width) = geometry.num_views, geometry.image_size
    mats = geometry.view_matrices()
    boxes3d = np.concatenate([rng.uniform(-60, 60, (3, 3)), rng.uniform(12, 30, (3, 3)),
                              np.zeros((3, 1))], axis=1)
    img = rng.uniform(0, 60, (num_views, 3, height, width)).astype(np.float32)
    bboxes, view_ids = [], []
    for view, boxes in enumerate(project_boxes3d(mats['lidar2img'], boxes3d)):
        for box in boxes:
            x1, y1, x2, y2 = np.clip(box, 0, [width, height, width, height])
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            img[view, :, int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] += 150
            bboxes.append([x1, y1, x2, y2])
            view_ids.append(view)
    sample = Det3DDataSample(metainfo=dict(
        token='synthetic', sample_idx=0, num_views=num_views, lidar2img=mats['lidar2img'],
        cam2img=mats['cam2img'], lidar2cam=mats['lidar2cam'], img_shape=(height, width),
        ori_shape=(height, width), box_type_3d=LiDARInstance3DBoxes))
    sample.gt_instances_3d = InstanceData(
        bboxes_3d=LiDARInstance3DBoxes(torch.as_tensor(boxes3d, dtype=torch.float32),
                                       origin=(0.5, 0.5, 0.5)),
        labels_3d=torch.zeros(len(boxes3d), dtype=torch.long))
    sample.gt_instances = InstanceData(
        bboxes=torch.as_tensor(np.array(bboxes, np.float32).reshape(-1, 4)),
        labels=torch.zeros(len(bboxes), dtype=torch.long),
        view_ids=torch.as_tensor(view_ids, dtype=torch.long))
    sample.ignored_instances = InstanceData(
        bboxes=torch.zeros((0, 4)), labels=torch.zeros((0, ), dtype=torch.long),
        view_ids=torch.zeros((0, ), dtype=torch.long))
    return dict(inputs=dict(img=[torch.from_numpy(img)]), data_samples=[sample])


# -- the worker ----------------------------------------------------------------------------
def rss_gb() -> float:
    """Peak resident set size of this process so far, GB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def timed(step, device: str, warmup: int, repeats: int):
    """``(seconds of each timed call, peak CUDA bytes or None)``; CUDA is synchronised
    around each call and its peak counter reset after the warm-up."""
    import torch
    for _ in range(warmup):
        step()
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times, (torch.cuda.max_memory_allocated() if device == 'cuda' else None)


def worker(args) -> dict:
    """Run one measurement (``args.worker``) in this process; the result as a dict."""
    import copy

    import torch
    from mmengine.registry import init_default_scope
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet3d'))
    result = dict(threads=torch.get_num_threads())
    if args.worker == 'data':
        from mmengine.runner import Runner
        loader_cfg = copy.deepcopy(cfg.train_dataloader)
        loader_cfg.update(num_workers=0, persistent_workers=False)
        loader = Runner.build_dataloader(loader_cfg)
        batches = iter(loader)
        times, _ = timed(lambda: next(batches), 'cpu', min(args.warmup, 1),
                         min(args.repeats, len(loader) - 1))
        return dict(data_times_s=times, threads=result['threads'])
    if args.with_cp:
        cfg.model.base_detector.backbone.with_cp = True
    geometry = acquisition(cfg, args.views, args.size)
    batch = synthetic_study(geometry)
    result['baseline_mem_gb'] = rss_gb()
    from mmdet3d.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.to(args.device)
    result['params'] = sum(p.numel() for p in model.parameters())
    result['trainable_params'] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if args.worker == 'train':
        from mmengine.optim import build_optim_wrapper
        if args.amp:
            from _common import enable_amp
            enable_amp(cfg)
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        model.train()

        def step():
            model.train_step(copy.deepcopy(batch), optim_wrapper)
    else:
        from mmengine.runner.amp import autocast
        model.eval()

        def step():
            with torch.no_grad(), autocast(device_type=args.device, enabled=args.amp):
                model.test_step(copy.deepcopy(batch))
    times, cuda_peak = timed(step, args.device, args.warmup, args.repeats)
    result.update(times_s=times,
                  peak_mem_gb=cuda_peak / 2 ** 30 if cuda_peak is not None else rss_gb())
    if args.device != 'cpu':
        result.pop('baseline_mem_gb')   # the RSS is not what a GPU's peak is about
    return result


def run_worker(argv, kind: str) -> dict:
    """This script as a fresh process measuring ``kind``; its result."""
    env = dict(os.environ)
    out = subprocess.run([sys.executable, osp.abspath(__file__), *argv, '--worker', kind],
                         capture_output=True, text=True, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if out.returncode != 0 or not lines:
        last = (out.stderr.strip().splitlines() or ['no output'])[-1]
        fail(f'the {kind} measurement failed (exit {out.returncode}): '
             f'{last.removeprefix("error: ")}')
    return json.loads(lines[-1][len(RESULT_MARK):])


def worker_argv(argv):
    """The command line for a worker: this one without ``--json``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == '--json':
            skip = True
        elif not arg.startswith('--json='):
            out.append(arg)
    return out


def check_args(args) -> None:
    """One line for input the benchmark cannot use."""
    import torch
    if not osp.isfile(args.config):
        fail(f'config file not found: {args.config}')
    if args.views is not None and args.views < 2:
        fail(f'--views must be at least 2 (a study needs two views), got {args.views}')
    if args.size is not None and args.size <= 0:
        fail(f'--size must be a positive number of pixels, got {args.size}')
    if args.threads is not None and args.threads < 1:
        fail(f'--threads must be at least 1, got {args.threads}')
    if args.repeats < 1 or args.warmup < 0:
        fail(f'--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and '
             f'{args.warmup}')
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device == 'cuda' and not torch.cuda.is_available():
        fail('--device cuda: no CUDA device here (torch.cuda.is_available() is False); '
             'use --device cpu')
    if args.amp and args.device == 'cpu':
        from projects.mv2d_xray.mv2d_xray.engine.amp_optim_wrapper import cpu_bf16_supported
        if not cpu_bf16_supported():
            fail('--amp on the CPU needs bf16 kernels, which this CPU / PyTorch build '
                 'lacks; run without --amp')
    if args.json and osp.isdir(args.json):
        fail(f'--json {args.json} is a folder; give a file name')


def summary(times) -> dict:
    import numpy as np
    return dict(median=float(np.median(times)), min=float(np.min(times)))


def main():
    args = parse_args()
    if args.worker:
        print(RESULT_MARK + json.dumps(worker(args)), flush=True)
        return
    check_args(args)
    cfg = load_config(args.config, args.cfg_options)
    geometry = acquisition(cfg, args.views, args.size)
    import torch
    argv = worker_argv(sys.argv[1:]) + ['--device', args.device]
    train = run_worker(argv, 'train')
    infer = run_worker(argv, 'infer')
    from _common import count_cases
    data = run_worker(argv, 'data') if count_cases(cfg, 'train') else None
    result = dict(
        config=args.config, device=args.device, amp=args.amp,
        amp_dtype=(None if not args.amp else 'bfloat16' if args.device == 'cpu'
                   else str(cfg.optim_wrapper.get('dtype', None) or 'float16')),
        with_cp=args.with_cp, views=geometry.num_views, image_size=list(geometry.image_size),
        sod_mm=geometry.sod_mm, params=train['params'],
        trainable_params=train['trainable_params'],
        train_step_s=summary(train['times_s'])['median'],
        train_step_min_s=summary(train['times_s'])['min'], train_step_all_s=train['times_s'],
        train_peak_mem_gb=train['peak_mem_gb'],
        infer_latency_s=summary(infer['times_s'])['median'],
        infer_latency_min_s=summary(infer['times_s'])['min'],
        infer_latency_all_s=infer['times_s'], infer_peak_mem_gb=infer['peak_mem_gb'],
        data_time_s=(summary(data['data_times_s'])['median']
                     if data and data['data_times_s'] else None),
        memory=('CUDA max_memory_allocated' if args.device == 'cuda' else
                'peak RSS (ru_maxrss) of a fresh worker process'),
        repeats=args.repeats, warmup=args.warmup,
        machine=dict(platform=platform.platform(), processor=platform.processor(),
                     cpus=os.cpu_count(), torch=torch.__version__,
                     torch_threads=train['threads'],
                     gpu=torch.cuda.get_device_name() if args.device == 'cuda' else None),
        date=time.strftime('%Y-%m-%d %H:%M:%S'))
    if args.device == 'cpu':
        result['train_baseline_mem_gb'] = train['baseline_mem_gb']
        result['infer_baseline_mem_gb'] = infer['baseline_mem_gb']
    mem = 'CUDA peak' if args.device == 'cuda' else 'peak RSS'
    print(f'{args.config}: {geometry.num_views} views of {geometry.image_size[0]}x'
          f'{geometry.image_size[1]} px, {args.device}, amp={args.amp}, '
          f'with_cp={args.with_cp}, {result["params"] / 1e6:.2f} M parameters')
    print(f'  train step   {result["train_step_s"]:.3f} s (min {result["train_step_min_s"]:.3f}'
          f' s), {mem} {result["train_peak_mem_gb"]:.2f} GB')
    print(f'  inference    {result["infer_latency_s"]:.3f} s per study (min '
          f'{result["infer_latency_min_s"]:.3f} s), {mem} {result["infer_peak_mem_gb"]:.2f} GB')
    if args.device == 'cpu':
        print(f'  (RSS after imports and data, before the model: '
              f'{result["train_baseline_mem_gb"]:.2f} GB)')
    if result['data_time_s'] is not None:
        print(f'  data         {result["data_time_s"]:.3f} s per batch (main process)')
    if args.json:
        from projects.mv2d_xray.core.io import write_json
        try:
            write_json(args.json, result)
        except OSError as exc:
            fail(f'cannot write {args.json}: {exc}')
        print(f'results written to {args.json}')


if __name__ == '__main__':
    run_main(main)

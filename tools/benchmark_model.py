"""Benchmark a model config: one training step, one N-view inference pass and the data
time per batch, on synthetic studies at the config's acquisition.

    python tools/benchmark_model.py CONFIG [--views N] [--size S] [--amp] [--with-cp]
        [--device cpu|cuda] [--repeats K] [--warmup W] [--threads T] [--data-only]
        [--json OUT] [--cfg-options k=v ...]

What it measures, each in a fresh process (so peaks do not mix):

* ``train``: ``model.train_step`` -- data preprocessing, forward, losses, backward and
  the optimiser step of the config's ``optim_wrapper`` (``--amp``: the plugin's
  ``XrayAmpOptimWrapper``, as ``tools/train.py --amp``) -- on one study of ``N`` views;
* ``infer``: ``model.test_step`` (eval mode, no gradients; bf16/fp16 autocast with
  ``--amp``) on one study: the latency per study;
* ``data``: seconds per batch drawn from the config's training dataloader (its
  pipeline, workers, persistent workers) -- on the config's training data when they
  exist at the measured acquisition, else on the synthetic study written as a
  converted dataset (16-bit PNGs, info pickle) to a temporary folder; ``data_source``
  says which (:func:`time_data`). ``--data-only`` measures only this.

Each is run ``--warmup`` times untimed, then ``--repeats`` times (the data: rounds of
batches); the JSON holds every time, the minimum and the median (the printed figure).
Memory: on CUDA ``torch.cuda.max_memory_allocated`` after the warm-up (tensors only),
with ``*_reserved_mem_gb``, ``torch.cuda.max_memory_reserved`` (what the caching
allocator held, closer to what ``nvidia-smi`` shows); on the CPU the peak resident set size of the worker process
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
    parser.add_argument('--threads', type=int, help='CPU threads of torch (and of OpenCV '
                        'for the data) in the workers (default: theirs, one per core; 1 '
                        'gives steadier CPU timings on a machine shared with other jobs)')
    parser.add_argument('--data-only', action='store_true', help='measure only the data '
                        'time per batch of the config\'s training dataloader (no model)')
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


def synthetic_case(geometry, seed: int = 0):
    """The synthetic study's views and findings.

    Returns:
        tuple: ``(grey, boxes3d, boxes2d)``: ``grey`` float32 ``(V, H, W)`` on the 0..255
        scale (uniform noise 0..60, +150 inside each finding's projected box);
        ``boxes3d`` ``(3, 7)`` ct mm (centres within 60 mm of the isocentre, sizes
        12-30 mm, yaw 0); ``boxes2d`` per finding, per view ``[x1, y1, x2, y2]`` px
        clipped to the image, or None where less than a pixel is left.
    """
    import numpy as np

    from projects.mv2d_xray.core.geometry import project_boxes3d
    rng = np.random.default_rng(seed)
    num_views, (height, width) = geometry.num_views, geometry.image_size
    boxes3d = np.concatenate([rng.uniform(-60, 60, (3, 3)), rng.uniform(12, 30, (3, 3)),
                              np.zeros((3, 1))], axis=1)
    grey = rng.uniform(0, 60, (num_views, height, width)).astype(np.float32)
    boxes2d = [[None] * num_views for _ in boxes3d]
    lidar2img = geometry.view_matrices()['lidar2img']
    for view, boxes in enumerate(project_boxes3d(lidar2img, boxes3d)):
        for finding, box in enumerate(boxes):
            x1, y1, x2, y2 = np.clip(box, 0, [width, height, width, height])
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            grey[view, int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] += 150
            boxes2d[finding][view] = [float(x1), float(y1), float(x2), float(y2)]
    return grey, boxes3d, boxes2d


def synthetic_study(geometry, seed: int = 0) -> dict:
    """One study (:func:`synthetic_case`) in the data loader's format (``inputs.img`` a
    list with one ``(V, 3, H, W)`` float tensor 0..255, ``data_samples`` a list with one
    ``Det3DDataSample``: ``lidar2img`` / ``cam2img`` ``(V, 4, 4)``, 3D GT boxes in ct mm
    and their per-view 2D boxes in px, view by view)."""
    import numpy as np
    import torch
    from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
    from mmengine.structures import InstanceData
    grey, boxes3d, boxes2d = synthetic_case(geometry, seed)
    num_views, (height, width) = geometry.num_views, geometry.image_size
    mats = geometry.view_matrices()
    img = np.repeat(grey[:, None], 3, axis=1)
    found = [(view, box[view]) for view in range(num_views) for box in boxes2d
             if box[view] is not None]
    sample = Det3DDataSample(metainfo=dict(
        token='synthetic', sample_idx=0, num_views=num_views, lidar2img=mats['lidar2img'],
        cam2img=mats['cam2img'], lidar2cam=mats['lidar2cam'], img_shape=(height, width),
        ori_shape=(height, width), box_type_3d=LiDARInstance3DBoxes))
    sample.gt_instances_3d = InstanceData(
        bboxes_3d=LiDARInstance3DBoxes(torch.as_tensor(boxes3d, dtype=torch.float32),
                                       origin=(0.5, 0.5, 0.5)),
        labels_3d=torch.zeros(len(boxes3d), dtype=torch.long))
    sample.gt_instances = InstanceData(
        bboxes=torch.as_tensor(np.array([box for _, box in found], np.float32).reshape(-1, 4)),
        labels=torch.zeros(len(found), dtype=torch.long),
        view_ids=torch.as_tensor([view for view, _ in found], dtype=torch.long))
    sample.ignored_instances = InstanceData(
        bboxes=torch.zeros((0, 4)), labels=torch.zeros((0, ), dtype=torch.long),
        view_ids=torch.zeros((0, ), dtype=torch.long))
    return dict(inputs=dict(img=[torch.from_numpy(img)]), data_samples=[sample])


#: The synthetic dataset's info pickle, in the folder :func:`write_synthetic_dataset` fills.
SYNTHETIC_ANN_FILE = 'synthetic_infos_train.pkl'


def write_synthetic_dataset(root: str, geometry, classes, num_cases: int) -> str:
    """The synthetic study (:func:`synthetic_case`) as a converted dataset in ``root``,
    written as the converter writes one (README "Data format"): one 16-bit PNG per view
    (``grey / 255`` of the range, what ``LoadXrayMultiViewImages`` reads back to the
    grey) and the info pickle :data:`SYNTHETIC_ANN_FILE` of ``num_cases`` cases that all
    show those views; the findings have label 0 of ``classes``. Returns the pickle's
    path."""
    import numpy as np

    from data_converters.cases import image_path
    from data_converters.image_encoding import to_uint16
    from data_converters.storage import canonical_pickle, write_png
    from projects.mv2d_xray.core.data_format import build_case_info, build_metainfo
    from projects.mv2d_xray.core.io import atomic_write
    grey, boxes3d, boxes2d = synthetic_case(geometry)
    paths = [image_path('synthetic', name) for name in geometry.view_names]
    for path, view in zip(paths, grey):
        write_png(osp.join(root, path), to_uint16(view, 255.0))
    instances = [dict(bbox_3d=[float(v) for v in box], bbox_label_3d=0, ignore_flag=0,
                      diameter_mm=float(np.mean(box[3:6]))) for box in boxes3d]
    ct_meta = dict(shape=[240, 240, 240], spacing_mm=[1.0, 1.0, 1.0], series_uid='synthetic')
    data_list = []
    for idx in range(num_cases):
        token = f'synthetic-{idx:04d}'
        data_list.append(dict(build_case_info(token, token, 'synthetic', ct_meta, geometry,
                                              paths, instances, boxes2d), sample_idx=idx))
    metainfo = build_metainfo(geometry, dict(source='tools/benchmark_model.py'), classes)
    path = osp.join(root, SYNTHETIC_ANN_FILE)
    atomic_write(path, canonical_pickle(dict(metainfo=metainfo, data_list=data_list)))
    return path


# -- the worker ----------------------------------------------------------------------------
def rss_gb() -> float:
    """Peak resident set size of this process so far, GB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def timed(step, device: str, warmup: int, repeats: int):
    """``(seconds of each timed call, peak CUDA bytes allocated or None, peak CUDA bytes
    reserved by the caching allocator or None)``; CUDA is synchronised around each call
    and its peak counters reset after the warm-up."""
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
    if device != 'cuda':
        return times, None, None
    return times, torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()


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
        if args.threads:
            import cv2
            cv2.setNumThreads(args.threads)
        return dict(time_data(cfg, args), **result)
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
    times, cuda_peak, cuda_reserved = timed(step, args.device, args.warmup, args.repeats)
    result.update(times_s=times,
                  peak_mem_gb=cuda_peak / 2 ** 30 if cuda_peak is not None else rss_gb())
    if args.device != 'cpu':
        result.pop('baseline_mem_gb')   # the RSS is not what a GPU's peak is about
        result['reserved_mem_gb'] = cuda_reserved / 2 ** 30
    return result


def real_train_data(cfg, views, size):
    """The config's training info pickle when it holds cases and the measurement is at
    the config's acquisition (``views`` / ``size`` None or the config's), else None."""
    from _common import count_cases
    found = count_cases(cfg, 'train')
    dataset = cfg.train_dataloader.dataset
    same = views in (None, dataset.get('num_views')) and \
        (size is None or [size, size] == list(dataset.get('image_size', ())))
    return found[0] if found and found[1] and same else None


def endless(loader):
    """The loader's batches, epoch after epoch (a real training split may be short)."""
    while True:
        yield from loader


def time_data(cfg, args) -> dict:
    """Seconds per batch drawn from the config's training dataloader.

    The loader is the config's ``train_dataloader`` (its pipeline, ``num_workers``,
    ``persistent_workers``, ``prefetch_factor``; ``pin_memory`` only with CUDA, as
    ``tools/train.py`` runs it) on the config's training data when they exist at the
    measured acquisition (:func:`real_train_data`), else on a synthetic dataset written
    to a temporary folder (:func:`write_synthetic_dataset`, at ``--views`` x ``--size``;
    the dataset's acquisition and the pipeline's ``img_scale`` follow them). After
    ``max(--warmup, 1)`` untimed batches (which start the workers), each of ``--repeats``
    rounds draws ``W x prefetch_factor`` batches back to back (one without workers) and
    gives the mean time per batch: with the workers' queue refilled within a round, what
    a training loop whose step took no time would wait per step (with W workers on W free
    cores about the pipeline's time per study / W; a step longer than that waits ~0).

    Returns:
        dict: ``data_times_s`` (per round), ``data_source`` ('real' or 'synthetic'),
        ``data_ann_file`` (the real pickle, or None), ``data_workers``,
        ``data_batches_per_round``, ``data_pin_memory``.
    """
    import copy
    import gc
    import tempfile

    from _common import pin_memory_only_with_cuda
    from mmengine.runner import Runner
    pin_memory_only_with_cuda(cfg)
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    workers = int(loader_cfg.get('num_workers', 0))
    per_round = workers * (loader_cfg.get('prefetch_factor', None) or 2) if workers else 1
    warmup = max(args.warmup, 1)
    real = real_train_data(cfg, args.views, args.size)
    with tempfile.TemporaryDirectory(prefix='mv2d-benchmark-data-') as tmp:
        if real is None:
            geometry = acquisition(cfg, args.views, args.size)
            dataset = loader_cfg.dataset
            classes = (dataset.get('metainfo', None) or {}).get('classes', None) or \
                ['synthetic']
            write_synthetic_dataset(tmp, geometry, classes, warmup + args.repeats * per_round)
            dataset.update(data_root=tmp, ann_file=SYNTHETIC_ANN_FILE,
                           num_views=geometry.num_views, image_size=list(geometry.image_size))
            for transform in dataset.pipeline:
                if 'img_scale' in transform:
                    transform['img_scale'] = tuple(geometry.image_size)
        batches = endless(Runner.build_dataloader(loader_cfg))
        for _ in range(warmup):
            next(batches)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(per_round):
                next(batches)
            times.append((time.perf_counter() - start) / per_round)
        batches.close()         # stop the workers before their files go
        del batches
        gc.collect()
    return dict(data_times_s=times, data_source='synthetic' if real is None else 'real',
                data_ann_file=real, data_workers=workers, data_batches_per_round=per_round,
                data_pin_memory=bool(loader_cfg.get('pin_memory', False)))


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
    if args.data_only and (args.amp or args.with_cp):
        fail('--data-only measures the data loading only: --amp and --with-cp do not '
             'apply to it')
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
    result = dict(
        config=args.config, device=args.device, data_only=args.data_only, amp=args.amp,
        amp_dtype=(None if not args.amp else 'bfloat16' if args.device == 'cpu'
                   else str(cfg.optim_wrapper.get('dtype', None) or 'float16')),
        with_cp=args.with_cp, views=geometry.num_views, image_size=list(geometry.image_size),
        sod_mm=geometry.sod_mm, cfg_options=dict(args.cfg_options or {}))
    if not args.data_only:
        train = run_worker(argv, 'train')
        infer = run_worker(argv, 'infer')
        result.update(
            params=train['params'], trainable_params=train['trainable_params'],
            train_step_s=summary(train['times_s'])['median'],
            train_step_min_s=summary(train['times_s'])['min'],
            train_step_all_s=train['times_s'], train_peak_mem_gb=train['peak_mem_gb'],
            infer_latency_s=summary(infer['times_s'])['median'],
            infer_latency_min_s=summary(infer['times_s'])['min'],
            infer_latency_all_s=infer['times_s'], infer_peak_mem_gb=infer['peak_mem_gb'],
            memory=('CUDA max_memory_allocated' if args.device == 'cuda' else
                    'peak RSS (ru_maxrss) of a fresh worker process'))
        if args.device == 'cpu':
            result['train_baseline_mem_gb'] = train['baseline_mem_gb']
            result['infer_baseline_mem_gb'] = infer['baseline_mem_gb']
        else:   # what the caching allocator held: closer to what nvidia-smi shows
            result['train_reserved_mem_gb'] = train['reserved_mem_gb']
            result['infer_reserved_mem_gb'] = infer['reserved_mem_gb']
    data = run_worker(argv, 'data')
    result.update(
        data_time_s=summary(data['data_times_s'])['median'],
        data_time_min_s=summary(data['data_times_s'])['min'],
        data_time_all_s=data['data_times_s'],
        **{key: data[key] for key in ('data_source', 'data_ann_file', 'data_workers',
                                      'data_batches_per_round', 'data_pin_memory')},
        repeats=args.repeats, warmup=args.warmup,
        machine=dict(platform=platform.platform(), processor=platform.processor(),
                     cpus=os.cpu_count(), torch=torch.__version__,
                     torch_threads=data['threads'],
                     gpu=torch.cuda.get_device_name() if args.device == 'cuda' else None),
        date=time.strftime('%Y-%m-%d %H:%M:%S'))
    print(f'{args.config}: {geometry.num_views} views of {geometry.image_size[0]}x'
          f'{geometry.image_size[1]} px, {args.device}'
          + ('' if args.data_only else f', amp={args.amp}, with_cp={args.with_cp}, '
             f'{result["params"] / 1e6:.2f} M parameters'))
    if not args.data_only:
        mem = 'CUDA peak' if args.device == 'cuda' else 'peak RSS'
        print(f'  train step   {result["train_step_s"]:.3f} s (min '
              f'{result["train_step_min_s"]:.3f} s), {mem} {result["train_peak_mem_gb"]:.2f} GB')
        print(f'  inference    {result["infer_latency_s"]:.3f} s per study (min '
              f'{result["infer_latency_min_s"]:.3f} s), {mem} '
              f'{result["infer_peak_mem_gb"]:.2f} GB')
        if args.device == 'cpu':
            print(f'  (RSS after imports and data, before the model: '
                  f'{result["train_baseline_mem_gb"]:.2f} GB)')
        else:
            print(f'  (reserved by the caching allocator: train '
                  f'{result["train_reserved_mem_gb"]:.2f} GB, inference '
                  f'{result["infer_reserved_mem_gb"]:.2f} GB)')
    where = data['data_ann_file'] or 'a synthetic dataset'
    print(f'  data         {result["data_time_s"]:.3f} s per batch (min '
          f'{result["data_time_min_s"]:.3f} s), {data["data_workers"]} workers, on {where}')
    if args.json:
        from projects.mv2d_xray.core.io import write_json
        try:
            write_json(args.json, result)
        except OSError as exc:
            fail(f'cannot write {args.json}: {exc}')
        print(f'results written to {args.json}')


if __name__ == '__main__':
    run_main(main)

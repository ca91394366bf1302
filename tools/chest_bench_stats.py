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

``--detectability SPLIT``: how visible each finding of a split is in each view, to linear
observers that know the finding's projection and where it is -- a non-whitening matched
filter (:func:`matched_filter_snr`) and a whitening one (:func:`whitened_snr`) -- against
the view's anatomy and photon noise, and against the photon noise alone -- each
synthetic case regenerated from the build's recorded settings and checked against its
PNGs; with ``--dets2d`` (COCO-results detections, as
``tools/test.py`` / the benchmark write them) also how often the 2D stage detects a
finding in a view, by that SNR.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Optional

import numpy as np

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..')))

from _common import add_debug_flag, fail, run_main  # noqa: E402

from data_converters.arguments import positive_float  # noqa: E402
from data_converters.image_encoding import MAX_VALUE_16  # noqa: E402
from data_converters.sources.chest_bench import SIZE_BANDS_MM  # noqa: E402


def recorded_prefix(root: str) -> str:
    """The split files' prefix the folder's conversion recorded (``chest_bench`` if it
    recorded none)."""
    from data_converters.storage import CaseStore
    settings = CaseStore(root).read_settings() or {}
    return settings.get('split', {}).get('prefix', 'chest_bench')


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
    from projects.mv2d_xray.mv2d_xray.datasets.transforms.contrast import high_pass
    store = CaseStore(root)
    source = ChestBenchSource.from_settings(store.read_settings(), store.settings_path())
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
#: ``--detectability``'s SNR bins, and the whitening observer's SNR a view must reach to
#: count as showing a finding in the per-finding table.
SNR_BINS = (0.0, 1.0, 2.0, 3.0, 5.0, np.inf)
SHOWN_SNR = 3.0


def detectability_bands() -> tuple:
    """``(name, low, high)`` mm: the source's size bands (``low <= d < high``), the issue's
    ``>=6mm`` and ``all``."""
    bands = tuple((f'{lo:g}-{hi:g}mm', lo, hi) for lo, hi in SIZE_BANDS_MM)
    return bands + (('>=6mm', 6.0, np.inf), ('all', 0.0, np.inf))


def around_peak(signal: np.ndarray, half_px: int, window_px: int) -> tuple:
    """Where the observers look: the signal's peak ``(py, px)`` and the slices of the
    ``(2 half_px + 1)^2`` px template and of the ``(2 window_px + 1)^2`` px background
    window around it, each cut at the image's edges."""
    py, px = np.unravel_index(np.argmax(signal), signal.shape)

    def box(half):
        return (slice(max(py - half, 0), py + half + 1), slice(max(px - half, 0), px + half + 1))

    return (py, px), box(half_px), box(window_px)


def matched_filter_snr(signal: np.ndarray, background: np.ndarray,
                       prefilters=SNR_PREFILTERS_PX, half_px: int = 7,
                       window_px: int = 48) -> float:
    """The SNR of a matched filter that knows a signal and where it is.

    The template is the (pre-filtered) signal in the ``(2 half_px + 1)^2`` px around its
    peak; its response to the signal is ``sum(t^2)``; its responses to the background are
    its correlations with the (pre-filtered) background at the positions where it fits
    inside the ``(2 window_px + 1)^2`` px around the peak (local statistics: anatomy is
    not stationary over a view); ``SNR = sum(t^2) / std(responses)``. The best of the
    ``prefilters`` is kept. An estimate of a non-whitening observer's SNR, not a bound:
    an ideal linear observer would also whiten the background (higher), while picking the
    best pre-filter on the same background sample the spread is measured on, whose
    positions are strongly correlated, leans high.

    Args:
        signal (np.ndarray): ``(H, W)`` the finding's own noiseless projection (any unit,
            e.g. mm of water; ``img`` frame), >= 0.
        background (np.ndarray): ``(H, W)`` the view without the finding, same unit.
        prefilters: as :data:`SNR_PREFILTERS_PX`.
        half_px, window_px (int): the template's and the background window's half sides.

    Returns:
        float: the SNR; 0 for an all-zero signal.

    Raises:
        ValueError: a background without any spread in the window (no SNR is defined).
    """
    from scipy.ndimage import gaussian_filter
    from scipy.signal import fftconvolve
    signal = np.asarray(signal, np.float64)
    background = np.asarray(background, np.float64)
    if signal.max() <= 0:
        return 0.0
    # work on the window and a margin that keeps the widest blur exact there
    margin = window_px + int(np.ceil(4 * max([s for s in prefilters if s] or [0])))
    _, _, crop = around_peak(signal, half_px, margin)
    signal, background = signal[crop], background[crop]
    _, near, window = around_peak(signal, half_px, window_px)
    best, spread_seen = 0.0, False
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
            spread_seen = True
            best = max(best, float((template ** 2).sum()) / spread)
    if not spread_seen:
        raise ValueError('matched_filter_snr: the background has no spread in the window')
    return best


def window_halves(window: np.ndarray, patch_shape) -> tuple:
    """The ``patch_shape`` patches of ``window`` in its upper and its lower half of rows,
    each ``(n, h * w)``: rows ``0 .. H // 2 - 1`` and ``H // 2 .. H - 1``, a patch counted
    in a half only when it lies wholly inside it (those straddling the middle are left
    out), so no pixel is in patches of both."""
    from numpy.lib.stride_tricks import sliding_window_view
    patches = sliding_window_view(window, patch_shape)         # (rows, cols, h, w)
    middle, size = window.shape[0] // 2, int(np.prod(patch_shape))
    return (patches[:max(middle - patch_shape[0] + 1, 0)].reshape(-1, size),
            patches[middle:].reshape(-1, size))


def whitened_snr(signal: np.ndarray, background: np.ndarray, half_px: int = 7,
                 window_px: int = 48, min_patches: int = 50) -> float:
    """The SNR of a whitening (Hotelling) observer that knows a signal and where it is.

    The template ``t`` is the signal in the ``(2 half_px + 1)^2`` px around its peak. The
    covariance ``K`` of the background's patches of that size is estimated (Ledoit-Wolf
    shrinkage, scikit-learn) from the patches of one half of the ``(2 window_px + 1)^2``
    px around the peak -- its upper or its lower rows, leaving out the patches that
    straddle the two -- and the observer ``w = K^-1 t`` is measured on the other half:
    ``SNR = w.t / std(w.x)`` over its patches; both ways, the mean. Fitting and measuring
    on different patches keeps the estimate honest: in-sample, whitening would also fit
    the sample's own fluctuations and flatter itself. Linear and told where to look, like
    :func:`matched_filter_snr`, but it discounts the background's correlated structure
    (e.g. a rib's edge) as far as the window's statistics allow.

    Args:
        signal (np.ndarray): ``(H, W)`` the finding's own noiseless projection, >= 0.
        background (np.ndarray): ``(H, W)`` the view without the finding, same unit.
        half_px, window_px (int): the template's and the window's half sides.
        min_patches (int): the fewest patches a half may hold.

    Returns:
        float: the SNR; 0 for an all-zero signal.

    Raises:
        ValueError: a window or an image too small to split (with the defaults, images
            under ~30 px), or a background without spread.
    """
    from sklearn.covariance import ledoit_wolf
    signal = np.asarray(signal, np.float64)
    background = np.asarray(background, np.float64)
    if signal.max() <= 0:
        return 0.0
    (py, px), near, window = around_peak(signal, half_px, window_px)
    template = signal[near]
    halves = window_halves(background[window], template.shape)
    if min(len(h) for h in halves) < min_patches:
        raise ValueError(f'whitened_snr: the window around ({py}, {px}) is too small to split '
                         f'into halves of {min_patches} patches')
    t = template.ravel()
    values = []
    for fit, test in (halves, halves[::-1]):
        observer = np.linalg.solve(ledoit_wolf(fit)[0], t)
        spread = float((test @ observer).std())
        if not spread > 0:
            raise ValueError('whitened_snr: the background has no spread in the window')
        values.append(float(observer @ t) / spread)
    return float(np.mean(values))


def detectability(root: str, split: str, dets2d: Optional[str] = None,
                  prefix: Optional[str] = None, device: str = 'cpu',
                  progress: bool = True) -> list:
    """Per finding and view of ``split``: the SNR of a non-whitening matched filter
    (:func:`matched_filter_snr`) and of a whitening observer (:func:`whitened_snr`) against
    the view as built minus the finding (anatomy, other findings, photon noise), the
    former's against the photon noise alone, and, with ``dets2d``, whether the 2D stage
    detects the finding in that view (the triangulation baseline's association, as the
    benchmark's ``by_views_detected`` counts it). Each synthetic case is regenerated from
    the folder's recorded settings (``ChestBenchSource.from_settings``, rendering on
    ``device``) and its images checked against the PNGs; the real case (its nodule is part
    of the CT) and ignore regions are left out.

    Args:
        root (str): the chest benchmark folder.
        split (str): ``train``, ``val`` or ``test``.
        dets2d (str, optional): COCO-results detections of that split (``tools/test.py``'s
            ``dets2d.json``).
        prefix (str, optional): the split files' prefix; defaults to the recorded one.
        device (str): where to render; it must be the kind the folder was built on.
        progress (bool): a progress bar on a terminal.

    Returns:
        list: one dict per finding and view: ``finding`` (its ``nodule_id``), ``view``
        (index), ``diameter_mm``, ``snr``, ``snr_whitened``, ``snr_photon_noise``,
        ``peak_mm`` (the signal's peak, mm of water), ``detected`` (bool; None without
        ``dets2d``).

    Raises:
        ConverterError: the folder is no chest benchmark this converter can regenerate, or
            a case regenerates to other images than its PNGs (naming it).
        ValueError: detections that are not COCO results of this split (naming the first
            bad one).
    """
    from PIL import Image
    from tqdm import tqdm

    from data_converters.errors import ConverterError
    from data_converters.image_encoding import to_uint16
    from data_converters.render import WINDOW_MM
    from data_converters.sources.chest_bench import ChestBenchSource
    from data_converters.splits import SPLIT_NAMES
    from data_converters.storage import CaseStore
    from projects.mv2d_xray.core.data_format import (case_gt_from_info, coco_path, load_coco,
                                                     load_infos, resolve_detections)
    from projects.mv2d_xray.core.io import read_json
    from projects.mv2d_xray.mv2d_xray.baselines.triangulation import (group_detections,
                                                                      supporting_views)
    store = CaseStore(root)
    source = ChestBenchSource.from_settings(store.read_settings(), store.settings_path(),
                                            device)
    prefix = prefix or recorded_prefix(root)
    infos_path = osp.join(root, f'{prefix}_infos_{split}.pkl')
    infos = load_infos(infos_path)
    detections = None
    if dets2d is not None:
        coco = load_coco(coco_path(infos_path))
        detections = group_detections(
            coco, resolve_detections(coco, read_json(dets2d, '2D detections')), infos)
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
                raise ConverterError(
                    f'{root}: case {token} regenerates to other images than its PNGs: the '
                    f'folder was built with other settings, or on another kind of device '
                    f'than --device {device} (CPU and CUDA renders differ in rounding)')
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
                background = noisy[v] - signal[v]          # anatomy, other findings, noise
                rows.append(dict(
                    finding=finding.nodule_id, view=v,
                    diameter_mm=float(gt.diameters_mm[i]),
                    snr=matched_filter_snr(signal[v], background),
                    snr_whitened=whitened_snr(signal[v], background),
                    snr_photon_noise=matched_filter_snr(signal[v], noisy[v] - clean[v]),
                    peak_mm=float(signal[v].max()),
                    detected=None if detected[v] is None else bool(detected[v])))
    return rows


def detectability_tables(rows: list) -> list:
    """The lines ``--detectability`` prints (markdown tables):

    * per size band, the SNR quartiles against the anatomy and noise for the non-whitening
      (``snr``) and the whitening (``snr_whitened``) observer, against the photon noise
      alone (``snr_photon_noise``), and the share of views where the whitening observer
      reaches :data:`SHOWN_SNR`;
    * per size band and finding, in how many views the whitening observer reaches
      :data:`SHOWN_SNR` and, with detections, in how many the 2D stage detects it;
    * with detections, per bin of the whitening observer's SNR the share of (finding,
      view) pairs the 2D stage detects.
    """
    with_dets = bool(rows) and rows[0]['detected'] is not None
    diameters = np.array([r['diameter_mm'] for r in rows])
    columns = {key: np.array([r[key] for r in rows])
               for key in ('snr', 'snr_whitened', 'snr_photon_noise')}
    by_finding = {}
    for r in rows:
        by_finding.setdefault(r['finding'], []).append(r)

    def quartiles(values, digits):
        return ' / '.join(f'{q:.{digits}f}' for q in np.percentile(values, [25, 50, 75]))

    lines = ['| band | findings | finding-views | SNR against anatomy and noise, non-whitening, '
             'quartiles | the same, whitening | SNR against photon noise alone | views '
             f'where the whitening observer reaches {SHOWN_SNR:g} |',
             '| --- | --: | --: | --- | --- | --- | --: |']
    per_finding = ['| band | findings | their best view\'s whitening SNR, median | views at '
                   f'>= {SHOWN_SNR:g}: none | one | two or more |'
                   + (' of those with two or more, detected in two views or more | of those '
                      'with none, detected in two views or more |' if with_dets else ''),
                   '| --- | --: | --: | --: | --: | --: |' + (' --: | --: |' if with_dets
                                                             else '')]
    for name, low, high in detectability_bands():
        inside = (diameters >= low) & (diameters < high)
        if not inside.any():
            continue
        findings = [v for v in by_finding.values() if low <= v[0]['diameter_mm'] < high]
        lines.append(f'| {name} | {len(findings)} | {inside.sum()} | '
                     f'{quartiles(columns["snr"][inside], 2)} | '
                     f'{quartiles(columns["snr_whitened"][inside], 2)} | '
                     f'{quartiles(columns["snr_photon_noise"][inside], 1)} | '
                     f'{np.mean(columns["snr_whitened"][inside] >= SHOWN_SNR):.2f} |')
        shown = np.array([sum(r['snr_whitened'] >= SHOWN_SNR for r in v) for v in findings])
        best = np.median([max(r['snr_whitened'] for r in v) for v in findings])
        row = (f'| {name} | {len(findings)} | {best:.2f} | {(shown == 0).sum()} | '
               f'{(shown == 1).sum()} | {(shown >= 2).sum()} |')
        if with_dets:
            detected = np.array([sum(r['detected'] for r in v) for v in findings])
            row += (f' {((shown >= 2) & (detected >= 2)).sum()} | '
                    f'{((shown == 0) & (detected >= 2)).sum()} |')
        per_finding.append(row)
    lines += [''] + per_finding
    if with_dets:
        detected = np.array([r['detected'] for r in rows])
        snr = columns['snr_whitened']
        lines += ['', '| whitening SNR against anatomy and noise | finding-views | detected '
                  'by the 2D stage | share |', '| --- | --: | --: | --: |']
        for low, high in zip(SNR_BINS[:-1], SNR_BINS[1:]):
            inside = (snr >= low) & (snr < high)
            share = f'{detected[inside].mean():.3f}' if inside.any() else '-'
            lines.append(f'| {low:g}-{high:g} | {inside.sum()} | {detected[inside].sum()} | '
                         f'{share} |')
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('root', help='the chest benchmark folder, e.g. data/chest-bench')
    parser.add_argument('--prefix', help='the split files\' prefix (default: the recorded '
                        'one, chest_bench)')
    parser.add_argument('--contrast', action='store_true',
                        help='a solid 5 mm nodule\'s contrast against photon noise and '
                             'anatomy (renders the clean CT: ~3 min)')
    parser.add_argument('--sigma-px', type=positive_float, default=1.5,
                        help='high-pass blur of the clutter figure, px (default: 1.5)')
    parser.add_argument('--detectability', choices=('train', 'val', 'test'), metavar='SPLIT',
                        help='per finding and view of SPLIT (train, val or test), the SNR '
                             'of a non-whitening and of a whitening observer that know its '
                             'place, against the anatomy and against photon noise alone '
                             '(regenerates the split\'s cases and scores every finding in '
                             'every view: ~70 s for val or test on 2 cores; the time grows '
                             'with the findings)')
    parser.add_argument('--dets2d', metavar='JSON',
                        help="with --detectability: the 2D stage's detections on SPLIT "
                             '(COCO results, e.g. work_dirs/benchmark/chest/test-val/'
                             'dets2d.json): the share detected per SNR bin')
    parser.add_argument('--json', metavar='OUT', help='with --detectability: write the '
                        'rows (one per finding and view) to this JSON file')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='with --detectability: where to render; the kind of device '
                             'the folder was built on (default: cpu)')
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if (args.dets2d or args.json) and not args.detectability:
        parser.error('--dets2d and --json need --detectability SPLIT')
    if args.dets2d and not osp.isfile(args.dets2d):
        parser.error(f'--dets2d {args.dets2d}: no such file')
    if args.json and not os.access(osp.dirname(osp.abspath(args.json)), os.W_OK):
        parser.error(f'--json {args.json}: its folder is missing or not writable')
    args.prefix = args.prefix or recorded_prefix(args.root)

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
            rows = detectability(args.root, args.detectability, args.dets2d, args.prefix,
                                 args.device)
        except (ConverterError, ValueError) as err:   # the folder or the detections
            fail(str(err))
        print(f'{args.detectability}: the SNR of each finding in each view to linear '
              'observers that know its projection and place')
        print('\n'.join(detectability_tables(rows)))
        if args.json:
            from projects.mv2d_xray.core.io import atomic_write, json_bytes
            atomic_write(args.json, json_bytes(rows, indent=1))
            print(f'rows written to {args.json}')
    return 0


if __name__ == '__main__':
    run_main(lambda: sys.exit(main()))   # a missing folder or file: one line, exit status 2

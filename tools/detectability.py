"""How visible each finding of a generated build is in each view, to linear observers.

    python tools/detectability.py data/chest-bench test \\
        [--dets2d work_dirs/benchmark/chest/test-test/dets2d.json] [--json OUT.json]
    python tools/detectability.py data/benchmark_blades test \\
        [--dets2d work_dirs/benchmark/blades/test-test/dets2d.json]

For a folder the converter generated (``chest-bench``, ``blades``), every case of SPLIT is
regenerated from the folder's recorded settings (``ConversionSource.from_settings``) and
checked bit for bit against its PNGs, together with each finding's own noiseless
contribution to the views (``ConversionSource.regenerate``). Per finding and view two
linear observers that know that contribution and where it is score it: a non-whitening
matched filter (:func:`matched_filter_snr`) and a whitening (Hotelling) one
(:func:`whitened_snr`), against the view minus the finding (the anatomy or the part, the
other findings, the photon noise), the former also against the photon noise alone. With
``--dets2d`` (COCO-results detections, as ``tools/test.py`` / the benchmark write them),
also whether the 2D stage detects the finding in each view (the triangulation baseline's
association). Markdown tables by size band (the build's, the benchmark's target band and
``all``), by class where there are several, and by SNR.
"""
import argparse
import math
import os
import os.path as osp
import sys
from typing import Optional

import numpy as np

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..')))

from _common import add_debug_flag, fail, run_main  # noqa: E402
from benchmark_detection import DOMAINS  # noqa: E402

#: The matched filter's pre-filters (:func:`matched_filter_snr`): None, the view as it is;
#: a number, the view minus its Gaussian blur at that sigma (px) -- ``XrayLocalContrast``'s
#: residues (1.5, 4 px) and a wider one.
SNR_PREFILTERS_PX = (None, 1.5, 4.0, 8.0)
#: The tool's SNR bins, and the whitening observer's SNR a view must reach to
#: count as showing a finding in the per-finding table.
SNR_BINS = (0.0, 1.0, 2.0, 3.0, 5.0, np.inf)
SHOWN_SNR = 3.0


def peak_of(signal: np.ndarray) -> tuple:
    """``(py, px)`` of the signal's largest magnitude (a void's signal is negative)."""
    return np.unravel_index(np.argmax(np.abs(signal)), signal.shape)


def around_peak(signal: np.ndarray, half_px: int, window_px: int) -> tuple:
    """Where the observers look: the signal's peak ``(py, px)`` (:func:`peak_of`) and the
    slices of the ``(2 half_px + 1)^2`` px template and of the ``(2 window_px + 1)^2`` px
    background window around it, each cut at the image's edges."""
    py, px = peak_of(signal)

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
            e.g. mm of water; ``img`` frame), of one sign (the SNR does not depend on it).
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
    if not np.any(signal):
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
        signal (np.ndarray): ``(H, W)`` the finding's own noiseless projection, of one
            sign.
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
    if not np.any(signal):
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


def detectability_bands(source, infos: dict) -> tuple:
    """``(name, low, high)`` mm, ``low <= d < high``: the build's size bands (the metric's
    LUNA16 bands where it declares none), the benchmark's target band of that source
    (``>=6mm`` chest, ``>=1mm`` blades) and ``all``."""
    from projects.mv2d_xray.core.data_format import infos_size_bands
    from projects.mv2d_xray.core.metric import DEFAULT_SIZE_BANDS
    targets = tuple(band for domain in DOMAINS.values() if domain.source == source.name
                    for band in domain.target_bands)
    return (tuple(infos_size_bands(infos) or DEFAULT_SIZE_BANDS) + targets
            + (('all', 0.0, math.inf),))


def detectability(root: str, split: str, dets2d: Optional[str] = None,
                  prefix: Optional[str] = None, device: str = 'cpu',
                  progress: bool = True) -> tuple:
    """Per finding and view of ``split``: the SNR of a non-whitening matched filter
    (:func:`matched_filter_snr`) and of a whitening observer (:func:`whitened_snr`) against
    the view as built minus the finding (anatomy or part, other findings, photon noise),
    the former's against the photon noise alone, and, with ``dets2d``, whether the 2D
    stage detects the finding in that view (the triangulation baseline's association, as
    the benchmark's ``by_views_detected`` counts it). Each generated case is regenerated
    from the folder's recorded settings (rendering on ``device``) and its images checked
    against the PNGs; cases the source did not generate (the chest benchmark's real case)
    and ignore regions are left out.

    Args:
        root (str): a folder the converter generated (``chest-bench``, ``blades``).
        split (str): ``train``, ``val`` or ``test``.
        dets2d (str, optional): COCO-results detections of that split (``tools/test.py``'s
            ``dets2d.json``).
        prefix (str, optional): the split files' prefix; defaults to the recorded one.
        device (str): where to render; it must be the kind the folder was built on.
        progress (bool): a progress bar on a terminal.

    Returns:
        tuple: ``(rows, bands)``: one dict per finding and view -- ``finding`` (its
        ``nodule_id``), ``label`` and ``class_name``, ``view`` (index), ``diameter_mm``,
        ``snr``, ``snr_whitened``, ``snr_photon_noise`` (None in a build without photon
        noise), ``peak`` (the signal's value at its peak, signed, in the image's unit: mm
        of water for the chest, ``-log(I / I0)`` for the blades), ``detected`` (bool; None
        without ``dets2d``) -- and the size bands to report them by
        (:func:`detectability_bands`).

    Raises:
        ConverterError: the folder is no build this converter can regenerate, or a case
            regenerates to other images than its PNGs (naming it).
        ValueError: detections that are not COCO results of this split (naming the first
            bad one).
    """
    from PIL import Image
    from tqdm import tqdm

    from data_converters.errors import ConverterError
    from data_converters.sources import restore_source
    from data_converters.storage import CaseStore
    from projects.mv2d_xray.core.data_format import (case_gt_from_info, coco_path, load_coco,
                                                     load_infos, resolve_detections)
    from projects.mv2d_xray.core.io import read_json
    from projects.mv2d_xray.mv2d_xray.baselines.triangulation import (group_detections,
                                                                      supporting_views)
    store = CaseStore(root)
    settings = store.read_settings()
    source = restore_source(settings, store.settings_path(), device)
    prefix = prefix or store.recorded_prefix(source.default_prefix, settings)
    infos_path = osp.join(root, f'{prefix}_infos_{split}.pkl')
    infos = load_infos(infos_path)
    classes = [str(c) for c in infos['metainfo']['classes']]
    detections = None
    if dets2d is not None:
        coco = load_coco(coco_path(infos_path))
        detections = group_detections(
            coco, resolve_detections(coco, read_json(dets2d, '2D detections')), infos)
    specs = {spec['token']: spec for spec in source.discover()[0]}
    # the cases the source generated (not the chest benchmark's real case: no signals)
    cases = [(info, specs[info['token']]) for info in infos['data_list']
             if source.generated(specs[info['token']])]
    source.prepare(store, [spec for _, spec in cases])
    rows = []
    # a bar on a terminal only (tqdm's disable=None), none in logs or when told not to
    for info, spec in tqdm(cases, desc=f'{split} cases', disable=None if progress else True):
        case = source.regenerate(split, spec)
        token, names, noisy = info['token'], list(info['images']), case['images']
        for view, name in zip(noisy, names):
            png = np.asarray(Image.open(osp.join(root, info['images'][name]['img_path'])))
            if not np.array_equal(source.encode(view), png):
                raise ConverterError(
                    f'{root}: case {token} regenerates to other images than its PNGs: the '
                    f'folder was built with other settings, or on another kind of device '
                    f'than --device {device} (CPU and CUDA renders differ in rounding)')
        lidar2img = np.stack([np.asarray(info['images'][v]['lidar2img'], np.float64)
                              for v in names])
        gt = case_gt_from_info(info)
        instances = {inst['nodule_id']: i for i, inst in enumerate(info['instances'])}
        dets = None if detections is None else detections.get(token)
        for finding, signal in zip(case['findings'], case['signals']):
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
                noise = noisy[v] - case['noiseless'][v]    # all zero in a build without
                rows.append(dict(
                    finding=finding.nodule_id, label=int(gt.labels[i]),
                    class_name=classes[int(gt.labels[i])], view=v,
                    diameter_mm=float(gt.diameters_mm[i]),
                    snr=matched_filter_snr(signal[v], background),
                    snr_whitened=whitened_snr(signal[v], background),
                    snr_photon_noise=(matched_filter_snr(signal[v], noise)
                                      if np.any(noise) else None),
                    peak=float(signal[v][peak_of(signal[v])]),
                    detected=None if detected[v] is None else bool(detected[v])))
    return rows, detectability_bands(source, infos)


def detectability_tables(rows: list, bands) -> list:
    """The lines the tool prints (markdown tables):

    * per size band (``bands``: ``(name, low, high)``), the SNR quartiles against the
      anatomy and noise for the non-whitening (``snr``) and the whitening
      (``snr_whitened``) observer, against the photon noise alone (``snr_photon_noise``),
      and the share of views where the whitening observer reaches :data:`SHOWN_SNR`;
    * per size band and finding, in how many views the whitening observer reaches
      :data:`SHOWN_SNR` and, with detections, in how many the 2D stage detects it;
    * where the rows hold several classes, per class and band the whitening observer's
      quartiles and share;
    * with detections, per bin of the whitening observer's SNR the share of (finding,
      view) pairs the 2D stage detects.
    """
    with_dets = bool(rows) and rows[0]['detected'] is not None
    diameters = np.array([r['diameter_mm'] for r in rows])
    columns = {key: np.array([np.nan if r[key] is None else r[key] for r in rows])
               for key in ('snr', 'snr_whitened', 'snr_photon_noise')}
    by_finding = {}
    for r in rows:
        by_finding.setdefault(r['finding'], []).append(r)

    def quartiles(values, digits):                       # '-' where not measured
        if np.isnan(values).any():
            return '-'
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
    for name, low, high in bands:
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
    names = sorted({r['class_name'] for r in rows}, key=lambda c: next(
        r['label'] for r in rows if r['class_name'] == c))
    if len(names) > 1:
        classes = np.array([r['class_name'] for r in rows])
        lines += ['', '| class | band | findings | finding-views | the whitening SNR, '
                  f'quartiles | views where it reaches {SHOWN_SNR:g} |',
                  '| --- | --- | --: | --: | --- | --: |']
        for name in names:
            for band, low, high in bands:
                inside = (classes == name) & (diameters >= low) & (diameters < high)
                if not inside.any():
                    continue
                count = len({r['finding'] for r, x in zip(rows, inside) if x})
                lines.append(f'| {name} | {band} | {count} | {inside.sum()} | '
                             f'{quartiles(columns["snr_whitened"][inside], 2)} | '
                             f'{np.mean(columns["snr_whitened"][inside] >= SHOWN_SNR):.2f} |')
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
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0] + ' Regenerates the split\'s cases from the '
        'folder\'s recorded settings, checks them against its PNGs, and scores every '
        'finding in every view with a non-whitening and a whitening observer that know its '
        'place, against the anatomy (or part) and against photon noise alone (~70 s for '
        'the chest benchmark\'s val or test on 2 cores, ~5 min for the blades\' test beside a '
        'training; the time grows with the findings).')
    parser.add_argument('root', help='a folder the converter generated (chest-bench or '
                        'blades), e.g. data/chest-bench or data/benchmark_blades')
    parser.add_argument('split', choices=('train', 'val', 'test'), metavar='SPLIT',
                        help='the split scored: train, val or test')
    parser.add_argument('--dets2d', metavar='JSON',
                        help="the 2D stage's detections on SPLIT (COCO results, e.g. "
                             'work_dirs/benchmark/chest/test-val/dets2d.json): which views '
                             'detect each finding, and the share detected per SNR bin')
    parser.add_argument('--json', metavar='OUT', help='write the rows (one per finding and '
                        'view) to this JSON file')
    parser.add_argument('--prefix', help='the split files\' prefix (default: the recorded '
                        'one)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='where to render: the kind of device the folder was built on '
                             '(default: cpu)')
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if not osp.isdir(args.root):
        fail(f'{args.root}: no such folder')
    if args.dets2d and not osp.isfile(args.dets2d):
        fail(f'--dets2d {args.dets2d}: no such file')
    if args.json and not os.access(osp.dirname(osp.abspath(args.json)), os.W_OK):
        fail(f'--json {args.json}: its folder is missing or not writable')
    from data_converters.errors import ConverterError
    try:
        rows, bands = detectability(args.root, args.split, args.dets2d, args.prefix,
                                    args.device)
    except (ConverterError, ValueError) as err:        # the folder or the detections
        fail(str(err))
    print(f'{args.split}: the SNR of each finding in each view to linear observers that '
          'know its signal and place')
    print('\n'.join(detectability_tables(rows, bands)))
    if args.json:
        from projects.mv2d_xray.core.io import atomic_write, json_bytes
        atomic_write(args.json, json_bytes(rows, indent=1))
        print(f'rows written to {args.json}')
    return 0


if __name__ == '__main__':
    run_main(lambda: sys.exit(main()))   # a missing folder or file: one line, exit status 2

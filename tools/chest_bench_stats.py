"""Figures of a chest benchmark folder (README "The chest benchmark").

    python tools/chest_bench_stats.py data/chest-bench [--contrast]

Prints, per split: cases, negative cases, ground-truth findings per size band and ignore
regions; the grey mean / std of the training images as the loading transform reads them
(0..255 scale: the config's ``data_preprocessor``); with ``--contrast``, the peak
contrast of a solid 5 mm nodule inserted in the lung of the clean CT against the photon
noise there, in mm of water and in grey levels of 16-bit and 8-bit PNG over the window,
and against the anatomy ("clutter"): the nodule's peak in the high-pass residue at
``--sigma-px`` (``XrayLocalContrast``'s channel 1) over the std of the anatomy's residue.

How visible each finding is in each view: ``tools/detectability.py``.
"""
import argparse
import os.path as osp
import sys

import numpy as np

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..')))

from _common import add_debug_flag, run_main  # noqa: E402

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
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    from data_converters.storage import CaseStore
    args.prefix = args.prefix or CaseStore(args.root).recorded_prefix('chest_bench')

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
    return 0


if __name__ == '__main__':
    run_main(lambda: sys.exit(main()))   # a missing folder or file: one line, exit status 2

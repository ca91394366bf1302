"""tools/chest_bench_stats.py --detectability: the matched filter's SNR against
hand-computed cases, and the per finding and view rows on the tiny chest build (its
cases regenerated exactly, the 2D stage's detection counted by the baseline's gate)."""
import json
import os.path as osp
import shutil

import numpy as np
import pytest

from conftest import import_from

stats = import_from('tools', 'chest_bench_stats')


def _blob(size=128, sigma=2.0, centre=(64, 64)):
    y, x = np.mgrid[:size, :size]
    return np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (2 * sigma ** 2))


def test_snr_in_white_noise_is_the_template_energy_over_the_noise():
    """In white noise of sigma n a matched filter's SNR is sqrt(sum t^2) / n (t the
    template: the signal's 15 x 15 px around its peak)."""
    signal, noise = _blob(), 0.2
    template = signal[57:72, 57:72]
    expected = np.sqrt((template ** 2).sum()) / noise
    background = np.random.default_rng(0).normal(0, noise, signal.shape)
    snr = stats.matched_filter_snr(signal, background, prefilters=(None,))
    assert snr == pytest.approx(expected, rel=0.1)
    # linear in the signal's amplitude, blind to the unit
    assert stats.matched_filter_snr(2 * signal, background, prefilters=(None,)) == \
        pytest.approx(2 * snr, rel=1e-9)
    assert stats.matched_filter_snr(7 * signal, 7 * background, prefilters=(None,)) == \
        pytest.approx(snr, rel=1e-9)
    assert stats.matched_filter_snr(np.zeros_like(signal), background) == 0.0


def test_a_high_pass_prefilter_sees_past_a_smooth_background():
    """A steep smooth background (a ramp and a broad bump: anatomy at low frequencies)
    hides the blob from the plain filter; the best of the default pre-filters, which
    subtract a Gaussian blur, keeps most of the white-noise SNR."""
    signal, noise = _blob(), 0.2
    rng = np.random.default_rng(1)
    white = rng.normal(0, noise, signal.shape)
    y, x = np.mgrid[:128, :128]
    smooth = 0.5 * x + 40 * np.exp(-((y - 50) ** 2 + (x - 80) ** 2) / (2 * 25.0 ** 2))
    clean_snr = stats.matched_filter_snr(signal, white, prefilters=(None,))
    plain = stats.matched_filter_snr(signal, white + smooth, prefilters=(None,))
    best = stats.matched_filter_snr(signal, white + smooth)
    assert plain < 0.2 * clean_snr
    assert best > 0.5 * clean_snr


def test_whitening_sees_past_correlated_background_where_white_noise_gains_nothing():
    """In white noise whitening gains nothing: the whitening observer's SNR (fitted on one
    half of the window, measured on the other) matches the matched filter's closed form.
    In a background of blobs the size of the signal (correlated clutter) it exceeds the
    non-whitening filter's."""
    signal, noise = _blob(), 0.2
    rng = np.random.default_rng(2)
    template = signal[57:72, 57:72]
    white = rng.normal(0, noise, signal.shape)
    assert stats.whitened_snr(signal, white) == \
        pytest.approx(np.sqrt((template ** 2).sum()) / noise, rel=0.15)
    from scipy.ndimage import gaussian_filter
    clutter = gaussian_filter(rng.normal(0, 1, signal.shape), 3.0) * 20 + white
    plain = stats.matched_filter_snr(signal, clutter, prefilters=(None,))
    assert stats.whitened_snr(signal, clutter) > 1.5 * plain
    assert stats.whitened_snr(np.zeros_like(signal), white) == 0.0
    # a finding in the image's corner still has two halves of patches; a tiny window none
    assert np.isfinite(stats.whitened_snr(_blob(centre=(0, 0)), white))
    with pytest.raises(ValueError, match='too small to split'):
        stats.whitened_snr(signal, white, window_px=10)


def test_window_halves_are_disjoint_and_balanced():
    """The whitening observer is fitted on one half of the window's rows and measured
    on the other: no pixel may be in patches of both, and the halves hold as many rows."""
    window = np.arange(97 * 97, dtype=float).reshape(97, 97)
    upper, lower = stats.window_halves(window, (15, 15))
    assert upper.max() < 48 * 97 <= lower.min()        # pixel values encode their row
    assert len(upper) == 34 * 83 and len(lower) == 35 * 83


def _gt_detections(root, split):
    """The split's exact 2D boxes as COCO-results detections (score 1)."""
    with open(osp.join(root, f'chest_bench_infos_{split}_2d.coco.json')) as f:
        coco = json.load(f)
    return [dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'],
                 score=1.0) for a in coco['annotations'] if not a.get('iscrowd', 0)]


def _split_with_findings(splits, source):
    specs = {spec['token']: spec for spec in source.discover()[0]}
    for split in ('val', 'test', 'train'):
        if any(specs[i['token']]['index'] > 0 and any(not inst['ignore_flag']
                                                      for inst in i['instances'])
               for i in splits[split]['data_list']):
            return split
    pytest.fail('no synthetic finding in the tiny build')


def test_detectability_rows_on_the_tiny_build(chest_bench_build, tmp_path):
    """One row per synthetic finding (ignore regions and the real case left out) and
    view; the photon noise alone hides a finding less than anatomy and noise together;
    with the exact boxes as the 2D stage's detections every view that shows a finding
    detects it, and without detections ``detected`` is None."""
    root, source, splits = chest_bench_build
    split = _split_with_findings(splits, source)
    specs = {spec['token']: spec for spec in source.discover()[0]}
    expected = []
    for info in splits[split]['data_list']:
        if specs[info['token']]['index'] == 0:
            continue
        boxed = {view: {inst['instance_id'] for inst in insts}
                 for view, insts in info['cam_instances'].items()}
        for i, inst in enumerate(info['instances']):
            if not inst['ignore_flag']:
                expected += [(inst['nodule_id'], v, i in boxed.get(name, set()))
                             for v, name in enumerate(info['images'])]
    dets = tmp_path / 'dets2d.json'
    dets.write_text(json.dumps(_gt_detections(root, split)))
    rows = stats.detectability(root, split, str(dets), progress=False)
    assert [(r['finding'], r['view'], r['detected']) for r in rows] == expected
    assert all(np.isfinite(r['snr']) and np.isfinite(r['snr_whitened']) and r['peak_mm'] > 0
               for r in rows)
    assert np.median([r['snr_photon_noise'] for r in rows]) > \
        np.median([r['snr'] for r in rows])
    plain = stats.detectability(root, split, progress=False)
    assert [r['detected'] for r in plain] == [None] * len(rows)
    assert [(r['snr'], r['snr_whitened']) for r in plain] == \
        [(r['snr'], r['snr_whitened']) for r in rows]
    lines = stats.detectability_tables(rows)
    assert lines[0].startswith('| band |') and any(line.startswith('| all |') for line in lines)
    blank = [i for i, line in enumerate(lines) if line == '']
    per_finding = [line.split('|') for line in lines[blank[0] + 3:blank[1]]]
    all_row = next(cells for cells in per_finding if cells[1].strip() == 'all')
    assert sum(int(c) for c in all_row[4:7]) == int(all_row[2]) == len({r['finding']
                                                                         for r in rows})
    bins = [line.split('|') for line in lines[blank[1] + 3:]]
    assert len(bins) == len(stats.SNR_BINS) - 1
    assert sum(int(cells[2]) for cells in bins) == len(rows)
    assert sum(int(cells[3]) for cells in bins) == sum(r['detected'] for r in rows)


def _refused(argv, capsys) -> str:
    """The one stderr line of a tool run that stops with exit status 2."""
    with pytest.raises(SystemExit) as stop:
        stats.main(argv)
    assert stop.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_a_folder_that_does_not_regenerate_is_refused(chest_bench_build, tmp_path, capsys):
    """A case whose PNGs are not what its settings give (here one pixel changed) stops the
    analysis with one line naming the case and the device (exit 2)."""
    root, source, splits = chest_bench_build
    split = _split_with_findings(splits, source)
    copy = str(tmp_path / 'bench')
    shutil.copytree(root, copy)
    specs = {spec['token']: spec for spec in source.discover()[0]}
    info = next(i for i in splits[split]['data_list'] if specs[i['token']]['index'] > 0)
    from PIL import Image
    path = osp.join(copy, next(iter(info['images'].values()))['img_path'])
    image = np.asarray(Image.open(path)).copy()
    image[0, 0] = image[0, 0] ^ 1
    Image.fromarray(image).save(path)
    line = _refused([copy, '--detectability', split], capsys)
    assert line.startswith('error: ') and f'case {info["token"]} regenerates' in line
    assert '--device cpu' in line


def test_another_splits_detections_are_refused(chest_bench_build, tmp_path, capsys):
    """Image ids restart at 1 in every split's COCO file: detections naming another image
    by token / view than by image_id are refused, not counted on the wrong views."""
    root, source, splits = chest_bench_build
    split = _split_with_findings(splits, source)
    dets = _gt_detections(root, split)
    dets[0] = dict(dets[0], token='elsewhere-0001', view='VIEW_00')
    path = tmp_path / 'dets2d.json'
    path.write_text(json.dumps(dets))
    line = _refused([root, '--detectability', split, '--dets2d', str(path)], capsys)
    assert line.startswith('error: detection [0]: image_id') and 'another split' in line


def test_detectability_options_need_the_split(chest_bench_build, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        stats.main([chest_bench_build[0], '--dets2d', 'x.json'])
    assert stop.value.code == 2
    assert '--dets2d and --json need --detectability SPLIT' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        stats.main([chest_bench_build[0], '--detectability', 'val', '--json',
                    str(tmp_path / 'missing' / 'rows.json')])
    assert 'its folder is missing or not writable' in capsys.readouterr().err

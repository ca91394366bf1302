"""tools/detectability.py: the observers' SNRs against hand-computed cases, and the per
finding and view rows on the tiny chest and blades builds (their cases regenerated
exactly, the 2D stage's detection counted by the baseline's gate)."""
import json
import os.path as osp
import shutil

import numpy as np
import pytest

from conftest import import_from

stats = import_from('tools', 'detectability')


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
    rows, bands = stats.detectability(root, split, str(dets), progress=False)
    assert [(r['finding'], r['view'], r['detected']) for r in rows] == expected
    assert all(np.isfinite(r['snr']) and np.isfinite(r['snr_whitened']) and r['peak'] > 0
               and r['class_name'] == 'nodule' for r in rows)
    assert [b[0] for b in bands] == ['3-6mm', '6-10mm', '>10mm', '>=6mm', 'all']
    assert np.median([r['snr_photon_noise'] for r in rows]) > \
        np.median([r['snr'] for r in rows])
    plain, _ = stats.detectability(root, split, progress=False)
    assert [r['detected'] for r in plain] == [None] * len(rows)
    assert [(r['snr'], r['snr_whitened']) for r in plain] == \
        [(r['snr'], r['snr_whitened']) for r in rows]
    lines = stats.detectability_tables(rows, bands)
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
    line = _refused([copy, split], capsys)
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
    line = _refused([root, split, '--dets2d', str(path)], capsys)
    assert line.startswith('error: detection [0]: image_id') and 'another split' in line


def test_options_are_checked_before_any_work(chest_bench_build, tmp_path, capsys):
    """Bad options stop with one line and exit status 2 before anything is rendered."""
    root = chest_bench_build[0]
    cases = [([str(tmp_path / 'nowhere'), 'val'], 'no such folder'),
             ([root, 'val', '--dets2d', str(tmp_path / 'x.json')], 'no such file'),
             ([root, 'val', '--json', str(tmp_path / 'missing' / 'rows.json')],
              'its folder is missing or not writable')]
    for argv, message in cases:
        assert message in _refused(argv, capsys)
    with pytest.raises(SystemExit) as stop:                 # argparse's own, with usage
        stats.main([root, 'holdout'])
    assert stop.value.code == 2
    assert "invalid choice: 'holdout'" in capsys.readouterr().err


def test_a_folder_that_cannot_be_regenerated_is_refused(chest_bench_build, tmp_path, capsys):
    """A folder without settings, or one of a source that reads its inputs (here the
    settings of a ``demo`` build), is refused with one line naming its settings file."""
    empty = tmp_path / 'empty'
    empty.mkdir()
    line = _refused([str(empty), 'val'], capsys)
    assert 'no conversion settings' in line and 'settings.json' in line
    copy = tmp_path / 'demo-like'
    shutil.copytree(chest_bench_build[0], copy)
    settings_path = copy / '.parts' / 'settings.json'
    settings = json.loads(settings_path.read_text())
    settings['fingerprint']['source'] = 'demo'
    settings_path.write_text(json.dumps(settings))
    line = _refused([str(copy), 'val'], capsys)
    assert 'a demo build cannot be regenerated' in line and 'settings.json' in line
    settings['fingerprint']['source'] = 'tomosynthesis'
    settings_path.write_text(json.dumps(settings))
    line = _refused([str(copy), 'val'], capsys)
    assert "its source 'tomosynthesis' is none of this converter's" in line


def test_blades_rows_are_signed_per_defect_and_detected_by_their_boxes(blades_build,
                                                                       tmp_path, capsys):
    """On the tiny blades build: one row per defect and view; each defect's signal peaks
    inside its own 2D box (up to the detector blur) with the sign of its material -- voids
    (pores, cracks) and alumina lower the line integral, hafnia raises it; with the exact
    boxes as detections every view detects its defects (at least one defect is boxed in
    some view); the tables add a per-class one and the blades' target band."""
    root, source, splits = blades_build
    split = next(s for s in ('test', 'val', 'train')
                 if any(not inst['ignore_flag'] for info in splits[s]['data_list']
                        for inst in info['instances']))
    coco = json.loads(open(osp.join(root, f'blades_infos_{split}_2d.coco.json')).read())
    dets = tmp_path / 'dets2d.json'
    dets.write_text(json.dumps([dict(image_id=a['image_id'], category_id=a['category_id'],
                                      bbox=a['bbox'], score=1.0)
                                 for a in coco['annotations'] if not a.get('iscrowd', 0)]))
    rows, bands = stats.detectability(root, split, str(dets), progress=False)
    expected = [(inst['nodule_id'], v) for info in splits[split]['data_list']
                for inst in info['instances'] if not inst['ignore_flag']
                for v in range(len(info['images']))]
    assert [(r['finding'], r['view']) for r in rows] == expected
    assert [b[0] for b in bands] == ['0.3-1mm', '1-2mm', '>2mm', '>=1mm', 'all']
    # where each defect's signal peaks: inside its box in that view, with its sign
    specs = {spec['token']: spec for spec in source.discover()[0]}
    boxed = 0
    for info in splits[split]['data_list']:
        spec = specs[info['token']]
        case = source.regenerate(split, spec)
        _, defects = source.part_and_defects(spec['index'], spec['token'])
        for finding, signal, defect in zip(case['findings'], case['signals'], defects):
            index = next(i for i, inst in enumerate(info['instances'])
                         if inst['nodule_id'] == finding.nodule_id)
            if info['instances'][index]['ignore_flag']:
                continue
            row = [r for r in rows if r['finding'] == finding.nodule_id]
            for v, name in enumerate(info['images']):
                boxes = [c['bbox'] for c in info['cam_instances'].get(name, [])
                         if c['instance_id'] == index]
                if not boxes:
                    assert row[v]['detected'] is False
                    continue
                x1, y1, x2, y2 = boxes[0]
                py, px = np.unravel_index(np.argmax(np.abs(signal[v])), signal[v].shape)
                assert x1 - 2 <= px <= x2 + 2 and y1 - 2 <= py <= y2 + 2
                assert row[v]['peak'] == pytest.approx(float(signal[v][py, px]))
                assert row[v]['detected']
                boxed += 1
            denser = source.mu_per_mm.get(defect.fill, 0.0) > source.mu_per_mm['superalloy']
            assert all((r['peak'] > 0) == denser for r in row)
    assert boxed > 0
    lines = stats.detectability_tables(rows, bands)
    assert any(line.startswith('| class | band |') for line in lines)
    assert any(line.startswith('| >=1mm |') for line in lines)
    assert stats.main([root, split, '--json', str(tmp_path / 'rows.json')]) == 0
    assert json.loads((tmp_path / 'rows.json').read_text()) == \
        [dict(r, detected=None) for r in rows]


def test_a_build_without_photon_noise_has_no_photon_noise_snr(tmp_path):
    """A blades build made without noise: its views regenerate, the SNRs against the part
    are measured, the one against photon noise is None and its table cell '-'."""
    from conftest import BLADES_FIXTURE_GEOMETRY

    from data_converters.blade_parts import BladeRanges
    from data_converters.casting_defects import DefectSettings
    from data_converters.runner import run_conversion
    from data_converters.sources.blades import BladesSource
    from data_converters.xray_physics import DetectorModel
    from projects.mv2d_xray.core.geometry import XrayGeometry
    source = BladesSource(XrayGeometry(**BLADES_FIXTURE_GEOMETRY), num_cases=3,
                          val_fraction=0.34, test_fraction=0.34, voxel_mm=0.5,
                          defects=DefectSettings(count=(2, 2), size_mm=dict(
                              pore=(1.5, 2.5), inclusion=(1.5, 2.5), crack=(2.0, 4.0)),
                              detectable_mm=1.0),
                          detector=DetectorModel(photons_per_pixel=None),
                          ranges=BladeRanges(span_mm=(40.0, 50.0)))
    root = str(tmp_path / 'quiet')
    run_conversion(source, root, workers=1, progress=False)
    rows, bands = stats.detectability(root, 'train', progress=False)
    assert rows and all(r['snr_photon_noise'] is None and r['snr_whitened'] > 0
                        for r in rows)
    table = stats.detectability_tables(rows, bands)
    first_all = next(line for line in table if line.startswith('| all |'))
    assert first_all.split('|')[6].strip() == '-'           # the photon-noise column

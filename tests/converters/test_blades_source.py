"""The blades source end to end on tiny parts: deterministic 16-bit cases, labels that fit
their defects, Beer-Lambert without noise, and one clear line for every bad input."""
import hashlib
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT

from data_converters.blade_parts import BladeRanges
from data_converters.casting_defects import DEFECT_CLASSES, DefectSettings
from data_converters.density import AttenuationVolume
from data_converters.image_encoding import from_uint16, to_uint16
from data_converters.render import XrayRenderer
from data_converters.sources.blades import BladesSource
from data_converters.xray_physics import MAX_LINE_INTEGRAL, DetectorModel, attenuation_per_mm
from projects.mv2d_xray.core.geometry import XrayGeometry
from projects.mv2d_xray.core.io import read_pickle

#: Small parts, coarse voxels and small images keep a case to about a second.
TINY = ['--cases', '3', '--image-size', '96', '--views', '6', '--voxel-mm', '0.5',
        '--max-defects', '3', '--no-progress', '--val-fraction', '0.34', '--test-fraction',
        '0.34']


def convert(out, *extra):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['OMP_NUM_THREADS'] = '1'
    return subprocess.run([sys.executable, '-m', 'data_converters', 'blades', '--out',
                           str(out), *extra], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=env)


def tree_digest(root):
    digest = {}
    for folder, _, files in os.walk(root):
        if '.parts' in folder:
            continue
        for name in files:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                digest[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digest


@pytest.fixture(scope='module')
def blades(tmp_path_factory):
    out = tmp_path_factory.mktemp('blades')
    done = convert(out, *TINY)
    assert done.returncode == 0, done.stderr
    return out


def test_cases_are_deterministic_16_bit_with_the_defect_classes(blades, tmp_path):
    again = convert(tmp_path, *TINY)
    assert again.returncode == 0, again.stderr
    assert tree_digest(blades) == tree_digest(tmp_path)
    infos = read_pickle(str(blades / 'blades_infos_train.pkl'))
    meta = infos['metainfo']
    assert tuple(meta['classes']) == DEFECT_CLASSES
    settings = meta['converter']['blades']
    assert meta['converter']['image']['bit_depth'] == 16
    assert meta['converter']['image']['window_mm'] == MAX_LINE_INTEGRAL
    assert settings['mu_per_mm']['superalloy'] == pytest.approx(
        attenuation_per_mm('superalloy', 150.0))
    assert meta['geometry']['num_views'] == 6 and meta['geometry']['sod_mm'] == 400.0
    case = infos['data_list'][0]
    image = cv2.imread(str(blades / case['images']['VIEW_00']['img_path']),
                       cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint16 and image.shape == (96, 96) and image.max() > 1000


def test_labels_fit_their_defects(blades):
    tokens = []
    for split in ('train', 'val', 'test'):
        for case in read_pickle(str(blades / f'blades_infos_{split}.pkl'))['data_list']:
            tokens.append(case['token'])
            for inst in case['instances']:
                assert inst['bbox_label_3d'] in (0, 1, 2)
                assert all(d > 0 for d in inst['bbox_3d'][3:6])
                # the box is the defect's voxels (0.5 mm): at least one voxel, at most
                # its size plus a voxel each side
                assert max(inst['bbox_3d'][3:6]) <= inst['diameter_mm'] + 2 * 0.5 + 1e-9 \
                    or inst['bbox_label_3d'] == 0            # pore clusters: extent
            for name, boxes in case['cam_instances'].items():
                for box in boxes:
                    x1, y1, x2, y2 = box['bbox']
                    assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
    assert len(set(tokens)) == len(tokens) == 3          # every part in one split only
    assert sorted(t.split('-')[0] for t in tokens) == ['test', 'train', 'val']


def test_without_noise_images_are_the_line_integrals_of_mu():
    """A 10 mm alloy cube: the central ray crosses 10 mm of it, so -log(I / I0) there is
    mu * 10 (the renderer's line integral of the mu volume, Beer-Lambert without noise)."""
    geometry = XrayGeometry(num_views=2, sod_mm=400, sdd_mm=800, image_size=(64, 64),
                            pixel_spacing_mm=0.8)
    mu = attenuation_per_mm('superalloy', 150.0)
    volume = np.zeros((41, 41, 41), np.float32)
    volume[10:30, 10:30, 10:30] = mu                   # 20 voxels of 0.5 mm = 10 mm
    renderer = XrayRenderer(geometry, hu_to_density=AttenuationVolume())
    line = renderer.render_density(volume, (0.5, 0.5, 0.5))
    from data_converters.xray_physics import detect
    image = detect(line, DetectorModel(photons_per_pixel=None, blur_sigma_px=0.0), None)
    assert image[0, 31:33, 31:33] == pytest.approx(mu * 10.0, rel=0.01)
    grey = to_uint16(image, MAX_LINE_INTEGRAL)
    np.testing.assert_allclose(from_uint16(grey, MAX_LINE_INTEGRAL), image,
                               atol=0.5 * MAX_LINE_INTEGRAL / 65535)


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path):
    import trimesh
    box = trimesh.creation.box((10, 10, 10))
    open_box = trimesh.Trimesh(box.vertices, box.faces[:-2])      # two faces missing
    stl = tmp_path / 'open.stl'
    open_box.export(str(stl))
    cases = [
        (['--mesh', str(stl)], 'is not watertight'),
        (['--pixel-spacing', '1.0'], 'larger than the field of view'),
        (['--defect-mm', '1', '60'], 'cannot fit in the parts'),
        (['--cases', '0'], '--cases'),
        (['--defect-mm', '2', '1'], 'LOW must be > 0 and <= HIGH'),
    ]
    for n, (flags, message) in enumerate(cases):
        out = tmp_path / f'out{n}'
        done = convert(out, *TINY, *flags)
        assert done.returncode == 2, (flags, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (flags, done.stderr)
        assert not out.exists() or not any(p.name != '.parts' for p in out.iterdir()), flags


def test_source_rejects_defects_larger_than_its_parts():
    from data_converters.errors import ConverterError
    geometry = XrayGeometry(num_views=4, sod_mm=400, sdd_mm=800, image_size=(64, 64))
    with pytest.raises(ConverterError, match='cannot fit'):
        BladesSource(geometry, defects=DefectSettings(size_mm=dict(
            pore=(0.3, 30.0), inclusion=(0.3, 2.0), crack=(1.0, 6.0))),
            ranges=BladeRanges())


def test_metric_uses_the_blades_size_bands(blades, tmp_path):
    """The dataset declares its bands; tools/evaluate.py scores per class and per band with
    them (the ground truth as predictions: every finding found)."""
    import json
    import math

    from projects.mv2d_xray.core.data_format import (CasePred, infos_size_bands, load_gt_cases,
                                                     predictions_to_json)
    infos = read_pickle(str(blades / 'blades_infos_train.pkl'))
    assert infos_size_bands(infos) == (('0.3-1mm', 0.3, 1.0), ('1-2mm', 1.0, 2.0),
                                       ('>2mm', 2.0, math.inf))
    cases, _ = load_gt_cases(infos)
    preds = {t: CasePred(c.boxes, [0.9] * len(c.boxes), c.labels) for t, c in cases.items()}
    pred_file = tmp_path / 'pred.json'
    pred_file.write_text(json.dumps(predictions_to_json(preds)))
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    done = subprocess.run([sys.executable, 'tools/evaluate.py', '--gt',
                           str(blades / 'blades_infos_train.pkl'), '--pred', str(pred_file),
                           '--out', str(tmp_path / 'metrics.json')], cwd=REPO_ROOT,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / 'metrics.json').read_text())
    assert list(result['by_size']) == ['0.3-1mm', '1-2mm', '>2mm']
    if any(not c.ignore.all() for c in cases.values() if len(c.labels)):
        assert result['CPM'] == 1.0


def test_the_source_restored_from_a_folder_regenerates_its_parts(blades_build):
    """``BladesSource.from_settings`` rebuilds the source from a folder's recorded settings
    (the same fingerprint, as JSON records it); ``regenerate`` gives every part's views as
    written, the same without noise, and one signal per defect; settings this code would
    record differently (other attenuation tables) or missing a setting are refused with
    one error naming the file."""
    import copy
    import json

    from PIL import Image

    from data_converters.errors import ConverterError
    from data_converters.splits import SPLIT_NAMES
    from data_converters.storage import CaseStore
    root, built, splits = blades_build
    settings = CaseStore(root).read_settings()
    restored = BladesSource.from_settings(settings, 'S')
    assert json.loads(json.dumps(restored.fingerprint())) == settings['fingerprint']
    assert restored.split_counts() == built.split_counts()
    specs = {spec['token']: spec for spec in restored.discover()[0]}
    for split in SPLIT_NAMES:
        for info in splits[split]['data_list']:
            case = restored.regenerate(split, specs[info['token']])
            assert len(case['signals']) == len(case['findings']) == len(info['instances'])
            for view, name in zip(case['images'], info['images']):
                png = np.asarray(Image.open(os.path.join(root,
                                                         info['images'][name]['img_path'])))
                assert np.array_equal(to_uint16(view, MAX_LINE_INTEGRAL), png)
            noise = np.abs(case['images'] - case['noiseless'])
            assert 0 < noise.mean() < 0.05            # 20000 photons: a few hundredths
    other = copy.deepcopy(settings)
    other['fingerprint']['blades']['mu_per_mm']['HfO2'] *= 1.01
    with pytest.raises(ConverterError, match=r'^S: this converter would record other '
                                             r'settings \(blades\)'):
        BladesSource.from_settings(other, 'S')
    other = copy.deepcopy(settings)
    del other['fingerprint']['blades']['detector']
    with pytest.raises(ConverterError, match="^S: the setting 'detector' is missing"):
        BladesSource.from_settings(other, 'S')

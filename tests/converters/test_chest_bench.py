"""The chest benchmark source: splits and what is disjoint between them, the base nodule
removed, 16-bit images read back with the recorded scale, the noise model, the size mix,
negatives, determinism (a tiny build: 9 synthetic cases, 3 views of 64 x 64 px)."""
import os
import os.path as osp

import numpy as np
import pytest

from data_converters.image_encoding import MAX_VALUE_16, from_uint16, to_uint16
from data_converters.photon_noise import PhotonNoise
from data_converters.render import WINDOW_MM
from data_converters.storage import write_png
from projects.mv2d_xray.core.geometry import XrayGeometry

from conftest import CHEST_BENCH_FIXTURE_GEOMETRY as GEOMETRY  # noqa: E402
from conftest import CHEST_BENCH_FIXTURE_SETTINGS as SETTINGS  # noqa: E402
from conftest import tiny_chest_bench_source as _source  # noqa: E402


@pytest.fixture(scope='module')
def bench(chest_bench_build):
    """A tiny benchmark built once: (folder, source, {split: info pickle})."""
    return chest_bench_build


def _scan(source_nodule: str) -> str:
    return source_nodule.rsplit('/', 1)[0]


def test_splits_are_disjoint(bench):
    """Cases by name, LIDC-IDRI-0001 in val; nodule shapes from disjoint sets of LIDC
    scans; each split's anatomies are its own (different renders, different draws)."""
    root, source, splits = bench
    tokens = {name: [i['token'] for i in data['data_list']] for name, data in splits.items()}
    assert len(tokens['train']) == 5
    assert 'LIDC-IDRI-0001' in tokens['val'] and len(tokens['val']) == 3
    assert len(tokens['test']) == 2
    for name, names in tokens.items():
        assert all(t.startswith(f'{name}-') for t in names if t != 'LIDC-IDRI-0001')
    assert splits['test']['metainfo']['converter']['split']['cases']['test'] == 2
    scans = {}
    for name in ('train', 'val', 'test'):
        pool = [s for k, v in source.pool.items() if k.startswith(f'{name}-') for s in v]
        scans[name] = {_scan(s['source_nodule']) for s in pool}
        used = {_scan(inst['source_nodule']) for info in splits[name]['data_list']
                if info['source'] == 'synthetic' for inst in info['instances']}
        assert used <= scans[name]
    assert not (scans['train'] & scans['val'] or scans['train'] & scans['test']
                or scans['val'] & scans['test'])
    assert all('LIDC-IDRI-0001' not in s for s in set().union(*scans.values()))
    renders = [np.load(osp.join(root, '.parts', 'cache', f'anatomy-{name}-0.npy'))
               for name in ('train', 'val', 'test')]
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(renders[i] - renders[j]).mean() > 1.0     # mm of water
    params = [source.anatomy_params(name, 0).summary() for name in ('train', 'val', 'test')]
    assert params[0] != params[1] != params[2] != params[0]


def test_base_nodule_removed(bench):
    """LIDC-IDRI-0001's nodule is filled with parenchyma in the clean CT every synthetic
    anatomy derives from: lung-like HU in its mask, and its projection gone (the clean CT's
    render differs from the real CT's only inside the nodule's 2D boxes)."""
    root, source, splits = bench
    base = source.base()
    (nodule,) = base['nodules']
    region = tuple(slice(o, o + n) for o, n in zip(nodule.offset, nodule.mask.shape))
    assert base['volume'].hu[region][nodule.mask].mean() > -200
    filled = base['clean_hu'][region][nodule.mask]
    assert -950 < filled.mean() < -700 and np.median(filled) < -700
    real = np.load(osp.join(root, '.parts', 'cache', 'real-render.npy'))
    clean = source.renderer.render(base['clean_hu'], base['volume'].spacing_mm)
    lidar2img = source.geometry.view_matrices()['lidar2img']
    boxes = nodule.boxes2d(source.geometry, lidar2img, base['volume'].shape,
                           base['volume'].spacing_mm)
    for view, box in enumerate(boxes):
        inside = np.zeros(real.shape[1:], bool)
        x1, y1, x2, y2 = box
        inside[max(int(y1) - 1, 0):int(np.ceil(y2)) + 1,
               max(int(x1) - 1, 0):int(np.ceil(x2)) + 1] = True
        diff = real[view] - clean[view]
        assert diff[inside].max() > 5.0                  # the nodule: mm of water
        assert np.abs(diff[~inside]).max() < 0.5
    for data in splits.values():
        for info in data['data_list']:
            if info['source'] == 'synthetic':
                assert all(not inst['source_nodule'].startswith('LIDC-IDRI-0001')
                           for inst in info['instances'])


def test_size_mix_negatives_and_image_metainfo(bench):
    """Findings of 3-6 mm and negative cases exist; images are 16-bit PNG with the scale
    in metainfo['converter']['image']."""
    import cv2
    root, source, splits = bench
    infos = [i for data in splits.values() for i in data['data_list']]
    synthetic = [i for i in infos if i['source'] == 'synthetic']
    diameters = [inst['diameter_mm'] for i in synthetic for inst in i['instances']
                 if not inst['ignore_flag']]
    assert any(3.0 <= d < 6.0 for d in diameters)
    assert any(not i['instances'] for i in synthetic)
    image = splits['val']['metainfo']['converter']['image']
    assert image['bit_depth'] == 16 and image['window_mm'] == WINDOW_MM
    assert image['max_value'] == MAX_VALUE_16
    first = synthetic[0]['images']
    png = cv2.imread(osp.join(root, next(iter(first.values()))['img_path']),
                     cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16 and png.ndim == 2 and png.max() > 255


def _load(path, shape):
    from projects.mv2d_xray.mv2d_xray.datasets.transforms.loading import LoadXrayMultiViewImages
    results = dict(view_names=['v'], img_path=[path],
                   images={'v': dict(height=shape[0], width=shape[1])},
                   cam2img=np.eye(4)[None], lidar2img=np.eye(4)[None])
    return LoadXrayMultiViewImages().transform(results)['img'][0]


def test_16bit_round_trip_through_the_pipeline(tmp_path):
    """Line integrals -> 16-bit PNG -> the loading transform -> ``grey * window / 255``:
    back within half a level (0.003 mm); 8-bit files load as before."""
    rng = np.random.default_rng(0)
    line = rng.uniform(-5.0, WINDOW_MM + 5, size=(17, 23))
    path = str(tmp_path / 'v16.png')
    write_png(path, to_uint16(line, WINDOW_MM))
    img = _load(path, line.shape)
    assert img.dtype == np.float32 and img.shape == line.shape + (3,)
    assert (img[..., 0] == img[..., 2]).all()
    back = img[..., 0].astype(np.float64) * WINDOW_MM / 255.0
    expected = np.clip(line, 0, WINDOW_MM)
    assert np.abs(back - expected).max() <= WINDOW_MM / MAX_VALUE_16 / 2 + 1e-4
    np.testing.assert_allclose(from_uint16(to_uint16(line, WINDOW_MM), WINDOW_MM), expected,
                               atol=WINDOW_MM / MAX_VALUE_16 / 2 + 1e-9)
    grey = rng.integers(0, 256, size=(9, 11), dtype=np.uint8)
    path8 = str(tmp_path / 'v8.png')
    write_png(path8, grey)
    assert (_load(path8, grey.shape)[..., 1] == grey).all()


@pytest.mark.parametrize('line_mm', [50.0, 150.0, 300.0])
def test_noise_statistics_match_the_model(line_mm):
    """On a flat field, mean and variance of ``-log(N / I0) / mu`` match the model
    within 5 % (variance: ``sigma_mm(L)^2``)."""
    noise = PhotonNoise()
    pitch = 2.5
    flat = np.full((400, 500), line_mm, np.float32)
    out = noise.apply(flat, pitch, np.random.default_rng(1)).astype(np.float64)
    assert abs(out.mean() - line_mm) < 0.05 * line_mm
    sigma = float(noise.sigma_mm(line_mm, pitch))
    assert abs(out.var() / sigma ** 2 - 1) < 0.05
    assert 0.05 < sigma < 1.5          # a chest dose: ~0.1-1 mm of water
    again = noise.apply(flat, pitch, np.random.default_rng(1))
    assert (again == out.astype(np.float32)).all()


def test_build_is_deterministic(bench, tmp_path):
    """A second build with the same settings writes byte-identical images and cases (the
    first cases by id: LIDC-IDRI-0001 and test-0001)."""
    from data_converters.runner import run_conversion
    root, _, _ = bench
    other = str(tmp_path / 'again')
    run_conversion(_source(), other, workers=1, limit=2, progress=False)
    compared = 0
    for token in ('LIDC-IDRI-0001', 'test-0001'):
        for name in sorted(os.listdir(osp.join(other, 'images', token))):
            with open(osp.join(other, 'images', token, name), 'rb') as f, \
                    open(osp.join(root, 'images', token, name), 'rb') as g:
                assert f.read() == g.read()
                compared += 1
        part = osp.join('.parts', f'{token}.case.json')
        with open(osp.join(other, part), 'rb') as f, open(osp.join(root, part), 'rb') as g:
            assert f.read() == g.read()
    assert compared == 2 * GEOMETRY['num_views']


def test_train_nodules_fill_training_cases_only(bench, tmp_path):
    """``train_nodules=N`` puts N inserts in every training case (ignore regions count);
    val and test cases come out byte-identical to the default build's, and the setting is
    recorded in the metainfo (a default build records none)."""
    from data_converters.runner import run_conversion
    from data_converters.sources.chest_bench import ChestBenchSource
    from data_converters.splits import split_file_paths
    from projects.mv2d_xray.core.data_format import load_infos
    root, source, splits = bench
    other = str(tmp_path / 'many')
    many = ChestBenchSource(XrayGeometry(**GEOMETRY), **SETTINGS, train_nodules=6)
    run_conversion(many, other, workers=1, progress=False)
    paths = split_file_paths(other, many.default_prefix, ('train', 'val', 'test'))
    built = {name: load_infos(p['pkl']) for name, p in paths.items()}
    default_counts = [len(i['instances']) for i in splits['train']['data_list']]
    assert max(default_counts) <= 3
    assert [len(i['instances']) for i in built['train']['data_list']] == \
        [6] * len(default_counts)
    compared = 0
    for split in ('val', 'test'):
        assert [i['instances'] for i in built[split]['data_list']] == \
            [i['instances'] for i in splits[split]['data_list']]
        for info in built[split]['data_list']:
            for view in info['images'].values():
                with open(osp.join(other, view['img_path']), 'rb') as f, \
                        open(osp.join(root, view['img_path']), 'rb') as g:
                    assert f.read() == g.read()
                    compared += 1
    assert compared > 0
    nodules = built['val']['metainfo']['converter']['chest_bench']['nodules']
    assert nodules['train_nodules_per_case'] == 6
    assert 'train_nodules_per_case' not in \
        splits['val']['metainfo']['converter']['chest_bench']['nodules']
    # the recorded settings give the source back, its training count included
    from data_converters.storage import CaseStore
    restored = ChestBenchSource.from_settings(CaseStore(other).read_settings())
    assert restored.train_nodules == 6 and restored.fingerprint() == many.fingerprint()


def test_bad_settings_are_one_line(tmp_path, capsys):
    from data_converters.__main__ import main
    from data_converters.errors import ConverterError
    with pytest.raises(ConverterError, match='leaves a split empty'):
        from data_converters.sources.chest_bench import ChestBenchSource
        ChestBenchSource(XrayGeometry(**GEOMETRY), num_cases=2)
    with pytest.raises(SystemExit) as stop:
        main(['chest-bench', '--out', str(tmp_path / 'x'), '--deformations', '1,2'])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--deformations' in err[0]
    with pytest.raises(SystemExit) as stop:
        main(['chest-bench', '--out', str(tmp_path / 'y'), '--train-nodules', '0'])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--train-nodules' in err[0]


def test_a_case_does_not_change_the_anatomy_it_shares(bench):
    """The deformed CT is cached per process and shared by the cases of its anatomy: a
    case's nodules go into its own copy, so converting a case twice, or after others,
    gives the same renders. (They once went into the cache: a nodule placed where an
    earlier case's had been rendered as the difference to it, ~0 for a solid one, and a
    build with 2 workers depended on which worker converted which case.)"""
    _, source, _ = bench
    for index in range(1, source.split_counts()['train'] + 1):
        number, flip = source.anatomy_of('train', index)
        first = source.synthesize('train', index, f'train-{index:04d}')
        if not flip and first[1]:
            break
    else:
        pytest.fail('no unmirrored training case with a nodule')
    cached = source.deformed('train', number)['hu'].copy()
    again = source.synthesize('train', index, f'train-{index:04d}')
    assert np.array_equal(source.deformed('train', number)['hu'], cached)
    assert not np.array_equal(again[0].hu, cached)          # the case's CT has its nodules
    assert np.array_equal(again[2], first[2])                # the same renders
    assert np.abs(first[2] - np.load(osp.join(source.cache, f'anatomy-train-{number}.npy'))
                  ).max() > 0.1                              # which show the nodules (mm)


def test_the_source_restored_from_a_folder_regenerates_its_cases(bench):
    """``ChestBenchSource.from_settings`` rebuilds the source from a folder's recorded
    settings: the same fingerprint and split settings, and its cases regenerate to the
    PNGs written. ``synthesize(..., signals)`` hands out each inserted finding's own
    projection: the case's renders are its anatomy's plus their sum, each peaks at its
    finding's projected centre, and asking for them changes nothing else."""
    from data_converters.sources.chest_bench import ChestBenchSource
    from data_converters.splits import SPLIT_NAMES
    from data_converters.storage import CaseStore
    from PIL import Image
    from projects.mv2d_xray.core.geometry import project_points
    root, _, splits = bench
    store = CaseStore(root)
    settings = store.read_settings()
    restored = ChestBenchSource.from_settings(settings)
    assert restored.fingerprint() == settings['fingerprint']
    assert restored.split_settings() == {k: settings['split'][k]
                                         for k in restored.split_settings()}
    specs = {spec['token']: spec for spec in restored.discover()[0]}
    chosen = [(split, info) for split in SPLIT_NAMES for info in splits[split]['data_list']
              if specs[info['token']]['index'] > 0 and info['instances']
              and not restored.anatomy_of(split, specs[info['token']]['index'])[1]]
    assert chosen, 'no unmirrored synthetic case with findings in the tiny build'
    split, info = chosen[0]
    index, token = specs[info['token']]['index'], info['token']
    restored.prepare(store, [specs[token]])
    signals = []
    _, findings, images = restored.synthesize(split, index, token, signals)
    assert len(signals) == len(findings) >= 1
    assert np.array_equal(images, restored.synthesize(split, index, token)[2])
    number, _ = restored.anatomy_of(split, index)
    anatomy = np.load(osp.join(restored.cache, f'anatomy-{split}-{number}.npy'))
    np.testing.assert_allclose(images - np.sum(signals, axis=0), anatomy, atol=1e-3)
    names = list(info['images'])
    lidar2img = np.stack([info['images'][v]['lidar2img'] for v in names])
    instances = {inst['nodule_id']: inst for inst in info['instances']}
    for finding, signal in zip(findings, signals):
        assert signal.shape == images.shape and signal.min() >= 0 and signal.max() > 0.1
        centre = np.asarray(instances[finding.nodule_id]['bbox_3d'][:3], np.float64)
        for view, matrix in enumerate(lidar2img):
            uv, _ = project_points(matrix, centre[None])
            u, v = uv[0]
            peak_v, peak_u = np.unravel_index(np.argmax(signal[view]), signal[view].shape)
            if 0 <= u < signal.shape[2] and 0 <= v < signal.shape[1]:
                assert abs(peak_u + 0.5 - u) <= 3 and abs(peak_v + 0.5 - v) <= 3
    noisy = restored.noisy(images, SPLIT_NAMES.index(split), index)
    for view, name in zip(noisy, names):
        png = np.asarray(Image.open(osp.join(root, info['images'][name]['img_path'])))
        assert np.array_equal(to_uint16(view, WINDOW_MM), png)


def test_from_settings_refuses_what_it_cannot_regenerate(bench):
    """No settings, another source's, a missing setting and settings this code would
    record differently (another DiffDRR) are each one ConverterError naming the file."""
    import copy

    from data_converters.errors import ConverterError
    from data_converters.sources.chest_bench import ChestBenchSource
    from data_converters.storage import CaseStore
    recorded = CaseStore(bench[0]).read_settings()
    with pytest.raises(ConverterError, match='^S: no conversion settings'):
        ChestBenchSource.from_settings(None, 'S')
    other = copy.deepcopy(recorded)
    other['fingerprint']['source'] = 'demo'
    with pytest.raises(ConverterError, match="^S: not a chest-bench build .*'demo'"):
        ChestBenchSource.from_settings(other, 'S')
    other = copy.deepcopy(recorded)
    del other['split']['test_fraction']
    with pytest.raises(ConverterError, match="^S: the setting 'test_fraction' is missing"):
        ChestBenchSource.from_settings(other, 'S')
    other = copy.deepcopy(recorded)
    other['fingerprint']['render']['diffdrr'] = '0.0.1'
    with pytest.raises(ConverterError, match=r'^S: this converter would record other '
                                             r'settings \(render\)'):
        ChestBenchSource.from_settings(other, 'S')

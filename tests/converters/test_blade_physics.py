"""Blade parts, casting defects and the industrial X-ray physics (issue 15's pieces):
defects only inside material, boxes that hold one defect each, Beer-Lambert without
noise, Poisson statistics with it, exact 16-bit round trips and attenuation from xraydb."""
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from data_converters.blade_parts import (BladeRanges, channel_centres, sample_blade, section_at,
                                         voxelise)
from data_converters.casting_defects import (DEFECT_CLASSES, DefectSettings, crack_mask,
                                             place_defects)
from data_converters.image_encoding import from_uint16, to_uint16
from data_converters.xray_physics import (MAX_LINE_INTEGRAL, DetectorModel, attenuation_per_mm,
                                          detect, material_table, mu_volume)

#: Small parts at a coarse pitch keep the tests fast.
SMALL = BladeRanges(span_mm=(40.0, 50.0), chord_mm=(15.0, 18.0))
PITCH = 0.4


def test_parts_are_deterministic_and_have_their_channels():
    a = sample_blade(np.random.default_rng(3), SMALL)
    b = sample_blade(np.random.default_rng(3), SMALL)
    assert a == b and 40 <= a.span_mm <= 50
    mask = voxelise(a, PITCH)
    assert np.array_equal(mask, voxelise(b, PITCH))
    rows, cols, slices = mask.shape
    # span + root + platform + margins, in voxels
    expected = (a.span_mm + a.root_height_mm + a.platform_mm) / PITCH + 6
    assert abs(slices - expected) <= 2
    # the airfoil's mid-span section is inside the grid and filled
    outline, _ = section_at(a, a.span_mm / 2)
    k = int(round((a.root_height_mm + a.platform_mm + a.span_mm / 2) / PITCH)) + 3
    assert mask[:, :, k].sum() * PITCH ** 2 == pytest.approx(
        0.5 * abs(np.dot(outline[:, 0], np.roll(outline[:, 1], 1))
                  - np.dot(outline[:, 1], np.roll(outline[:, 0], 1))), rel=0.1)
    # every channel centre is empty along the whole root
    for cx, cy in channel_centres(a, -1.0):
        i, j = int(round(cy / PITCH + (rows - 1) / 2)), int(round(cx / PITCH + (cols - 1) / 2))
        assert not mask[i, j, 3:int(a.root_height_mm / PITCH)].any()


def test_defects_lie_inside_material_and_boxes_hold_one_defect_each():
    rng = np.random.default_rng(0)
    settings = DefectSettings(count=(4, 5))
    seen = set()
    for _ in range(6):
        material = voxelise(sample_blade(rng, SMALL), PITCH)
        depth = distance_transform_edt(material) * PITCH
        defects, _ = place_defects(material, PITCH, rng, settings, depth_mm=depth)
        occupied = np.zeros(material.shape, dtype=np.int32)
        for n, d in enumerate(defects, 1):
            (i0, i1), (j0, j1), (k0, k1) = d.box()
            voxels = np.argwhere(d.mask) + d.offset
            # at least one voxel from the surface: deeper than one pitch
            assert (depth[tuple(voxels.T)] > PITCH).all()
            occupied[tuple(voxels.T)] = n
            seen.add(d.name)
        for n, d in enumerate(defects, 1):
            (i0, i1), (j0, j1), (k0, k1) = d.box()
            box = occupied[i0:i1 + 1, j0:j1 + 1, k0:k1 + 1]
            assert set(np.unique(box)) <= {0, n}       # nothing of another defect
            assert (box == n).sum() == d.mask.sum()
    assert seen == set(DEFECT_CLASSES)


def test_negative_parts_and_counts():
    rng = np.random.default_rng(1)
    material = voxelise(sample_blade(rng, SMALL), PITCH)
    defects, dropped = place_defects(material, PITCH, rng, DefectSettings(count=(0, 0)))
    assert defects == [] and dropped == 0


def test_crack_is_a_one_voxel_layer_of_its_rectangle():
    mask = crack_mask(4.0, 1.0, np.eye(3), 0.2)      # normal along the slice axis
    filled = np.argwhere(mask)
    assert np.ptp(filled[:, 2]) == 0                   # one layer
    # voxel centres (multiples of 0.2 mm) within +-2 mm and +-0.5 mm: 21 x 5 of them
    assert np.ptp(filled[:, 0]) + 1 == 21 and np.ptp(filled[:, 1]) + 1 == 5
    assert len(filled) == 21 * 5


def test_attenuation_comes_from_xraydb():
    # the reference value: pure nickel at 150 keV, 8.9 g/cm^3: 1.965 /cm
    assert attenuation_per_mm('Ni', 150.0, density=8.9) == pytest.approx(0.1965, abs=1e-4)
    table = material_table(150.0, ('HfO2', 'Al2O3'))
    assert table['Al2O3'] < table['superalloy'] < table['HfO2']
    with pytest.raises(ValueError, match='density'):
        attenuation_per_mm('Fe2O3', 150.0)


def test_mu_volume_fills_defects():
    material = np.ones((5, 5, 5), dtype=bool)
    from data_converters.casting_defects import Defect
    void = Defect(0, np.ones((1, 1, 1), bool), (1, 1, 1), 0.3, 'void')
    crack = Defect(2, np.ones((1, 2, 1), bool), (3, 1, 1), 1.0, 'crack', void_fraction=0.25)
    inclusion = Defect(1, np.ones((1, 1, 1), bool), (1, 3, 3), 0.3, 'HfO2')
    mu = dict(superalloy=0.4, HfO2=1.2)
    vol = mu_volume(material, [void, crack, inclusion], mu)
    assert vol[1, 1, 1] == 0 and vol[3, 1, 1] == pytest.approx(0.3)
    assert vol[1, 3, 3] == pytest.approx(1.2) and vol[0, 0, 0] == pytest.approx(0.4)


def test_without_noise_the_image_is_the_line_integral():
    line = np.random.default_rng(0).uniform(0, 8, (16, 16))
    out = detect(line, DetectorModel(photons_per_pixel=None, blur_sigma_px=0.0), None)
    np.testing.assert_allclose(out, line, rtol=0, atol=1e-12)


def test_photon_noise_has_poisson_statistics():
    i0, line = 5000.0, np.full((64, 64), 1.5)
    model = DetectorModel(photons_per_pixel=i0, blur_sigma_px=0.0)
    rng = np.random.default_rng(7)
    counts = np.stack([i0 * np.exp(-detect(line, model, rng)) for _ in range(50)])
    expected = i0 * np.exp(-1.5)
    assert counts.mean() == pytest.approx(expected, rel=0.05)
    assert counts.var(axis=0).mean() == pytest.approx(expected, rel=0.05)


def test_16_bit_images_round_trip_exactly(tmp_path):
    import cv2
    grey = np.arange(0, 65536, 7, dtype=np.uint16)[:64 * 64].reshape(64, 64)
    line = from_uint16(grey, MAX_LINE_INTEGRAL)
    assert np.array_equal(to_uint16(line, MAX_LINE_INTEGRAL), grey)
    path = str(tmp_path / 'view.png')
    cv2.imwrite(path, grey)
    back = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, grey)

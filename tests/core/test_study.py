"""``projects.mv2d_xray.core.study``: study folders (finding each view's image, missing and
extra images), the image readers (8/16-bit PNG, integer and float TIFF, DICOM DX with
rescale and pixel spacing, ``.npy``), the intensity check and the study writer."""
import json
import os

import cv2
import numpy as np
import pytest
from study_fake_data import write_dicom

from projects.mv2d_xray.core.acquisition import Acquisition, CalibrationError
from projects.mv2d_xray.core.geometry import XrayGeometry
from projects.mv2d_xray.core.study import (CALIBRATION_FILE, DRR_INTENSITY, StudyError,
                                           check_intensity, find_studies, find_study, read_image,
                                           read_images, write_study)

RING = XrayGeometry(num_views=3, image_size=(24, 32))


def ring_study(folder, images=None, suffix='.png', pixels=None):
    """A 3-view ring study of 24 x 32 px 8-bit PNGs named after the views."""
    folder.mkdir(parents=True, exist_ok=True)
    acq = Acquisition.from_ring(RING, images=images)
    (folder / CALIBRATION_FILE).write_text(json.dumps(acq.to_calibration('ring')))
    rng = np.random.default_rng(0)
    for v, name in enumerate(RING.view_names):
        img = pixels if pixels is not None else rng.integers(0, 256, (24, 32), np.uint8)
        file = folder / (images[v] if images else name + suffix)
        if file.suffix == '.npy':
            np.save(file, img)
        else:
            cv2.imwrite(str(file), img)
    return folder


def test_views_found_by_name_and_by_calibration_image(tmp_path):
    study = find_study(str(ring_study(tmp_path / 'a')))
    assert [os.path.basename(p) for p in study.image_paths] == \
        ['VIEW_00.png', 'VIEW_01.png', 'VIEW_02.png']
    assert study.token == 'a' and study.num_views == 3
    named = find_study(str(ring_study(tmp_path / 'b', images=['z.png', 'y.png', 'x.npy'])))
    assert [os.path.basename(p) for p in named.image_paths] == ['z.png', 'y.png', 'x.npy']
    images = read_images(named)
    assert [i.pixels.shape for i in images] == [(24, 32)] * 3
    assert find_studies(str(tmp_path)) == [str(tmp_path / 'a'), str(tmp_path / 'b')]
    assert find_studies(str(tmp_path / 'a')) == [str(tmp_path / 'a')]


@pytest.mark.parametrize('change, message', [
    (lambda d: (d / 'VIEW_01.png').unlink(), r'no image for view VIEW_01'),
    (lambda d: cv2.imwrite(str(d / 'VIEW_03.png'), np.zeros((24, 32), np.uint8)),
     r'image VIEW_03.png is not a view of calibration.json \(3 views\)'),
    (lambda d: np.save(d / 'VIEW_00.npy', np.zeros((24, 32))),
     r'view VIEW_00 has 2 images \(VIEW_00.npy, VIEW_00.png\)'),
    (lambda d: (d / CALIBRATION_FILE).unlink(), r'no calibration.json'),
])
def test_missing_extra_and_ambiguous_images(tmp_path, change, message):
    folder = ring_study(tmp_path / 's')
    change(folder)
    with pytest.raises(StudyError, match=message):
        find_study(str(folder))


def test_calibration_from_elsewhere(tmp_path):
    folder = ring_study(tmp_path / 's')
    other = tmp_path / 'rig.json'
    (folder / CALIBRATION_FILE).rename(other)
    study = find_study(str(folder), str(other))
    assert study.calibration_path == str(other) and study.num_views == 3
    assert len(read_images(study)) == 3


def test_named_image_missing_and_size_mismatch(tmp_path):
    folder = ring_study(tmp_path / 's', images=['a.png', 'b.png', 'c.png'])
    (folder / 'b.png').unlink()
    with pytest.raises(StudyError, match=r'the image b.png of view VIEW_01 .* is missing'):
        find_study(str(folder))
    folder = ring_study(tmp_path / 't')
    cv2.imwrite(str(folder / 'VIEW_02.png'), np.zeros((32, 24), np.uint8))
    with pytest.raises(CalibrationError, match=r'view VIEW_02: height/width say 24x32, the '
                       r'image VIEW_02 is 32x24'):
        read_images(find_study(str(folder)))


def test_unreadable_files_are_one_line(tmp_path):
    folder = ring_study(tmp_path / 's')
    (folder / 'VIEW_01.png').write_bytes(b'not a png')
    with pytest.raises(StudyError, match=r'cannot read image .*VIEW_01.png: not a valid PNG'):
        read_images(find_study(str(folder)))
    bad = tmp_path / 'x.tif'
    bad.write_bytes(b'II*\x00garbage')
    with pytest.raises(StudyError, match=r'cannot read image .*x.tif: not a valid TIFF'):
        read_image(str(bad))
    pickled = tmp_path / 'p.npy'
    np.save(pickled, np.array([{'a': 1}], dtype=object), allow_pickle=True)
    with pytest.raises(StudyError, match=r'not a plain .npy array'):
        read_image(str(pickled))
    dcm = tmp_path / 'x.dcm'
    dcm.write_bytes(b'\x00' * 200)
    with pytest.raises(StudyError, match=r'not a readable DICOM radiograph'):
        read_image(str(dcm))


def test_png_tiff_npy_readers_keep_values_and_bit_depth(tmp_path):
    import tifffile
    rng = np.random.default_rng(1)
    grey8 = rng.integers(0, 256, (20, 30), np.uint8)
    grey16 = grey8.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / 'a.png'), grey8)
    cv2.imwrite(str(tmp_path / 'b.png'), grey16)
    tifffile.imwrite(str(tmp_path / 'c.tif'), grey16)
    tifffile.imwrite(str(tmp_path / 'd.tiff'), grey8.astype(np.float32) / 3)
    np.save(tmp_path / 'e.npy', grey8)
    cases = [('a.png', grey8, 8), ('b.png', grey16, 16), ('c.tif', grey16, 16),
             ('d.tiff', grey8.astype(np.float32) / 3, 32), ('e.npy', grey8, 8)]
    for name, expected, bits in cases:
        img = read_image(str(tmp_path / name))
        assert img.bit_depth == bits and img.pixels.dtype == expected.dtype, name
        np.testing.assert_array_equal(img.pixels, expected)
    # a colour PNG is made grey as the training loader (OpenCV) does
    colour = rng.integers(0, 256, (20, 30, 3), np.uint8)
    cv2.imwrite(str(tmp_path / 'f.png'), colour)
    np.testing.assert_array_equal(read_image(str(tmp_path / 'f.png')).pixels,
                                  cv2.imread(str(tmp_path / 'f.png'), cv2.IMREAD_GRAYSCALE))


def test_dicom_rescale_inversion_modality_and_spacing(tmp_path):
    stored = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) % 4096
    write_dicom(tmp_path / 'a.dcm', stored, slope=0.5, intercept=10)
    img = read_image(str(tmp_path / 'a.dcm'))
    assert img.kind == 'dicom' and img.bit_depth == 12
    np.testing.assert_allclose(img.pixels, stored * 0.5 + 10)
    write_dicom(tmp_path / 'b.dcm', stored, photometric='MONOCHROME1')
    np.testing.assert_array_equal(read_image(str(tmp_path / 'b.dcm')).pixels, 4095 - stored)
    write_dicom(tmp_path / 'c.dcm', stored, modality='CT')
    with pytest.raises(StudyError, match=r"DICOM modality 'CT' is not a projection "
                       r'radiograph \(DX or CR\)'):
        read_image(str(tmp_path / 'c.dcm'))
    # pixel spacing checked against the calibration
    folder = tmp_path / 'study'
    folder.mkdir()
    acq = Acquisition.from_ring(RING)
    (folder / CALIBRATION_FILE).write_text(json.dumps(acq.to_calibration('ring')))
    for v, name in enumerate(RING.view_names):
        write_dicom(folder / f'{name}.dcm', stored % 256,
                    spacing=RING.pixel_spacing_mm * (1.1 if v == 2 else 1.0))
    with pytest.raises(StudyError, match=r'VIEW_02.dcm: the DICOM pixel spacing .* differs '
                       r'from pixel_spacing_mm 25 of view VIEW_02'):
        read_images(find_study(str(folder)))


def test_intensity_mismatch_is_named(tmp_path):
    grey8 = np.full((24, 32), 200, np.uint8)
    cv2.imwrite(str(tmp_path / 'a.png'), grey8)
    cv2.imwrite(str(tmp_path / 'b.png'), grey8.astype(np.uint16) * 257)
    np.save(tmp_path / 'c.npy', np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32))
    check_intensity([read_image(str(tmp_path / 'a.png')).values()], DRR_INTENSITY, 'study')
    with pytest.raises(StudyError, match=r'study: b.png is a 16-bit png with values '
                       r"51400..51400, the model was trained on 8-bit PNG, 0..255"):
        check_intensity([read_image(str(tmp_path / 'b.png')).values()], DRR_INTENSITY, 'study')
    with pytest.raises(StudyError, match=r'c.npy is a float32 npy with values 0..1 '
                       r'\(normalised\?\)'):
        check_intensity([read_image(str(tmp_path / 'c.npy')).values()], DRR_INTENSITY, 'study')


def test_write_study_round_trips_the_matrices(tmp_path):
    src = ring_study(tmp_path / 'src')
    acq = Acquisition.from_ring(RING, images=['v0.png', 'v1.png', 'v2.png'])
    sources = [str(src / f'{n}.png') for n in RING.view_names]
    write_study(str(tmp_path / 'out'), acq, sources)
    study = find_study(str(tmp_path / 'out'))
    for key, mats in acq.view_matrices().items():
        np.testing.assert_array_equal(getattr(study.acquisition, 'view_matrices')()[key]
                                      if key != 'lidar2img' else mats, mats)
    np.testing.assert_allclose(study.acquisition.view_matrices()['lidar2img'],
                               acq.view_matrices()['lidar2img'], rtol=1e-12, atol=1e-9)
    for a, b in zip(sources, study.image_paths):
        assert open(a, 'rb').read() == open(b, 'rb').read()
    assert sorted(os.listdir(tmp_path / 'out')) == ['calibration.json', 'v0.png', 'v1.png',
                                                     'v2.png']

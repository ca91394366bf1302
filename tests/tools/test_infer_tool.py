"""``tools/infer.py`` end to end on the session's demo dataset (CPU), with the small demo
model of ``test_explain_tool`` (initial, seeded weights): a val case exported as a study
gives ``tools/test.py``'s boxes and scores; the same study with its views in another order
gives the same boxes, and as DICOM or float TIFF files the same boxes exactly; with 3 of
its 10 views removed it runs and says so once; every bad input stops with one line and
leaves ``--out`` untouched."""
import json
import os
import os.path as osp
import re
import shutil

import cv2
import numpy as np
import pytest
import test_explain_tool
import tifffile
from study_fake_data import write_dicom
from test_train_test import run_tool

from data_converters.export_study import export_study

CASE = 'LIDC-IDRI-0001'
#: The small demo config and its seeded initial checkpoint (``test_explain_tool``).
explain_setup = test_explain_tool.explain_setup


@pytest.fixture(scope='module')
def study(demo_dataset, tmp_path_factory) -> str:
    """The val case LIDC-IDRI-0001 as a study folder (``export-study``)."""
    folder = str(tmp_path_factory.mktemp('studies') / CASE)
    export_study(demo_dataset.val_pkl, CASE, folder)
    return folder


def copy_study(study: str, folder, views=None) -> str:
    """A copy of ``study`` with the calibration's views in the order ``views`` (indices;
    views left out lose their image too)."""
    shutil.copytree(study, folder)
    path = osp.join(folder, 'calibration.json')
    with open(path) as f:
        calibration = json.load(f)
    if views is not None:
        kept = [calibration['views'][v] for v in views]
        for view in calibration['views']:
            if view not in kept:
                os.remove(osp.join(folder, view['image']))
        calibration['views'] = kept
        with open(path, 'w') as f:
            json.dump(calibration, f)
    return str(folder)


def convert_images(folder: str, suffix: str, write) -> str:
    """Rewrite every view image of a study copy as ``<view><suffix>`` with ``write(path,
    grey uint8 (H, W), pixel spacing mm)`` and name it in the calibration."""
    path = osp.join(folder, 'calibration.json')
    with open(path) as f:
        calibration = json.load(f)
    for view in calibration['views']:
        png = osp.join(folder, view['image'])
        grey = cv2.imread(png, cv2.IMREAD_UNCHANGED)
        os.remove(png)
        view['image'] = view['name'] + suffix
        write(osp.join(folder, view['image']), grey, view['pixel_spacing_mm'])
    with open(path, 'w') as f:
        json.dump(calibration, f)
    return folder


def boxes(path: str, token: str):
    with open(path) as f:
        preds = json.load(f)['results'][token]
    return (np.array([p['bbox_3d'] for p in preds]).reshape(-1, 7),
            np.array([p['score'] for p in preds]))


def test_round_trip_equals_tools_test(explain_setup, study, tmp_path):
    config, checkpoint, infos = explain_setup
    result = run_tool('test.py', config, checkpoint, '--work-dir', str(tmp_path / 'test'))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / 'out'
    result = run_tool('infer.py', config, checkpoint, '--study', study, '--out', str(out),
                      '--score-thr', '0')
    assert result.returncode == 0, result.stderr[-3000:]
    expected, expected_scores = boxes(str(tmp_path / 'test' / 'predictions.json'), CASE)
    found, scores = boxes(str(out / 'predictions.json'), CASE)
    assert len(found) == len(expected) > 0
    np.testing.assert_allclose(found[:, :3], expected[:, :3], rtol=0, atol=1e-3)   # mm
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-3)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-5)
    lines = result.stdout.strip().splitlines()
    assert re.match(rf'{CASE}: 10 views, {len(found)} box\(es\) scoring >= 0: \(', lines[-2])
    assert lines[-1] == f'wrote {out}/predictions.json and 1 picture(s) in {out}'
    picture = cv2.imread(str(out / f'{CASE}.png'))
    assert picture is not None and picture.shape[0] > 500
    assert sorted(os.listdir(out)) == [f'{CASE}.png', 'predictions.json']
    assert 'warning' not in result.stderr


def test_batch_view_order_and_fewer_views(explain_setup, study, tmp_path):
    config, checkpoint, _ = explain_setup
    batch = tmp_path / 'batch'
    copy_study(study, batch / 'a_all')
    copy_study(study, batch / 'b_reordered', [3, 7, 0, 9, 1, 5, 2, 8, 6, 4])
    copy_study(study, batch / 'c_seven', [0, 2, 3, 5, 6, 7, 9])
    # the same grey values as DICOM DX (8 bits stored, the detector pitch in the header)
    # and as float32 TIFF: the same boxes as the PNGs
    convert_images(copy_study(study, batch / 'd_dicom'), '.dcm',
                   lambda path, grey, mm: write_dicom(path, grey, spacing=mm, bits=8))
    convert_images(copy_study(study, batch / 'e_tiff'), '.tif',
                   lambda path, grey, mm: tifffile.imwrite(path, grey.astype(np.float32)))
    out = tmp_path / 'out'
    result = run_tool('infer.py', config, checkpoint, '--study', str(batch), '--batch',
                      '--out', str(out), '--score-thr', '0')
    assert result.returncode == 0, result.stderr[-3000:]
    preds = str(out / 'predictions.json')
    full, full_scores = boxes(preds, 'a_all')
    reordered, reordered_scores = boxes(preds, 'b_reordered')
    # the same set of boxes: each box of one has a box of the other within 0.5 mm
    dist = np.linalg.norm(full[:, None, :3] - reordered[None, :, :3], axis=2)
    assert len(full) == len(reordered) > 0
    assert dist.min(1).max() < 0.5 and dist.min(0).max() < 0.5
    np.testing.assert_allclose(np.sort(full_scores), np.sort(reordered_scores), atol=1e-4)
    for token in ('d_dicom', 'e_tiff'):
        same, same_scores = boxes(preds, token)
        np.testing.assert_array_equal(same, full)
        np.testing.assert_array_equal(same_scores, full_scores)
    seven, seven_scores = boxes(preds, 'c_seven')
    assert len(seven) > 0 and np.isfinite(seven).all()
    assert np.abs(seven[:, :3]).max() < 300          # inside the scanned volume's reach, mm
    assert result.stderr.count('warning:') == 1           # said once
    assert re.search(r'^warning: studies with 7 views \(e.g. c_seven\): the model was '
                     r'trained on 10; it takes any number of views, but was not tested on '
                     r'this one$', result.stderr, re.M)
    for token, views in (('a_all', 10), ('b_reordered', 10), ('c_seven', 7), ('d_dicom', 10),
                         ('e_tiff', 10)):
        assert re.search(rf'^{token}: {views} views, \d+ box\(es\)', result.stdout, re.M)
        assert cv2.imread(str(out / f'{token}.png')) is not None
    assert 'studies: 100%' in result.stderr         # the progress bar


def write_png16(path: str) -> None:
    grey = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    cv2.imwrite(path, grey.astype(np.uint16) * 257)


@pytest.mark.parametrize('change, message', [
    (lambda d: os.remove(osp.join(d, 'VIEW_04.png')),
     r'error: .*: the image VIEW_04.png of view VIEW_04 \(named in calibration.json\) is '
     r'missing$'),
    (lambda d: shutil.copy(osp.join(d, 'VIEW_00.png'), osp.join(d, 'extra.png')),
     r'error: .*: image extra.png is not a view of calibration.json \(10 views\): remove it '
     r'or describe its view in the calibration$'),
    (lambda d: open(osp.join(d, 'VIEW_02.png'), 'wb').write(b'\x89PNG broken'),
     r'error: cannot read image .*VIEW_02.png: not a valid PNG \(corrupt, truncated or '
     r'empty\)$'),
    (lambda d: cv2.imwrite(osp.join(d, 'VIEW_07.png'), np.zeros((50, 96), np.uint8)),
     r'error: .*calibration.json: view VIEW_07: height/width say 96x96, the image '
     r'VIEW_07.png is 50x96$'),
    (lambda d: [write_png16(osp.join(d, f'VIEW_{v:02d}.png')) for v in range(10)],
     r"error: .*: VIEW_00.png is a 16-bit png with values \d+..\d+, the model was trained "
     r"on 8-bit PNG, 0..255 \(the converter's DRRs\): convert the study"),
])
def test_bad_study_is_one_line_and_out_untouched(explain_setup, study, tmp_path, change,
                                                 message):
    config, checkpoint, _ = explain_setup
    bad = copy_study(study, tmp_path / 'bad')
    change(bad)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('from before')
    result = run_tool('infer.py', config, checkpoint, '--study', bad, '--out', str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(message, lines[0]), result.stderr[-2000:]
    assert os.listdir(out) == ['keep.txt'] and (out / 'keep.txt').read_text() == 'from before'
    assert [n for n in os.listdir(tmp_path) if n.startswith('.')] == []   # no staging left


def test_bad_study_in_a_batch_stops_before_anything_is_written(explain_setup, study,
                                                               tmp_path):
    config, checkpoint, _ = explain_setup
    batch = tmp_path / 'batch'
    copy_study(study, batch / 'good')
    os.remove(copy_study(study, batch / 'zbad') + '/VIEW_09.png')
    out = tmp_path / 'out'
    result = run_tool('infer.py', config, checkpoint, '--study', str(batch), '--batch',
                      '--out', str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        'the image VIEW_09.png of view VIEW_09 (named in calibration.json) is missing')
    assert not out.exists()


def test_bad_arguments_are_one_line(explain_setup, study, tmp_path):
    config, checkpoint, _ = explain_setup
    a_file = tmp_path / 'file.txt'
    a_file.write_text('x')
    for extra, message in (
            (['--study', study, '--score-thr', '2'], '--score-thr must be in [0, 1], got 2.0'),
            (['--study', str(tmp_path / 'none')], f'study folder not found: {tmp_path}/none'),
            (['--study', study, '--out', str(a_file)],
             f'--out {a_file} exists and is not a folder'),
            (['--study', study, '--calibration', str(tmp_path / 'c.json')],
             f'calibration file not found: {tmp_path}/c.json'),
            (['--study', str(tmp_path), '--batch', '--out', str(tmp_path / 'o')],
             f'{tmp_path}: no study folders in it (sub-folders with a calibration.json)')):
        result = run_tool('infer.py', config, checkpoint, *extra)
        assert result.returncode == 2
        assert result.stderr.strip() == f'error: {message}', result.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ['file.txt']

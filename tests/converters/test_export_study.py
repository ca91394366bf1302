"""``python -m data_converters export-study``: a converted case as a study folder -- its
images byte for byte, ``calibration.json`` in K + Rt form with the info pickle's matrices
exactly -- and one line for a case that is not there or an ``--out`` in use."""
import os
import os.path as osp
import subprocess
import sys

import numpy as np
from conftest import REPO_ROOT

from projects.mv2d_xray.core.data_format import load_infos
from projects.mv2d_xray.core.study import find_study, read_images


def export(*args):
    return subprocess.run([sys.executable, '-m', 'data_converters', 'export-study', *args],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def test_export_study_round_trips_images_and_matrices(demo_dataset, tmp_path):
    token = demo_dataset.tokens['val'][-1]
    out = tmp_path / 'study'
    result = export('--infos', demo_dataset.val_pkl, '--case', token, '--out', str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f'wrote {out}/calibration.json and the images of ' \
                                    f'{token} in {out}'
    infos = load_infos(demo_dataset.val_pkl)
    item = next(i for i in infos['data_list'] if i['token'] == token)
    names = infos['metainfo']['geometry']['view_names']
    assert sorted(os.listdir(out)) == sorted([f'{n}.png' for n in names] + ['calibration.json'])
    study = find_study(str(out))
    assert study.acquisition.view_names == tuple(names)
    mats = study.acquisition.view_matrices()
    for v, name in enumerate(names):
        view = item['images'][name]
        # K and Rt exactly; lidar2img = K @ Rt to rounding
        np.testing.assert_array_equal(mats['cam2img'][v], np.array(view['cam2img']))
        np.testing.assert_array_equal(mats['lidar2cam'][v], np.array(view['lidar2cam']))
        np.testing.assert_allclose(mats['lidar2img'][v], np.array(view['lidar2img']),
                                   rtol=1e-12, atol=1e-9)
        with open(osp.join(demo_dataset.root, view['img_path']), 'rb') as f:
            assert f.read() == (out / f'{name}.png').read_bytes()
    assert study.acquisition.pixel_spacing == \
        (demo_dataset.geometry.pixel_spacing_mm,) * len(names)
    assert [img.bit_depth for img in read_images(study)] == [8] * len(names)


def test_export_study_refuses_with_one_line(demo_dataset, tmp_path):
    result = export('--infos', demo_dataset.val_pkl, '--case', 'nope', '--out',
                    str(tmp_path / 'x'))
    assert result.returncode == 2
    assert result.stderr.strip().startswith('python -m data_converters export-study: error: ')
    assert "no case 'nope' (cases: " in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / 'x').exists()
    used = tmp_path / 'used'
    used.mkdir()
    (used / 'a.txt').write_text('x')
    result = export('--infos', demo_dataset.val_pkl, '--case', 'LIDC-IDRI-0001', '--out',
                    str(used))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert f'--out {used} exists and is not an empty folder' in result.stderr
    assert os.listdir(used) == ['a.txt']

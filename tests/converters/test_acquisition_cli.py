"""``--acquisition FILE``: the converter on a calibration file of any acquisition (issue 11).

A demo conversion on an explicit calibration (7 views over a 120-degree arc, the orbit
tilted by 10 degrees, an offset detector and uneven source distances): the info pickles
and COCO files carry the file's matrices, and the exact 2D boxes triangulate to the 3D
centres within the bound of the ring test (``tests/baselines/test_triangulation.py``).
Conflicting flags and bad files are one line, exit status 2, and write nothing.
"""
import json
import os.path as osp

import numpy as np
import pytest
from test_cli_robustness import one_line_error

from data_converters.__main__ import main
from data_converters.splits import split_file_paths
from projects.mv2d_xray.core.acquisition import Acquisition, acquisition_from_dict
from projects.mv2d_xray.core.geometry import XrayGeometry
from projects.mv2d_xray.core.io import read_json, read_pickle
from projects.mv2d_xray.mv2d_xray.baselines.triangulation import ct_bounds, triangulate_case

IMAGE_SIZE = (96, 96)
#: Per view: source distance (mm), the tilted arc's angle comes from ``arc_views``.
DISTANCES_MM = (280.0, 300.0, 320.0, 290.0, 310.0, 300.0, 270.0)
DEMO = ['--cases', '3', '--val-fraction', '0.34', '--seed', '0', '--no-progress']


def arc_views():
    """The views of a C-arm: 7 over a 120-degree arc, orbit tilted by 10 degrees, the
    principal point (2.5, -1.5) px off centre, each view at its own source distance
    (detector at twice that): an explicit calibration (``P`` per view), no ring."""
    arc = XrayGeometry(num_views=len(DISTANCES_MM), image_size=IMAGE_SIZE, start_deg=-60.0,
                       arc_deg=120.0)
    views = []
    for view, (name, theta, sod) in enumerate(zip(arc.view_names, arc.angles_rad,
                                                  DISTANCES_MM)):
        one = XrayGeometry(num_views=1, sod_mm=sod, sdd_mm=2 * sod, image_size=IMAGE_SIZE,
                           pixel_spacing_mm=arc.pixel_spacing_mm,
                           start_deg=float(np.degrees(theta)), tilt_deg=10.0,
                           detector_offset_px=(2.5, -1.5))
        views.append(dict(name=name, image=f'{name}.png', height=IMAGE_SIZE[0],
                          width=IMAGE_SIZE[1], P=one.lidar2img(0)[:3].tolist()))
    return dict(world_frame='ct', units='mm', views=views)


def tolerance_mm(extents):
    """The ring test's bound for exact 2D boxes: max(1 mm, 10 % of the largest extent)."""
    return max(1.0, 0.1 * float(np.max(extents)))


@pytest.fixture(scope='module')
def arc_dataset(tmp_path_factory):
    """The demo converted on :func:`arc_views` (3 cases, 7 views of 96^2)."""
    root = tmp_path_factory.mktemp('arc')
    calibration = str(root / 'calibration.json')
    with open(calibration, 'w') as f:
        json.dump(arc_views(), f)
    out = str(root / 'out')
    assert main(['demo', '--out', out, '--acquisition', calibration] + DEMO) == 0
    return out, calibration


def test_conversion_follows_the_calibration(arc_dataset):
    out, calibration = arc_dataset
    expected = acquisition_from_dict(read_json(calibration), calibration)
    mats = expected.view_matrices()
    paths = split_file_paths(out, 'demo')
    cases = 0
    for split in ('train', 'val'):
        infos = read_pickle(paths[split]['pkl'])
        geometry = infos['metainfo']['geometry']
        # the calibration itself is recorded, and reads back to the same matrices
        assert geometry['calibration']['views'][3]['P'] == arc_views()['views'][3]['P']
        assert geometry['num_views'] == 7 and geometry['image_size'] == list(IMAGE_SIZE)
        again = Acquisition.from_metainfo(geometry)
        for key, value in again.view_matrices().items():
            np.testing.assert_allclose(value, mats[key], rtol=0, atol=1e-9)
        coco = read_json(paths[split]['coco'])
        for info in infos['data_list']:
            cases += 1
            for view, (name, image) in enumerate(info['images'].items()):
                assert name == expected.view_names[view]
                np.testing.assert_allclose(image['lidar2img'], mats['lidar2img'][view],
                                           rtol=0, atol=1e-9)
                assert osp.isfile(osp.join(out, image['img_path']))
        for image in coco['images']:
            np.testing.assert_allclose(image['lidar2img'],
                                       mats['lidar2img'][image['view_index']], atol=1e-9)
    assert cases == 3


def test_exact_2d_boxes_triangulate_to_the_3d_centres(arc_dataset):
    """The triangulation baseline on the converter's exact 2D boxes of the non-ring
    views: every finding within the ring test's bound."""
    out, _ = arc_dataset
    paths = split_file_paths(out, 'demo')
    checked = 0
    for split in ('train', 'val'):
        for info in read_pickle(paths[split]['pkl'])['data_list']:
            lidar2img = np.array([img['lidar2img'] for img in info['images'].values()])
            boxes, labels, view_ids = [], [], []
            for view, name in enumerate(info['images']):
                for inst in info['cam_instances'][name]:
                    boxes.append(inst['bbox'])
                    labels.append(inst['bbox_label'])
                    view_ids.append(view)
            preds = triangulate_case(lidar2img, np.array(boxes), np.ones(len(boxes)),
                                     np.array(labels), np.array(view_ids),
                                     bounds_mm=ct_bounds(info))
            assert len(preds) == len(info['instances']), info['token']
            centres = np.array([p['bbox_3d'][:3] for p in preds]).reshape(-1, 3)
            for inst in info['instances']:
                gt = np.asarray(inst['bbox_3d'])
                dist = np.linalg.norm(centres - gt[:3], axis=1).min()
                assert dist <= tolerance_mm(gt[3:6]), (info['token'], dist)
                checked += 1
    assert checked >= 3


@pytest.mark.parametrize('flags', [['--views', '7'], ['--sod', '300'], ['--sdd', '600'],
                                   ['--image-size', '96'], ['--pixel-spacing', '4']])
def test_acquisition_with_ring_flags_is_refused(tmp_path, capsys, flags):
    calibration = tmp_path / 'calibration.json'
    calibration.write_text(json.dumps(arc_views()))
    out = tmp_path / 'out'
    code = main(['demo', '--out', str(out), '--acquisition', str(calibration)] + flags + DEMO)
    one_line_error(capsys, code, f'--acquisition {calibration}', flags[0], 'cannot be combined')
    assert not out.exists()


def test_bad_calibration_file_is_refused(tmp_path, capsys):
    bad = arc_views()
    bad['views'][2]['P'][2] = list(bad['views'][2]['P'][1])      # rows dependent
    calibration = tmp_path / 'calibration.json'
    calibration.write_text(json.dumps(bad))
    out = tmp_path / 'out'
    code = main(['demo', '--out', str(out), '--acquisition', str(calibration)] + DEMO)
    one_line_error(capsys, code, str(calibration), 'views[2]', 'singular')
    code = main(['demo', '--out', str(out), '--acquisition', str(tmp_path / 'none.json')]
                + DEMO)
    one_line_error(capsys, code, 'none.json')
    # a usable file whose source would be inside the body is refused by the checks
    near = arc_views()
    near['views'][4]['P'] = XrayGeometry(num_views=1, sod_mm=120.0, sdd_mm=240.0,
                                         image_size=IMAGE_SIZE).lidar2img(0)[:3].tolist()
    calibration.write_text(json.dumps(near))
    code = main(['demo', '--out', str(out), '--acquisition', str(calibration)] + DEMO)
    one_line_error(capsys, code, f'--acquisition {calibration}', 'VIEW_04', 'inside the body')
    assert not out.exists()


def test_mirror_symmetry_of_acquisitions():
    """The demo mirrors the base render only where the views are mirror-symmetric;
    otherwise it renders the mirrored CT (the conversion above does)."""
    from data_converters.sources.demo import mirror_order
    ring = XrayGeometry(num_views=10, image_size=(32, 32))
    assert mirror_order(ring.to_acquisition()) == [(10 - i) % 10 for i in range(10)]
    tilted = XrayGeometry(num_views=5, image_size=(32, 32), tilt_deg=10.0)
    assert mirror_order(tilted.to_acquisition()) == [(5 - i) % 5 for i in range(5)]
    symmetric_arc = XrayGeometry(num_views=7, image_size=(32, 32), start_deg=-60.0,
                                 arc_deg=120.0)
    assert mirror_order(symmetric_arc.to_acquisition()) == [6 - i for i in range(7)]
    offset = XrayGeometry(num_views=4, image_size=(32, 32), detector_offset_px=(2.0, 0.0))
    assert mirror_order(offset.to_acquisition()) is None
    assert mirror_order(acquisition_from_dict(arc_views(), 'arc')) is None

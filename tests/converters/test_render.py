"""DRR rendering (data_converters/render.py) against the camera model (geometry.py).

A bead phantom is rendered by DiffDRR; every bead centre projected with ``lidar2img`` must
land on the centroid of its rendered blob within 0.5 px in every view, for the plain
DiffDRR loop and for the fast paths the converter uses, for several view counts and a
non-square detector; and within 0.1 px for the converter's renderer on acquisitions that
are no plain ring (a tilted 120-degree arc with an offset detector, an explicit
calibration with uneven source distances), whose rays come from the views' matrices.
"""
import functools

import numpy as np
import pytest
import torch

from data_converters import render
from data_converters.density import WATER_RELATIVE
from projects.mv2d_xray.core.geometry import XrayGeometry, project_points

# An anisotropic CT grid finer than the detector pixel seen at the isocentre (2.4 mm *
# 300 / 600 = 1.2 mm), so the fast path crops and resamples every axis.
SPACING = (0.6, 0.5, 0.75)          # (row, col, slice) mm
SHAPE = (64, 80, 48)                # (rows, cols, slices): 38.4 x 40 x 36 mm
BEADS_CT = np.array([[9.0, -7.0, 6.0], [-11.0, 5.0, -8.0], [2.0, 12.0, 11.0]])
BEAD_RADIUS_MM = 2.5
BEAD_HU = 2000.0                    # density 3 (air around it: density 0)


@pytest.fixture(autouse=True, scope='module')
def one_torch_thread():
    """The renders here are tiny: one thread avoids waiting on a busy second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_geometry(num_views, image_size=(40, 56)):
    return XrayGeometry(num_views=num_views, sod_mm=300.0, sdd_mm=600.0,
                        image_size=image_size, pixel_spacing_mm=2.4)


def voxel_ct(index):
    """ct coordinates ``(..., 3)`` of voxel indices ``(..., 3)`` ``(i, j, k)`` (geometry.py's
    frame: x along columns, y along rows, z along slices, origin at the volume centre)."""
    pos = (index - (np.array(SHAPE) - 1) / 2) * SPACING
    return pos[..., [1, 0, 2]]


@functools.lru_cache(maxsize=None)
def ball_volume(centre, radius=BEAD_RADIUS_MM, background_hu=-1000.0, supersample=3):
    """HU volume ``SHAPE`` with one ball of ``BEAD_HU`` at ``centre`` (ct mm), partial-volume
    weighted so that its mass centroid is the ball centre to well under a voxel."""
    centre = np.array(centre)
    offsets = ((np.arange(supersample) + 0.5) / supersample - 0.5)
    sub = np.stack(np.meshgrid(offsets, offsets, offsets, indexing='ij'), -1).reshape(-1, 3)
    index = np.stack(np.indices(SHAPE), -1)
    near = np.abs(voxel_ct(index) - centre).max(-1) <= radius + max(SPACING)
    points = voxel_ct(index[near][:, None] + sub)                 # (M, S^3, 3)
    fill = np.zeros(SHAPE)
    fill[near] = (np.linalg.norm(points - centre, axis=-1) <= radius).mean(-1)
    volume = (background_hu + fill * (BEAD_HU - background_hu)).astype(np.float32)
    volume.flags.writeable = False                                 # shared via the cache
    return volume


def bead_volume(index, **kwargs):
    return ball_volume(tuple(BEADS_CT[index]), **kwargs)


def blob_centroid(image):
    """Intensity-weighted centroid ``(u, v)`` of an image, pixel centres at ``c + 0.5``."""
    rows, cols = np.indices(image.shape)
    weight = image / image.sum()
    return np.array([((cols + 0.5) * weight).sum(), ((rows + 0.5) * weight).sum()])


PATHS = {
    'plain_siddon_loop': render.render_views_reference,
    'fast_trilinear': render.render_views,          # the converter's default
    'fast_siddon': lambda *a: render.render_views(*a, renderer='siddon'),
}


@pytest.mark.parametrize('num_views,image_size', [(10, (48, 64)), (4, (48, 64)),
                                                  (7, (56, 44))])
@pytest.mark.parametrize('path', sorted(PATHS))
def test_beads_project_onto_blob_centroids(path, num_views, image_size):
    geometry = make_geometry(num_views, image_size)
    lidar2img = geometry.view_matrices()['lidar2img']
    for index, centre in enumerate(BEADS_CT):
        images = PATHS[path](bead_volume(index), SPACING, geometry)
        assert images.shape == (num_views, *image_size) and images.dtype == np.float32
        expected, depth = project_points(lidar2img, centre[None])      # (N, 1, 2)
        assert (depth > 0).all()
        for view in range(num_views):
            image = images[view]
            # the whole blob is inside the image, away from the border
            assert image[[0, -1]].max() == 0 and image[:, [0, -1]].max() == 0
            error = blob_centroid(image) - expected[view, 0]
            assert np.abs(error).max() < 0.5, (path, view, centre, error)


def test_fast_paths_match_plain_loop():
    """Beyond the centroid: the images themselves agree with the plain DiffDRR loop (a
    10 mm ball: big enough for the pixel grid to sample its mass well)."""
    geometry = make_geometry(5)
    volume = ball_volume((3.0, -2.0, 1.0), radius=10.0)
    plain = render.render_views_reference(volume, SPACING, geometry)
    peak = plain.max()
    exact = render.render_views(volume, SPACING, geometry, renderer='siddon',
                                resample=False)
    np.testing.assert_allclose(exact, plain, atol=1e-4 * peak)   # crop + layouts: exact
    fast = render.render_views(volume, SPACING, geometry)       # trilinear, resampled
    # the same mass (line integrals are preserved) ...
    np.testing.assert_allclose(fast.sum((1, 2)), plain.sum((1, 2)), rtol=0.01)
    # ... and the same shape, up to the blur of voxels as large as a pixel
    assert np.abs(fast - plain).mean() < 0.01 * peak
    # Siddon on the resampled voxels aliases (pixel sums off by ~3 %), hence not default
    blocky = render.render_views(volume, SPACING, geometry, renderer='siddon',
                                 resample=True)
    assert np.abs(blocky - plain).mean() < 0.02 * peak


@pytest.mark.parametrize('renderer', render.RENDERERS)
def test_renders_of_blocks_add_up(renderer):
    """Rendering is one linear operator of the full grid's densities: a change confined
    to a block renders on its own and adds (what the demo builder relies on)."""
    geometry = make_geometry(4)
    renderer = render.XrayRenderer(geometry, renderer=renderer)
    body = WATER_RELATIVE(ball_volume((1.0, -1.0, 0.0), radius=14.0))
    bead = WATER_RELATIVE(bead_volume(0)) * 0.5
    index = np.argwhere(bead != 0)
    start, stop = index.min(0) - (2, 1, 3), index.max(0) + (1, 4, 2)
    block = bead[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
    together = renderer.render_density(body + bead, SPACING)
    apart = (renderer.render_density(body, SPACING) +
             renderer.render_density(block, SPACING, offset=start, volume_shape=SHAPE))
    np.testing.assert_allclose(apart, together, atol=1e-4 * together.max())
    assert not np.allclose(renderer.render_density(body, SPACING), together,
                           atol=1e-2 * together.max())      # the bead does show


def test_lidar2img_matches_diffdrr_perspective_projection():
    geometry = make_geometry(10, (48, 64))
    subject = render.make_subject(np.zeros((4, 5, 6), np.float32), SPACING)
    drr = render.build_drr(subject, geometry)
    points_ct = np.concatenate([BEADS_CT, [[0.0, 0.0, 0.0], [30.0, -25.0, 15.0]]])
    points_world = torch.tensor(points_ct * [-1.0, -1.0, 1.0], dtype=torch.float32)
    poses = render.view_poses(geometry)
    uv_diffdrr = drr.perspective_projection(
        poses, points_world[None].expand(geometry.num_views, -1, -1)).numpy()
    uv_ours, _ = project_points(geometry.view_matrices()['lidar2img'], points_ct[None])
    # DiffDRR's (u, v) are measured from the corner of the image, like ours
    np.testing.assert_allclose(uv_ours, uv_diffdrr, atol=1e-3)


def test_rendering_is_deterministic_and_independent_of_ray_pieces():
    geometry = make_geometry(3, (20, 28))
    volume = bead_volume(1, background_hu=-400.0)
    first = render.render_views(volume, SPACING, geometry)
    second = render.render_views(volume, SPACING, geometry)
    assert first.tobytes() == second.tobytes()
    assert render.to_uint8(first).tobytes() == render.to_uint8(second).tobytes()
    # cutting the rays into other pieces (memory bound) changes nothing
    pieces = render.render_views(volume, SPACING, geometry, patch_size=7)
    np.testing.assert_allclose(pieces, first, rtol=1e-5, atol=1e-4)
    # nor does the thread count (on CPU a piece is split into one batch item per thread)
    torch.set_num_threads(2)
    try:
        threads = render.render_views(volume, SPACING, geometry, patch_size=4)
    finally:
        torch.set_num_threads(1)
    np.testing.assert_allclose(threads, first, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    geometry = make_geometry(3)
    volume = bead_volume(2, background_hu=-400.0)
    for renderer in render.RENDERERS:
        cpu = render.render_views(volume, SPACING, geometry, renderer=renderer)
        cuda = render.render_views(volume, SPACING, geometry, 'cuda', renderer=renderer)
        again = render.render_views(volume, SPACING, geometry, 'cuda', renderer=renderer)
        assert cuda.tobytes() == again.tobytes()
        np.testing.assert_allclose(cuda, cpu, rtol=1e-4, atol=1e-3)


def test_hu_to_density_is_fixed_and_finite():
    hu = np.array([-2048.0, -1000.0, -1200.0, 0.0, 1000.0])
    np.testing.assert_allclose(WATER_RELATIVE(hu), [0, 0, 0, 1, 2])
    # the same HU gives the same density whatever else is in the volume (DiffDRR's own
    # conversion rescales by each volume's min / max) and a uniform volume is finite
    np.testing.assert_allclose(WATER_RELATIVE(np.array([0.0, 3000.0]))[0], 1.0)
    uniform = render.render_views(np.full((6, 6, 6), 40.0, np.float32), (1, 1, 1),
                                  make_geometry(2, (8, 8)))
    assert np.isfinite(uniform).all() and uniform.max() > 0


def test_to_uint8_fixed_window():
    values = np.array([-5.0, 0.0, render.WINDOW_MM / 2, render.WINDOW_MM, 2 * render.WINDOW_MM])
    np.testing.assert_array_equal(render.to_uint8(values), [0, 0, 128, 255, 255])
    assert render.to_uint8(values).dtype == np.uint8


def test_resample_keeps_mass_and_centroid():
    rng = np.random.default_rng(0)
    density = torch.from_numpy(rng.random((23, 17, 9)).astype(np.float32))
    spacing = (0.5, 0.7, 2.0)
    coarse, new_spacing, first = render.resample_density(density, spacing, 1.6)
    assert new_spacing == pytest.approx((1.6, 1.6, 2.0))    # slices are left alone
    assert coarse.shape[2] == 9 and coarse.shape[0] < 23 and coarse.shape[1] < 17

    def mass_and_centroid(vol, sp, origin):
        idx = np.stack(np.meshgrid(*(np.arange(n) for n in vol.shape), indexing='ij'), -1)
        pos = (idx * sp + origin).reshape(-1, 3)
        weight = vol.numpy().reshape(-1) * np.prod(sp)
        return weight.sum(), (pos * weight[:, None]).sum(0) / weight.sum()

    mass, centroid = mass_and_centroid(density, np.array(spacing), 0.0)
    mass2, centroid2 = mass_and_centroid(coarse, np.array(new_spacing),
                                         np.array(first) * spacing)
    assert mass2 == pytest.approx(mass, rel=1e-5)
    np.testing.assert_allclose(centroid2, centroid, atol=1e-4)


def test_bad_arguments():
    geometry = make_geometry(2, (8, 8))
    with pytest.raises(ValueError, match='renderer'):
        render.XrayRenderer(geometry, renderer='raymarch')
    with pytest.raises(ValueError, match='3-D'):
        render.render_views(np.zeros((4, 4)), (1, 1, 1), geometry)


# -- acquisitions other than the plain ring ------------------------------------------------
def tilted_arc():
    """A C-arm: 7 views over a 120-degree arc, the orbit tilted by 10 degrees, the
    principal point a few pixels off the image centre."""
    return XrayGeometry(num_views=7, sod_mm=300.0, sdd_mm=600.0, image_size=(48, 64),
                        pixel_spacing_mm=2.4, start_deg=-30.0, arc_deg=120.0, tilt_deg=10.0,
                        detector_offset_px=(3.5, -2.25))


def uneven_calibration():
    """An explicit calibration (``P`` per view) of 5 views with uneven source distances
    (240-340 mm), focal lengths and principal points, an elevated view and a rolled one."""
    views = []
    for i, (theta_deg, elev_deg, roll_deg, sod, focal, du, dv) in enumerate([
            (0, 0, 0, 300, 250, 0, 0), (35, 8, 0, 240, 215, 2.5, -1), (80, -5, 6, 340, 290, -3, 2),
            (140, 12, 0, 270, 230, 1, 1.5), (205, 0, -4, 320, 265, -1.5, -2.5)]):
        ring = XrayGeometry(num_views=1, sod_mm=sod, sdd_mm=2 * sod, start_deg=theta_deg,
                            tilt_deg=elev_deg)
        rt = ring.lidar2cam(0)
        c, s = np.cos(np.radians(roll_deg)), np.sin(np.radians(roll_deg))
        roll = np.eye(4)
        roll[:2, :2] = [[c, -s], [s, c]]            # about the central ray
        k = np.array([[focal, 0, 32 + du], [0, focal, 24 + dv], [0, 0, 1.0]])
        p = k @ (roll @ rt)[:3]
        views.append(dict(name=f'VIEW_{i:02d}', height=48, width=64, P=(2.0 * p).tolist()))
    return dict(world_frame='ct', units='mm', views=views)


def acquisitions():
    from projects.mv2d_xray.core.acquisition import acquisition_from_dict

    # the blades source's turntable: 12 views, 400 / 800 mm (magnification 2, as here)
    turntable = XrayGeometry(num_views=12, sod_mm=400.0, sdd_mm=800.0, image_size=(48, 64),
                             pixel_spacing_mm=2.4)
    return {'blade_turntable': turntable.to_acquisition(),
            'tilted_arc': tilted_arc().to_acquisition(),
            'uneven_calibration': acquisition_from_dict(uneven_calibration(), 'uneven')}


@pytest.mark.parametrize('name', ['tilted_arc', 'uneven_calibration', 'blade_turntable'])
def test_beads_project_onto_blob_centroids_for_any_acquisition(name):
    """The converter's renderer traces each view's rays from its matrices: bead centres
    projected with ``lidar2img`` land on their blobs' centroids within 0.1 px."""
    acquisition = acquisitions()[name]
    lidar2img = acquisition.view_matrices()['lidar2img']
    worst = 0.0
    for index, centre in enumerate(BEADS_CT):
        images = render.render_views(bead_volume(index), SPACING, acquisition)
        assert images.shape == (acquisition.num_views, 48, 64)
        expected, depth = project_points(lidar2img, centre[None])
        assert (depth > 0).all()
        for view in range(acquisition.num_views):
            image = images[view]
            assert image[[0, -1]].max() == 0 and image[:, [0, -1]].max() == 0
            error = np.abs(blob_centroid(image) - expected[view, 0]).max()
            worst = max(worst, error)
    assert worst < 0.1, (name, worst)


def test_ring_rays_from_matrices_are_diffdrrs():
    """For a ring the rays built from the matrices are DiffDRR's own (its detector and
    poses), to float32 rounding; DiffDRR's poses cover no other acquisition."""
    geometry = make_geometry(6, (20, 28))
    subject = render.make_subject(np.zeros((4, 5, 6), np.float32), SPACING)
    drr = render.build_drr(subject, geometry)
    poses = render.view_poses(geometry)
    for view in range(geometry.num_views):
        source, target = drr.detector(type(poses)(poses.matrix[view:view + 1]), None)
        ours_source, ours_target = render.view_rays(geometry.to_acquisition(), view)
        np.testing.assert_allclose(ours_source, source[0, 0].numpy(), atol=1e-4)
        np.testing.assert_allclose(ours_target.reshape(-1, 3), target[0].numpy(), atol=2e-4)
    with pytest.raises(ValueError, match='only a ring'):
        render.render_views_reference(bead_volume(0), SPACING, acquisitions()['tilted_arc'])

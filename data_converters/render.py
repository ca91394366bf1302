"""DRR rendering with DiffDRR for any acquisition: an
:class:`~projects.mv2d_xray.core.acquisition.Acquisition` (per-view 4x4 matrices) or an
:class:`~projects.mv2d_xray.core.geometry.XrayGeometry` ring (its acquisition).

Volumes are numpy arrays of Hounsfield units indexed ``[row i, column j, slice k]`` with
DICOM's usual orientation (columns along +x = patient left, rows along +y = posterior,
slices sorted by ascending z = superior), i.e. pylidc's ``(i, j, k)``; ``spacing_mm`` is
``(row, column, slice)``. The ``ct`` frame is centred on the volume (see
``projects/mv2d_xray/core/geometry.py``); DiffDRR's world frame is its RAS version,
``diag(-1, -1, 1) @ ct``.

The rays come from the acquisition's matrices, not from DiffDRR's detector and poses:
view ``v``'s source is its camera centre (``Acquisition.source_position``, ct mm) and the
ray of pixel ``(r, c)`` runs from there through the point of ``img`` ``(c + 0.5, r + 0.5)``
at the camera depth ``d_ref`` (:func:`reference_depth_mm`; the detector's ``sdd_mm`` for a
ring), i.e. ``lidar2img^-1 @ (u d_ref, v d_ref, d_ref, 1)``. Every ray's parameter
``alpha`` (0 at the source, 1 at that point) is then ``depth / d_ref`` with ``depth`` the
camera z (the third row of ``lidar2cam``), so one range of ``alpha`` is one range of depths
on every ray of a view. For a ring these are the rays of DiffDRR's ``DRR(subject, sdd,
...)`` with the poses of :func:`view_poses` (``test_render.py`` checks the projection).

Attenuation is set from HU explicitly and identically for every scan of a source, by the
source's :class:`~data_converters.density.DensityMapping` (default
:data:`~data_converters.density.WATER_RELATIVE`: ``max(HU + 1000, 0) / 1000``, water = 1,
air and the -2048 padding = 0). Rendered values are line integrals of that density in mm
(water-equivalent path length); :func:`to_uint8` applies one fixed window
(:data:`WINDOW_MM`) to all scans.

Two paths render the same images:

* :class:`XrayRenderer` (what :func:`render_views` and the converter use) prepares the
  density once per case -- cropped to its non-zero bounding box and, where the CT is much
  finer than the smallest detector pixel seen at the isocentre, resampled to that size by
  a mass- and centroid-preserving linear splat (:func:`resample_density`) -- then traces
  each view's rays in memory-bounded pieces through ``DRR.render``, with DiffDRR's
  trilinear renderer (default) or its Siddon renderer, under ``torch.inference_mode``.
  It is one fixed linear operator of the full CT grid's densities, so renders of blocks
  add up (:meth:`XrayRenderer.render_density`);
* :func:`render_views_reference` is the plain DiffDRR loop (full-resolution volume,
  Siddon, one ``drr(pose)`` per view), kept as the reference for tests and
  ``tools/benchmark_render.py``; it covers the plain ring only (DiffDRR's poses).

On LIDC-IDRI-0001 at 256^2 (2 CPU cores shared with other jobs) the first takes 1.3-1.7 s
per view against 11-12 s for the second (7-9x), with a mean absolute difference of
0.17 % of the line-integral range; ``tests/converters/test_render.py`` checks both against
the camera model with a bead phantom (rings, and a tilted limited arc with an offset
detector and an explicit calibration of uneven distances for the first).
"""
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from data_converters.density import WATER_RELATIVE, DensityMapping
from projects.mv2d_xray.core.acquisition import Acquisition, as_acquisition
from projects.mv2d_xray.core.geometry import (XrayGeometry, index_to_ct, index_to_ct_affine,
                                              project_points, unproject_points)

#: Fixed display window: water-equivalent path length (mm) mapped to white.
WINDOW_MM = 400.0
#: Renderers of DiffDRR that :class:`XrayRenderer` can drive.
RENDERERS = ('trilinear', 'siddon')
#: Axes are resampled only when the target voxel is at least this many times the CT
#: spacing: a smaller gain in speed is not worth the extra blur of the splat.
MIN_RESAMPLE_RATIO = 1.5
#: Rays per renderer call on CPU: small pieces stay in cache (Siddon traces 256-1024
#: rays per call up to 2x faster than 16k; trilinear does not mind) and keep memory low.
CPU_RAYS_PER_CALL = 1024


def make_subject(density, spacing_mm: Sequence[float],
                 origin_mm: Optional[Sequence[float]] = None):
    """A DiffDRR subject (``orientation='AP'``) whose world frame is RAS of ``ct``.

    Args:
        density (np.ndarray | torch.Tensor): ``(rows, cols, slices)`` density.
        spacing_mm (Sequence[float]): ``(row, col, slice)`` voxel size in mm.
        origin_mm (Sequence[float], optional): ``ct`` position ``(x, y, z)`` of voxel
            ``(0, 0, 0)``. Defaults to centring the volume on the ``ct`` origin (DiffDRR's
            ``center_volume=True``); give it for a cropped or resampled volume so that its
            voxels stay where they were in the full scan.

    Returns:
        torchio.Subject: the subject; ``subject.density`` holds ``density`` unchanged.
    """
    from diffdrr.data import read
    from torchio import ScalarImage
    tensor = torch.as_tensor(density, dtype=torch.float32).contiguous()
    if origin_mm is None:
        # DiffDRR's `center_volume`: voxel (0, 0, 0) at minus half the extent.
        origin_mm = index_to_ct((0, 0, 0), tensor.shape, spacing_mm)
    ct_affine = index_to_ct_affine(spacing_mm, origin_mm)     # index (i, j, k) -> ct (LPS)
    ras_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ct_affine
    # `read` computes its own min / max density from the image it is given; we pass the
    # final density and overwrite its result, so that step is harmless (and NaN-free,
    # every value of a density lies in DiffDRR's "soft tissue" HU band).
    subject = read(ScalarImage(tensor=tensor[None], affine=ras_affine), orientation='AP',
                   center_volume=False)
    subject.density.set_data(tensor[None])
    return subject


def crop_to_content(density: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """Crop a density volume to the bounding box of its non-zero voxels.

    Exact: the dropped voxels are 0, and a ray through zeros adds nothing (the trilinear
    renderer pads with zeros outside the volume, so interpolation at the border is
    unchanged too).

    Returns:
        tuple: the cropped ``(rows', cols', slices')`` volume (a view) and the index of its
        first voxel in ``density``. An all-zero volume is cut to one voxel.
    """
    nonzero = density != 0
    in_plane = nonzero.any(dim=2)                       # (rows, cols)
    starts, stops = [], []
    for hits in (in_plane.any(dim=1), in_plane.any(dim=0), nonzero.any(dim=1).any(dim=0)):
        index = torch.nonzero(hits).flatten()
        starts.append(int(index[0]) if len(index) else 0)
        stops.append(int(index[-1]) + 1 if len(index) else 1)
    crop = density[starts[0]:stops[0], starts[1]:stops[1], starts[2]:stops[2]]
    return crop, tuple(starts)


def _splat_axis(volume: torch.Tensor, dim: int, ratio: float, start: float,
                anchor: float) -> Tuple[torch.Tensor, float]:
    """Resample ``volume`` along ``dim`` onto a grid ``ratio`` times coarser.

    Fine sample ``n`` sits at index ``start + n`` of the full grid, coarse samples at
    ``anchor + m * ratio`` (any integer ``m``); every fine sample's value is split between
    its two neighbouring coarse samples with linear weights, divided by ``ratio``. Returns
    the coarse samples that receive anything and the full-grid index of the first.
    """
    num_fine = volume.shape[dim]
    pos = (start + torch.arange(num_fine, dtype=torch.float64) - anchor) / ratio
    first_node = math.floor(float(pos[0]))
    num_coarse = max(math.ceil(float(pos[-1])) - first_node + 1, 2)
    pos = pos - first_node
    lower = pos.floor().clamp(0, num_coarse - 2)
    frac = (pos - lower).to(volume.dtype)
    lower = lower.long()
    shape = [1] * volume.dim()
    shape[dim] = num_fine
    out_shape = list(volume.shape)
    out_shape[dim] = num_coarse
    out = volume.new_zeros(out_shape)
    # index_add_ on CPU adds in a fixed order, so the result is deterministic
    out.index_add_(dim, lower, volume * ((1 - frac) / ratio).view(shape))
    out.index_add_(dim, lower + 1, volume * (frac / ratio).view(shape))
    return out, anchor + first_node * ratio


def resample_density(density: torch.Tensor, spacing_mm: Sequence[float], voxel_mm: float,
                     start: Optional[Sequence[float]] = None,
                     anchor: Optional[Sequence[float]] = None,
                     min_ratio: float = MIN_RESAMPLE_RATIO
                     ) -> Tuple[torch.Tensor, Tuple[float, ...], Tuple[float, ...]]:
    """Coarsen the axes of a density volume that are much finer than ``voxel_mm``.

    Each axis whose spacing ``s`` satisfies ``voxel_mm >= min_ratio * s`` gets a grid of
    spacing ``voxel_mm`` with a sample at ``anchor``; every fine voxel's mass is split
    between its two nearest coarse samples with linear weights (the adjoint of linear
    interpolation, i.e. a tent filter). Unlike average pooling in integer blocks this keeps
    both the mass (so line integrals) and the centre of mass exactly, for any ratio: a
    small dense finding projects to the same place as in the full-resolution volume. (No
    library resampler does both: scipy's ``zoom`` and torchio's ``Resample`` interpolate,
    which conserves neither when coarsening.) It is linear, and with a fixed ``anchor``
    any sub-block of a volume lands on the same coarse grid as the whole.

    Args:
        density (torch.Tensor): ``(rows, cols, slices)`` on CPU.
        spacing_mm (Sequence[float]): ``(row, col, slice)`` spacing.
        voxel_mm (float): target voxel size.
        start (Sequence[float], optional): index of ``density[0, 0, 0]`` in the full
            volume's grid. Defaults to ``(0, 0, 0)``.
        anchor (Sequence[float], optional): full-grid index where a coarse sample sits.
            Defaults to the centre of ``density``.
        min_ratio (float): resample an axis only if ``voxel_mm / spacing >= min_ratio``.

    Returns:
        tuple: the volume, its ``(row, col, slice)`` spacing, and the full-grid (fine)
        index of its voxel ``(0, 0, 0)``.
    """
    start = [0.0] * 3 if start is None else [float(x) for x in start]
    if anchor is None:
        anchor = [st + (n - 1) / 2 for st, n in zip(start, density.shape)]
    spacing, first = [float(x) for x in spacing_mm], list(start)
    for dim in range(3):
        ratio = voxel_mm / spacing[dim]
        if ratio >= min_ratio:
            density, first[dim] = _splat_axis(density, dim, ratio, start[dim], anchor[dim])
            spacing[dim] *= ratio
    return density, tuple(spacing), tuple(first)


def _ray_axis_layout(density: torch.Tensor, axis: int) -> torch.Tensor:
    """``density`` (same shape and values) stored with ``axis`` (0 or 1) fastest in memory,
    then the other in-plane axis, then the slices.

    DiffDRR samples ``density.permute(2, 1, 0)`` with ``grid_sample``, which walks each
    ray's samples in order; when the ray runs along the axis that is contiguous in memory
    the samples hit the cache. Measured on CPU (231x231x133 volume): 57 ns per trilinear
    sample along the contiguous axis, 100-180 ns along the others.
    """
    if axis == 0:
        return density.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    return density.permute(2, 0, 1).contiguous().permute(1, 2, 0)


@dataclass
class RayPieces:
    """The rays one :meth:`XrayRenderer.render_density` call traces, cut into pieces.

    Attributes:
        views (list[int]): the views, in output order.
        rays (list[tuple]): per view the source ``(1, 1, 3)`` and the centres
            ``(1, h * w, 3)`` of its ``(h, w)`` planned pixels, in DiffDRR's world frame
            (RAS of ``ct``, mm).
        outputs (list[torch.Tensor]): per view the ``(h, w)`` line integrals (mm), zero
            until traced.
        tasks (list[tuple[int, int]]): ``(position in views, first ray)`` of every piece.
    """
    views: List[int]
    rays: List[Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    outputs: List[torch.Tensor] = field(default_factory=list)
    tasks: List[Tuple[int, int]] = field(default_factory=list)


def reference_depth_mm(acquisition: Acquisition, view: int) -> float:
    """The camera depth (mm) of view ``view``'s ray targets, where the ray parameter
    ``alpha`` is 1: the detector (``sdd_mm``) for a ring, else twice the depth of the
    isocentre (any depth beyond the volume would do; ``alpha = depth / d_ref``)."""
    if acquisition.ring is not None:
        return float(acquisition.ring.sdd_mm)
    return 2.0 * acquisition.source_distances_mm[view]


def view_rays(acquisition: Acquisition, view: int) -> Tuple[np.ndarray, np.ndarray]:
    """The rays of view ``view`` from its matrices, in DiffDRR's world frame (RAS of
    ``ct``, mm).

    Returns:
        tuple: the source ``(3,)`` (the camera centre) and ``(H, W, 3)`` ray targets: the
        point of each pixel centre's ray at the camera depth
        :func:`reference_depth_mm`, float64.
    """
    height, width = acquisition.image_size
    rows, cols = np.indices((height, width), dtype=np.float64)
    uv = np.stack([cols + 0.5, rows + 0.5], -1).reshape(-1, 2)
    depth = np.full(len(uv), reference_depth_mm(acquisition, view))
    target = unproject_points(acquisition.lidar2img(view), uv, depth)       # (H * W, 3) ct
    ct_to_ras = np.array([-1.0, -1.0, 1.0])
    return (acquisition.source_position(view) * ct_to_ras,
            (target * ct_to_ras).reshape(height, width, 3))


def _plain_ring(geometry) -> XrayGeometry:
    """The ring of ``geometry`` for DiffDRR's own detector and poses, which model neither a
    tilted orbit nor an offset detector.

    Raises:
        ValueError: an acquisition that is no such ring.
    """
    ring = geometry if isinstance(geometry, XrayGeometry) else geometry.ring
    if ring is None or ring.tilt_deg != 0 or any(ring.detector_offset_px):
        raise ValueError('DiffDRR\'s own detector and poses (render_views_reference, '
                         'view_poses, build_drr) cover only a ring without tilt or detector '
                         'offset; render other acquisitions with XrayRenderer')
    return ring


def view_poses(geometry: XrayGeometry):
    """DiffDRR poses of all views of a ring without tilt or detector offset,
    ``RigidTransform`` of batch ``num_views``: view ``i`` is ``convert(rotation=(theta_i,
    0, 0), translation=(0, sod_mm, 0), 'euler_angles', 'ZXY')``."""
    from diffdrr.pose import convert
    geometry = _plain_ring(geometry)
    num = geometry.num_views
    rotation = torch.zeros(num, 3)
    rotation[:, 0] = torch.tensor(geometry.angles_rad, dtype=torch.float32)
    translation = torch.zeros(num, 3)
    translation[:, 1] = geometry.sod_mm
    return convert(rotation, translation, parameterization='euler_angles',
                   convention='ZXY')


def build_drr(subject, geometry: XrayGeometry, renderer: str = 'siddon', **kwargs):
    """DiffDRR's ``DRR`` for the detector of a ring without tilt or detector offset
    (``reverse_x_axis=True``)."""
    from diffdrr.drr import DRR
    geometry = _plain_ring(geometry)
    height, width = geometry.image_size
    return DRR(subject, sdd=geometry.sdd_mm, height=height, width=width,
               delx=geometry.pixel_spacing_mm, dely=geometry.pixel_spacing_mm,
               reverse_x_axis=True, renderer=renderer, **kwargs)


class XrayRenderer:
    """Renders all views of an acquisition from HU volumes with DiffDRR.

    Per case it (1) converts HU with its ``hu_to_density`` mapping, (2) crops to the non-zero
    bounding box (exact), (3) coarsens axes much finer than the smallest detector pixel
    seen at the isocentre (:attr:`voxel_mm`) with :func:`resample_density`, then (4) traces
    each view's rays (:func:`view_rays`, from the view's matrices), in pieces of at most
    ``patch_size ** 2``, through DiffDRR's ``DRR.render`` under ``torch.inference_mode``.

    Where the speed comes from (CPU; ``tools/benchmark_render.py`` measures it):

    * the trilinear renderer with a step matched to the voxels and per-view depth bounds
      samples each ray ~300 times at 256^2, where Siddon sorts and samples all
      ``rows + cols + slices + 3`` voxel-plane crossings of every ray (1160 for a
      512x512x133 CT; most lie outside the volume for any given ray);
    * resampling to the isocentre pixel (256^2: 0.70 mm -> 1.56 mm in-plane) cuts the
      volume 5x and the samples per ray 2x;
    * the volume is stored twice, each copy with one in-plane axis contiguous, and each
      view samples the copy along which its rays run (:func:`_ray_axis_layout`);
    * pieces of 1024 rays stay in cache, and on CPU the pieces are shared out to one
      single-threaded worker per torch thread (torch's own intra-op threads gain little:
      CPU ``grid_sample`` runs one batch item on one thread).

    Args:
        geometry (Acquisition | XrayGeometry): the views (a ring becomes its
            acquisition, kept as ``self.geometry``).
        device (str): ``'cpu'`` or ``'cuda'`` (any torch device string).
        renderer (str): ``'trilinear'`` (default) or ``'siddon'`` (DiffDRR's exact
            voxel-by-voxel line integrals; slower).
        resample (bool, optional): coarsen axes much finer than the isocentre pixel.
            Defaults to True for ``'trilinear'`` and False for ``'siddon'``: Siddon sums
            voxels without interpolation, and voxels as large as a pixel alias (bead
            centroids then move by up to 0.4 px, 0.03 px with trilinear; see
            ``tests/converters/test_render.py``).
        crop (bool): crop to the non-zero bounding box. Defaults to True.
        step_mm (float, optional): trilinear sample step along the depth (the central ray)
            in mm. Defaults to the smallest voxel spacing after resampling.
        patch_size (int, optional): at most ``patch_size ** 2`` rays per renderer call.
            Defaults to :data:`CPU_RAYS_PER_CALL` rays on CPU and elsewhere to as many as
            ``memory_mb`` allows.
        memory_mb (float): rough bound on the working memory of one renderer call (the
            volume not included; DiffDRR's Siddon needs ~63 kB per ray for a 512x512x133
            CT). Defaults to 2048.
        hu_to_density (DensityMapping): HU -> density of :meth:`render` (the source's).
            Defaults to :data:`~data_converters.density.WATER_RELATIVE`.

    Rendering is deterministic: the sample positions depend only on the geometry and the
    volume (not on how rays are cut into pieces or on the thread count), and every step
    runs with deterministic kernels on CPU and CUDA.
    """

    def __init__(self, geometry: Acquisition, device: str = 'cpu',
                 renderer: str = 'trilinear', resample: Optional[bool] = None,
                 crop: bool = True, step_mm: Optional[float] = None,
                 patch_size: Optional[int] = None, memory_mb: float = 2048.0,
                 hu_to_density: DensityMapping = WATER_RELATIVE):
        if renderer not in RENDERERS:
            raise ValueError(f'renderer must be one of {RENDERERS}, got {renderer!r}')
        if patch_size is not None and patch_size < 1:
            raise ValueError(f'patch_size must be >= 1, got {patch_size}')
        if step_mm is not None and not step_mm > 0:
            raise ValueError(f'step_mm must be > 0, got {step_mm}')
        self.geometry = as_acquisition(geometry)
        self.device = torch.device(device)
        self.renderer = renderer
        self.resample = (renderer == 'trilinear') if resample is None else bool(resample)
        self.crop = crop
        self.step_mm = step_mm
        self.patch_size = patch_size
        self.memory_mb = float(memory_mb)
        self.hu_to_density = hu_to_density
        self._rays: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}    # see _view_rays

    @property
    def voxel_mm(self) -> float:
        """Size (mm) of the smallest detector pixel seen at the isocentre over the views
        (``Acquisition.isocentre_pixel_mm``), the resampling target; for a ring exactly
        ``pixel_spacing_mm * sod_mm / sdd_mm`` (its views' depths of the isocentre differ
        from ``sod_mm`` by rounding)."""
        geo = self.geometry
        if geo.ring is not None:
            return geo.ring.pixel_spacing_mm * geo.ring.sod_mm / geo.ring.sdd_mm
        return min(geo.isocentre_pixel_mm(view) for view in range(geo.num_views))

    def settings(self) -> Dict:
        """The rendering settings, for ``metainfo['converter']``."""
        from importlib.metadata import version
        return dict(renderer=self.renderer, resample=self.resample,
                    voxel_mm=self.voxel_mm if self.resample else None, crop=self.crop,
                    step_mm=self.step_mm, density=self.hu_to_density.description,
                    window_mm=WINDOW_MM, diffdrr=version('diffdrr'))

    # -- per case -------------------------------------------------------------------
    def prepare(self, density, spacing_mm: Sequence[float],
                offset: Sequence[int] = (0, 0, 0),
                volume_shape: Optional[Sequence[int]] = None):
        """Density -> ``(density, spacing_mm, origin_mm)``, cropped and resampled.

        The crop and the resampling grid (anchored at the full volume's centre) keep every
        voxel where it is in ``ct``, so rendering stays one fixed linear operator of the
        full volume's densities.

        Args:
            density (np.ndarray | torch.Tensor): ``(rows, cols, slices)`` water-relative
                density (any sign: differences work too).
            spacing_mm (Sequence[float]): ``(row, col, slice)``.
            offset (Sequence[int]): index of ``density[0, 0, 0]`` in the full volume.
            volume_shape (Sequence[int], optional): shape of the full volume, which
                defines ``ct``. Defaults to ``density``'s shape.

        Returns:
            tuple: density ``(rows', cols', slices')`` float32 tensor on CPU, its
            ``(row, col, slice)`` spacing and the ``ct`` position ``(x, y, z)`` of its
            voxel ``(0, 0, 0)``.
        """
        density = np.asarray(density, dtype=np.float32)
        density = torch.from_numpy(density if density.flags.writeable else density.copy())
        if density.dim() != 3:
            raise ValueError(f'the volume must be 3-D (rows, cols, slices), '
                             f'got shape {tuple(density.shape)}')
        volume_shape = density.shape if volume_shape is None else volume_shape
        centre = (np.asarray(volume_shape, dtype=np.float64) - 1) / 2
        first = np.asarray(offset, dtype=np.float64)
        spacing = tuple(float(s) for s in spacing_mm)
        if self.crop:
            density, start = crop_to_content(density)
            first = first + start
        if self.resample:
            density, spacing, first = resample_density(density, spacing, self.voxel_mm,
                                                       start=first, anchor=centre)
        density = density.contiguous()
        origin = tuple(float(x) for x in index_to_ct(first, volume_shape, spacing_mm))
        return density, spacing, origin

    def _view_plan(self, view: int, shape, spacing, origin, step_mm: float) -> Dict:
        """Which pixels can see the volume in ``view``, and the trilinear samples.

        The volume's box (voxel centres, one voxel wider on each side: beyond that
        interpolation against the zero padding gives 0) bounds both. Its range of camera
        depths (mm along the view's central ray) becomes a range of DiffDRR's ray
        parameter ``alpha`` (0 at the source, 1 at the targets of :func:`view_rays`:
        ``alpha = depth / d_ref`` on every ray, :func:`reference_depth_mm`), on the fixed
        lattice ``depth = k * step_mm``, so the samples do not depend on the box; for a
        ring nothing behind the detector (``d_ref = sdd_mm``) is sampled. Rays whose
        pixel lies outside the box's projection are 0 and not traced.
        """
        geo = self.geometry
        to_ct = index_to_ct_affine(spacing, origin)
        lo = (to_ct @ [-1.0, -1.0, -1.0, 1.0])[:3]                # voxel (-1, -1, -1)
        hi = (to_ct @ [*(float(s) for s in shape[:3]), 1.0])[:3]  # one past the last
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                            for z in (lo[2], hi[2])])
        uv, depth = project_points(geo.lidar2img(view), corners)
        height, width = geo.image_size
        rows, cols = slice(0, height), slice(0, width)
        if depth.min() > 0:         # the box is in front of the source: cull the pixels
            # pixel centres at c + 0.5; one pixel of margin against rounding
            c0, r0 = np.floor(uv.min(axis=0) - 0.5).astype(int)
            c1, r1 = np.ceil(uv.max(axis=0) - 0.5).astype(int)
            rows = slice(min(max(r0, 0), height), max(min(r1 + 1, height), 0))
            cols = slice(min(max(c0, 0), width), max(min(c1 + 1, width), 0))
        plan = dict(rows=rows, cols=cols, params={})
        if self.renderer == 'trilinear':
            d_ref = reference_depth_mm(geo, view)
            k_lo = max(math.floor(depth.min() / step_mm), 0)
            k_hi = math.ceil(depth.max() / step_mm)
            if geo.ring is not None:            # the detector: nothing behind it
                k_hi = min(k_hi, math.floor(d_ref / step_mm))
            k_hi = max(k_hi, k_lo + 1)
            # explicit bounds: DiffDRR would otherwise take them from the rays of each
            # call, so the samples (and the image) would depend on how rays are cut up
            plan['params'] = dict(n_points=k_hi - k_lo + 1,
                                  alphamin=k_lo * step_mm / d_ref,
                                  alphamax=k_hi * step_mm / d_ref)
        return plan

    def _bytes_per_ray(self, shape, n_points: int) -> int:
        # Measured: DiffDRR's Siddon keeps ~44 B per voxel-plane crossing per ray (63 kB
        # per ray for 1160 planes), trilinear ~36 B per sample; 64 B leaves room.
        if self.renderer == 'siddon':
            return 64 * (sum(shape) + 3)
        return 64 * n_points

    def _ray_axis(self, view: int, spacing) -> int:
        """The volume axis (0 = rows, 1 = columns) along which the rays of ``view`` cross
        the most voxels."""
        ray = self.geometry.central_ray(view)       # unit direction in ct
        # columns run along x, rows along y
        return int(abs(ray[0]) / spacing[1] > abs(ray[1]) / spacing[0])

    def _view_rays(self, view: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """:func:`view_rays` of ``view`` as float32 tensors on ``self.device``: the source
        ``(1, 1, 3)`` and the targets ``(H, W, 3)`` in DiffDRR's world frame (mm).

        They depend only on the acquisition, not on the volume, so they are made once per
        renderer and kept (12 bytes per pixel and view): rendering many small blocks (the
        demo's inserted nodules) then does not redo every detector pixel for every block.
        """
        if view not in self._rays:
            source, target = view_rays(self.geometry, view)
            self._rays[view] = (
                torch.as_tensor(source, dtype=torch.float32).reshape(1, 1, 3).to(self.device),
                torch.as_tensor(target, dtype=torch.float32).to(self.device))
        return self._rays[view]

    def render(self, volume_hu: np.ndarray, spacing_mm: Sequence[float],
               views: Optional[Sequence[int]] = None,
               progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """Render the views of a case.

        Args:
            volume_hu (np.ndarray): ``(rows, cols, slices)`` HU, indexed like pylidc.
            spacing_mm (Sequence[float]): ``(row, col, slice)`` voxel size.
            views (Sequence[int], optional): which views. Defaults to all.
            progress (callable, optional): called as ``progress(done, total)`` after each
                piece of rays is traced (from the tracing threads).

        Returns:
            np.ndarray: ``(len(views), H, W)`` float32 line integrals of the density (mm
            of water), in ``img`` rows and columns (as the views' ``lidar2img`` project).
        """
        volume_hu = np.asarray(volume_hu)
        if volume_hu.ndim != 3:
            raise ValueError(f'volume_hu must be 3-D (rows, cols, slices), '
                             f'got shape {volume_hu.shape}')
        return self.render_density(self.hu_to_density(volume_hu), spacing_mm, views,
                                   progress=progress)

    def render_density(self, density, spacing_mm: Sequence[float],
                       views: Optional[Sequence[int]] = None,
                       offset: Sequence[int] = (0, 0, 0),
                       volume_shape: Optional[Sequence[int]] = None,
                       progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """Render densities directly, optionally a block of a larger volume.

        Rendering is linear in the density and the operator depends only on the full
        volume's grid, so the render of ``V + D`` is the render of ``V`` plus that of the
        block of ``D`` where it is non-zero (up to float rounding): a change confined to
        a small block (an inserted nodule) costs only the rays through that block.

        Args:
            density (np.ndarray | torch.Tensor): ``(a, b, c)`` water-relative density.
            spacing_mm (Sequence[float]): ``(row, col, slice)`` voxel size.
            views (Sequence[int], optional): which views. Defaults to all.
            offset (Sequence[int]): index ``(i, j, k)`` of ``density[0, 0, 0]`` in the
                full volume. Defaults to ``(0, 0, 0)``.
            volume_shape (Sequence[int], optional): the full volume's shape, which
                defines ``ct``. Defaults to ``density``'s shape.
            progress (callable, optional): see :meth:`render`.

        Returns:
            np.ndarray: ``(len(views), H, W)`` float32 line integrals in mm, in ``img``
            rows and columns.

        Steps: :meth:`prepare` (crop, resample; keeps ``ct`` positions),
        :meth:`_load_volume`, :meth:`_view_plan` per view (pixels and depth samples),
        :meth:`_rays_per_call`, :meth:`_ray_pieces`, :meth:`_trace`,
        :meth:`_detector_images`.
        """
        views = list(range(self.geometry.num_views)) if views is None else \
            [int(v) for v in views]
        density, spacing, origin = self.prepare(density, spacing_mm, offset, volume_shape)
        shape = tuple(density.shape)
        drr, layouts = self._load_volume(density, spacing, origin)
        del density
        step_mm = self.step_mm or min(spacing)
        plans = {view: self._view_plan(view, shape, spacing, origin, step_mm)
                 for view in views}
        rays_per_call = self._rays_per_call(shape, plans)
        pieces = self._ray_pieces(views, plans, rays_per_call)
        self._trace(drr, layouts, spacing, plans, pieces, rays_per_call, progress)
        return self._detector_images(plans, pieces)

    def _load_volume(self, density: torch.Tensor, spacing: Sequence[float],
                     origin: Sequence[float]) -> Tuple[object, Dict[int, torch.Tensor]]:
        """The DRR of a prepared volume and its two memory layouts, on ``self.device``.

        Args:
            density (torch.Tensor): ``(rows', cols', slices')`` prepared density
                (:meth:`prepare`).
            spacing (Sequence[float]): its ``(row, col, slice)`` voxel size in mm.
            origin (Sequence[float]): ``ct`` position ``(x, y, z)`` of its voxel
                ``(0, 0, 0)`` in mm.

        Returns:
            tuple: DiffDRR's ``DRR`` (holding layout 0 as its density) and
            ``{axis: density}`` with ``axis`` (0 = rows, 1 = columns) contiguous in memory
            (:func:`_ray_axis_layout`).
        """
        layouts = {axis: _ray_axis_layout(density, axis) for axis in (0, 1)}
        # The subject only gives the DRR its affine (world -> voxels); a one-voxel
        # placeholder with the volume's affine spares `read` converting (and torchio
        # copying) the whole volume. The volumes and the rays (`view_rays`) are passed to
        # `DRR.render`, so DiffDRR's own detector is unused: a 1-pixel placeholder.
        from diffdrr.drr import DRR
        drr = DRR(make_subject(torch.zeros(1, 1, 1), spacing, origin), sdd=1.0, height=1,
                  width=1, delx=1.0, renderer=self.renderer)
        drr.density = layouts[0]
        drr = drr.to(self.device)
        return drr, {0: drr.density, 1: layouts[1].to(self.device)}

    def _rays_per_call(self, shape: Sequence[int], plans: Dict[int, Dict]) -> int:
        """Most rays per ``DRR.render`` call: ``patch_size ** 2`` when given, else as many
        as ``memory_mb`` allows for a volume of ``shape`` voxels and the plans' samples
        per ray (at most :data:`CPU_RAYS_PER_CALL` on CPU; at least 1)."""
        if self.patch_size is not None:
            return self.patch_size ** 2
        n_points = max([p['params'].get('n_points', 0) for p in plans.values()] + [0])
        rays_per_call = int(self.memory_mb * 2 ** 20 // self._bytes_per_ray(shape, n_points))
        if self.device.type == 'cpu':
            rays_per_call = min(rays_per_call, CPU_RAYS_PER_CALL)
        return max(rays_per_call, 1)

    def _ray_pieces(self, views: Sequence[int], plans: Dict[int, Dict],
                    rays_per_call: int) -> RayPieces:
        """The rays of the planned pixels of every view, cut into pieces.

        Args:
            views (Sequence[int]): the views, in output order.
            plans (dict): ``{view: plan}`` of :meth:`_view_plan` (the pixels to trace).
            rays_per_call (int): rays per piece.

        Returns:
            RayPieces: the rays, zero outputs and pieces of every view.
        """
        pieces = RayPieces(views=list(views))
        rays, outputs, tasks = pieces.rays, pieces.outputs, pieces.tasks
        with torch.inference_mode():
            for pos, view in enumerate(views):
                plan = plans[view]
                source, target = self._view_rays(view)
                target = target[plan['rows'], plan['cols']]
                rays.append((source, target.reshape(1, -1, 3)))
                outputs.append(torch.zeros(target.shape[:2]))
                tasks += [(pos, start) for start in range(0, outputs[-1].numel(),
                                                            rays_per_call)]
        return pieces

    def _trace(self, drr, layouts: Dict[int, torch.Tensor], spacing: Sequence[float],
               plans: Dict[int, Dict], pieces: RayPieces, rays_per_call: int,
               progress: Optional[Callable[[int, int], None]] = None) -> None:
        """Trace every piece of :meth:`_ray_pieces` into its view's ``outputs`` (line
        integrals in mm), each view through the layout its rays run along; on CPU one
        single-threaded piece per torch thread."""
        views, rays, outputs = pieces.views, pieces.rays, pieces.outputs
        total, done, lock = len(pieces.tasks), [0], threading.Lock()

        def trace(task):
            pos, start = task
            source, target = rays[pos]
            view = views[pos]
            with torch.inference_mode():      # thread-local: set it in every worker
                piece = drr.render(layouts[self._ray_axis(view, spacing)], source,
                                   target[:, start:start + rays_per_call],
                                   **plans[view]['params'])
                # written into memory of the main thread: a worker's own allocations
                # are all freed when it returns, so its malloc arena does not fragment
                outputs[pos].view(-1)[start:start + rays_per_call] = piece.flatten()
            if progress is not None:
                with lock:
                    done[0] += 1
                    progress(done[0], total)

        threads = torch.get_num_threads() if self.device.type == 'cpu' else 1
        if threads > 1:
            # One piece per thread, each single-threaded: torch's intra-op parallelism
            # gains little here (CPU grid_sample runs a batch item on one thread) and
            # stalls at every op's barrier when another process holds a core.
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(trace, pieces.tasks))
            finally:
                torch.set_num_threads(threads)
        else:
            for task in pieces.tasks:
                trace(task)

    def _detector_images(self, plans: Dict[int, Dict], pieces: RayPieces) -> np.ndarray:
        """The traced pixels of every view placed on its full detector (0 elsewhere).

        Returns:
            np.ndarray: ``(len(views), H, W)`` float32 line integrals in mm (``img`` rows
            and columns).
        """
        height, width = self.geometry.image_size
        images = torch.zeros(len(pieces.views), height, width)
        for pos, view in enumerate(pieces.views):
            images[pos, plans[view]['rows'], plans[view]['cols']] = pieces.outputs[pos]
        return images.numpy()


def render_views(volume_hu: np.ndarray, spacing_mm: Sequence[float],
                 geometry: Acquisition, device: str = 'cpu',
                 views: Optional[Sequence[int]] = None, **kwargs) -> np.ndarray:
    """Render every view of ``geometry`` (an :class:`Acquisition` or an
    :class:`XrayGeometry` ring): ``(num_views, H, W)`` float32 line integrals (mm).

    Shorthand for ``XrayRenderer(geometry, device, **kwargs).render(volume_hu,
    spacing_mm, views)``; ``kwargs`` are :class:`XrayRenderer`'s (``renderer``,
    ``resample``, ``crop``, ``step_mm``, ``patch_size``, ``memory_mb``, ``hu_to_density``).
    """
    return XrayRenderer(geometry, device, **kwargs).render(volume_hu, spacing_mm, views)


def render_views_reference(volume_hu: np.ndarray, spacing_mm: Sequence[float],
                           geometry: XrayGeometry, device: str = 'cpu',
                           patch_size: Optional[int] = 128,
                           views: Optional[Sequence[int]] = None,
                           hu_to_density: DensityMapping = WATER_RELATIVE) -> np.ndarray:
    """The plain DiffDRR loop: full-resolution volume, Siddon, one ``drr(pose)`` per view.

    The reference for tests and ``tools/benchmark_render.py``. ``patch_size`` is DiffDRR's
    (the image is rendered in ``H * W // patch_size ** 2`` pieces, one after the other); the
    default keeps the peak near 1 GB for a 512^2 x 133 CT (63 kB per ray), ``None``
    renders whole images (4 GB at 256^2). ``views`` picks views (default all);
    ``hu_to_density`` is the HU -> density mapping, as :class:`XrayRenderer`'s.

    ``geometry`` is an :class:`XrayGeometry` ring (or its acquisition) without tilt or
    detector offset: DiffDRR's poses model no other.

    Raises:
        ValueError: any other acquisition.
    """
    geometry = _plain_ring(geometry)
    height, width = geometry.image_size
    if patch_size is not None and (height * width) // patch_size ** 2 < 2:
        patch_size = None                # one piece: DiffDRR's patching would do nothing
    views = range(geometry.num_views) if views is None else views
    subject = make_subject(hu_to_density(volume_hu), spacing_mm)
    drr = build_drr(subject, geometry, 'siddon', patch_size=patch_size).to(device)
    poses = view_poses(geometry).to(device)
    images = []
    with torch.no_grad():
        for view in views:
            pose = type(poses)(poses.matrix[view:view + 1])
            images.append(drr(pose)[0, 0].cpu().numpy())
    return np.stack(images).astype(np.float32)


def to_uint8(line_integrals: np.ndarray) -> np.ndarray:
    """Fixed windowing of line integrals to 8-bit grey (denser = brighter).

    Args:
        line_integrals (np.ndarray): any shape, mm of water.

    Returns:
        np.ndarray: uint8, ``round(clip(x / WINDOW_MM, 0, 1) * 255)``.
    """
    scaled = np.clip(np.asarray(line_integrals) / WINDOW_MM, 0.0, 1.0) * 255.0
    return np.round(scaled).astype(np.uint8)

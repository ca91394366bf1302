"""Camera geometry of the simulated X-ray views: the single source of truth for camera
matrices. Nothing else in the project builds a camera matrix; everything composes these.

Frames (all lengths in mm):

* ``ct``  -- the world frame. Right-handed, origin at the centre of the CT volume (the
  midpoint between the first and last voxel centres on each axis), axes along DICOM LPS:
  x -> patient left, y -> posterior, z -> superior. 3D boxes, reference points and
  predictions live here. (mmdet3d calls its world frame ``lidar``; the matrix names keep
  mmdet3d's spelling, so ``lidar2img`` *is* ``ct2img``.)
* ``cam`` -- one per view, mmdet3d's camera convention: origin at the X-ray source, x to the
  image right, y to the image bottom, z along the central ray (depth = distance from the
  source along the central ray).
* ``img`` -- continuous pixel coordinates ``(u, v) = (column, row)``; the centre of pixel
  ``(r, c)`` is at ``(c + 0.5, r + 0.5)``, as in COCO and mmdet.

Acquisition (:class:`XrayGeometry`, the ring): ``num_views`` views on a circle about the
ct z axis. View ``i`` has the angle ``theta_i = 2 pi i / num_views`` and its source at
``sod_mm * (sin theta, -cos theta, 0)`` (view 0 anterior, view N/4 on the patient's left);
the flat detector is ``sdd_mm`` from the source, centred on the central ray,
``image_size = (H, W)`` pixels of ``pixel_spacing_mm``. The ring also covers limited arcs
(``start_deg``, ``arc_deg``), a tilted orbit (``tilt_deg``) and an offset detector
(``detector_offset_px``); with their defaults the matrices are exactly the plain ring's.
Any other acquisition (one matrix per view, from a calibration file) is an
:class:`~projects.mv2d_xray.core.acquisition.Acquisition`; ``XrayGeometry.to_acquisition``
turns a ring into one.
This is exactly DiffDRR 0.6.1's ``DRR(subject, sdd=sdd_mm, height=H, width=W,
delx=dely=pixel_spacing_mm, reverse_x_axis=True)`` with the pose
``convert(rotation=(theta, 0, 0), translation=(0, sod_mm, 0), parameterization="euler_angles",
convention="ZXY")`` on a subject read with ``orientation="AP"`` and centred (DiffDRR's world
is RAS: ``diag(-1, -1, 1) @ ct``); ``tests/converters/test_render.py`` checks it against DiffDRR's
renders and its own projection.

Matrices per view are 4x4 (homogeneous, invertible), column convention
(``p_img = lidar2img @ [x, y, z, 1]``, then divide by the third row):

* ``cam2img``   -- intrinsics ``[[f, 0, W/2], [0, f, H/2], [0, 0, 1]]`` padded with the
  identity, ``f = sdd_mm / pixel_spacing_mm`` in pixels;
* ``lidar2cam`` -- ct -> cam, a proper rigid transform (det +1);
* ``lidar2img`` -- ``cam2img @ lidar2cam``.

Image-space augmentations (resize, crop, flip) act on ``img`` by a 4x4 affine ``A``
(:func:`image_aug_matrix`); the augmented view has ``cam2img' = A @ cam2img`` and
``lidar2img' = A @ lidar2img`` (:func:`apply_image_aug`), so projection stays exact.

The functions below accept numpy arrays or torch tensors (any leading batch dimensions)
and return the same kind.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

#: Width of the default detector in mm (the paper: 1024 px at 0.78125 mm). At other image
#: sizes the default pixel spacing keeps this detector size along the longer image side.
DEFAULT_DETECTOR_MM = 800.0
WORLD_FRAME = 'ct'


def view_name(index: int, num_views: int) -> str:
    """Name of view ``index``: ``VIEW_00`` .. ``VIEW_09`` (3 digits from 100 views on)."""
    return f'VIEW_{index:0{max(2, len(str(num_views - 1)))}d}'


@dataclass(frozen=True)
class XrayGeometry:
    """A circular acquisition of ``num_views`` cone-beam X-ray views around the ct z axis.

    Args:
        num_views (int): number of views. Defaults to 10.
        sod_mm (float): source to isocentre (ct origin) distance. Defaults to 300.
        sdd_mm (float): source to detector distance. Defaults to 600.
        image_size (tuple[int, int]): detector size ``(H, W)`` in pixels. Defaults to
            ``(1024, 1024)``.
        pixel_spacing_mm (float, optional): detector pixel pitch. Defaults to
            ``800 / max(H, W)`` (an 800 mm detector).
        start_deg (float): angle of view 0 about the ct z axis. Defaults to 0 (anterior).
        arc_deg (float): the angles swept, in (0, 360]. A full 360-degree ring spaces the
            views ``arc / num_views`` apart (the last view does not repeat the first);
            a limited arc (a C-arm) puts the first and last views at its ends,
            ``arc / (num_views - 1)`` apart. Defaults to 360.
        tilt_deg (float): tilt of the orbit about the ct x axis (an inclined turntable
            or source elevation): the whole ring is rotated by ``R_x(tilt)``, so the
            sources leave the ct xy plane. Defaults to 0.
        detector_offset_px (tuple[float, float]): ``(du, dv)`` shift of the principal
            point (where the central ray meets the detector) from the image centre, in
            pixels along the image columns and rows. Defaults to ``(0, 0)``.
    """
    num_views: int = 10
    sod_mm: float = 300.0
    sdd_mm: float = 600.0
    image_size: Tuple[int, int] = (1024, 1024)
    pixel_spacing_mm: Optional[float] = field(default=None)
    start_deg: float = 0.0
    arc_deg: float = 360.0
    tilt_deg: float = 0.0
    detector_offset_px: Tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        height, width = (int(s) for s in self.image_size)
        object.__setattr__(self, 'image_size', (height, width))
        if self.pixel_spacing_mm is None:
            object.__setattr__(self, 'pixel_spacing_mm',
                               DEFAULT_DETECTOR_MM / max(height, width))
        object.__setattr__(self, 'pixel_spacing_mm', float(self.pixel_spacing_mm))
        for name in ('start_deg', 'arc_deg', 'tilt_deg'):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, 'detector_offset_px',
                           tuple(float(v) for v in self.detector_offset_px))
        problems = []
        if int(self.num_views) != self.num_views or self.num_views < 1:
            problems.append(f'num_views must be a positive integer, got {self.num_views}')
        if not self.sod_mm > 0:
            problems.append(f'sod_mm must be > 0, got {self.sod_mm}')
        if not self.sdd_mm > self.sod_mm:
            problems.append(f'sdd_mm ({self.sdd_mm}) must exceed sod_mm ({self.sod_mm})')
        if height < 1 or width < 1:
            problems.append(f'image_size must be positive, got {self.image_size}')
        if not self.pixel_spacing_mm > 0:
            problems.append(f'pixel_spacing_mm must be > 0, got {self.pixel_spacing_mm}')
        if not 0 < self.arc_deg <= 360:
            problems.append(f'arc_deg must be in (0, 360], got {self.arc_deg}')
        if not abs(self.tilt_deg) < 90:
            problems.append(f'tilt_deg must be in (-90, 90), got {self.tilt_deg}')
        if len(self.detector_offset_px) != 2:
            problems.append(f'detector_offset_px must be (du, dv), got '
                            f'{self.detector_offset_px}')
        values = (self.sod_mm, self.sdd_mm, self.pixel_spacing_mm, self.start_deg,
                  self.arc_deg, self.tilt_deg, *self.detector_offset_px)
        if not all(math.isfinite(v) for v in values):
            problems.append('every number must be finite')
        if problems:
            raise ValueError('; '.join(problems))

    # -- description -------------------------------------------------------------------
    @property
    def angles_rad(self) -> Tuple[float, ...]:
        """View angles in radians: ``start + arc * i / N`` on a full ring (``2 pi i / N``
        by default, bit for bit), ``start + arc * i / (N - 1)`` on a limited arc."""
        full = self.arc_deg >= 360.0 or self.num_views == 1
        steps = self.num_views if full else self.num_views - 1
        start, arc = math.radians(self.start_deg), math.radians(self.arc_deg)
        return tuple(start + arc * i / steps for i in range(self.num_views))

    @property
    def view_names(self) -> Tuple[str, ...]:
        return tuple(view_name(i, self.num_views) for i in range(self.num_views))

    @property
    def focal_px(self) -> float:
        return self.sdd_mm / self.pixel_spacing_mm

    @property
    def magnification(self) -> float:
        """Magnification at the isocentre, ``sdd / sod``."""
        return self.sdd_mm / self.sod_mm

    def to_metainfo(self) -> dict:
        """The geometry as recorded in the info pickles' ``metainfo['geometry']``."""
        info = asdict(self)
        info['image_size'] = list(self.image_size)
        info['detector_offset_px'] = list(self.detector_offset_px)
        info.update(angles_rad=list(self.angles_rad),
                    angles_deg=[math.degrees(a) for a in self.angles_rad],
                    view_names=list(self.view_names), world_frame=WORLD_FRAME, units='mm')
        return info

    @classmethod
    def from_metainfo(cls, info: dict) -> 'XrayGeometry':
        """The ring recorded by :meth:`to_metainfo` (older files lack the arc, tilt and
        offset settings: their defaults)."""
        return cls(num_views=int(info['num_views']), sod_mm=float(info['sod_mm']),
                   sdd_mm=float(info['sdd_mm']), image_size=tuple(info['image_size']),
                   pixel_spacing_mm=float(info['pixel_spacing_mm']),
                   start_deg=float(info.get('start_deg', 0.0)),
                   arc_deg=float(info.get('arc_deg', 360.0)),
                   tilt_deg=float(info.get('tilt_deg', 0.0)),
                   detector_offset_px=tuple(info.get('detector_offset_px', (0.0, 0.0))))

    def to_acquisition(self):
        """This ring as an :class:`~projects.mv2d_xray.core.acquisition.Acquisition`
        (the same matrices, bit for bit)."""
        from projects.mv2d_xray.core.acquisition import Acquisition
        return Acquisition.from_ring(self)

    # -- matrices ----------------------------------------------------------------------
    def _tilt(self) -> np.ndarray:
        """``R_x(tilt_deg)``, 3x3: the untilted ring's frame -> ct."""
        c, s = math.cos(math.radians(self.tilt_deg)), math.sin(math.radians(self.tilt_deg))
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])

    def source_position(self, view: int) -> np.ndarray:
        """Position of view ``view``'s X-ray source in ct, shape (3,)."""
        theta = self.angles_rad[view]
        source = self.sod_mm * np.array([math.sin(theta), -math.cos(theta), 0.0])
        return source if self.tilt_deg == 0 else self._tilt() @ source

    def cam2img(self) -> np.ndarray:
        """Intrinsics (same for every view), 4x4 float64."""
        height, width = self.image_size
        mat = np.eye(4)
        mat[0, 0] = mat[1, 1] = self.focal_px
        mat[0, 2] = width / 2.0 + self.detector_offset_px[0]
        mat[1, 2] = height / 2.0 + self.detector_offset_px[1]
        return mat

    def lidar2cam(self, view: int) -> np.ndarray:
        """ct -> cam rigid transform of view ``view``, 4x4 float64 (det +1)."""
        theta = self.angles_rad[view]
        c, s = math.cos(theta), math.sin(theta)
        rot = np.array([[c, s, 0.0],        # x_cam: image right
                        [0.0, 0.0, -1.0],   # y_cam: image down = inferior
                        [-s, c, 0.0]])      # z_cam: central ray, source -> isocentre
        if self.tilt_deg != 0:
            rot = rot @ self._tilt().T      # ct -> untilted ring frame -> cam
        mat = np.eye(4)
        mat[:3, :3] = rot
        mat[:3, 3] = -rot @ self.source_position(view)
        return mat

    def lidar2img(self, view: int) -> np.ndarray:
        """ct -> img projection (``ct2img``) of view ``view``, 4x4 float64."""
        return self.cam2img() @ self.lidar2cam(view)

    def view_matrices(self) -> Dict[str, np.ndarray]:
        """All views' matrices, each ``(num_views, 4, 4)`` float64."""
        cams = np.stack([self.lidar2cam(i) for i in range(self.num_views)])
        intr = np.broadcast_to(self.cam2img(), cams.shape).copy()
        return dict(cam2img=intr, lidar2cam=cams, lidar2img=intr @ cams)


# -- the ct frame of a voxel volume --------------------------------------------------------
def index_to_ct(ijk, shape: Sequence[int], spacing_mm: Sequence[float]) -> np.ndarray:
    """Map voxel indices of a volume to ``ct`` mm.

    ``x = (j - (cols - 1) / 2) * col_mm``, ``y = (i - (rows - 1) / 2) * row_mm``,
    ``z = (k - (slices - 1) / 2) * slice_mm``: one subtraction and one product per axis,
    so the result is exact for the usual spacings (binary fractions such as 0.703125 or
    2.5 mm) and mirrors exactly (``j -> cols - 1 - j`` gives ``x -> -x``).

    Args:
        ijk (array-like): ``(..., 3)`` indices ``(i, j, k)`` (continuous: voxel centres at
            integers, corners at half-integers), e.g. of a block's first voxel in the full
            grid.
        shape (Sequence[int]): ``(rows, cols, slices)`` of the full volume, which places
            the ``ct`` origin at its centre.
        spacing_mm (Sequence[float]): ``(row, col, slice)`` voxel size in mm.

    Returns:
        np.ndarray: ``(..., 3)`` float64 ``ct`` positions ``(x, y, z)`` in mm.
    """
    ijk = np.asarray(ijk, dtype=np.float64)
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    spacing = np.asarray([float(s) for s in spacing_mm], dtype=np.float64)
    return ((ijk - centre) * spacing)[..., [1, 0, 2]]


def index_to_ct_affine(spacing_mm: Sequence[float], origin_mm: Sequence[float]) -> np.ndarray:
    """4x4 affine from voxel indices ``(i, j, k)`` to ``ct`` mm for a grid whose voxel
    ``(0, 0, 0)`` lies at ``origin_mm``: ``x = j * col_mm + x0``, ``y = i * row_mm + y0``,
    ``z = k * slice_mm + z0``.

    Args:
        spacing_mm (Sequence[float]): ``(row, col, slice)`` voxel size in mm.
        origin_mm (Sequence[float]): ``ct`` position ``(x, y, z)`` of voxel ``(0, 0, 0)``
            in mm (:func:`index_to_ct` of it for a block of a larger volume).

    Returns:
        np.ndarray: ``(4, 4)`` float64.
    """
    row_mm, col_mm, slice_mm = (float(s) for s in spacing_mm)
    x0, y0, z0 = (float(o) for o in origin_mm)
    return np.array([[0, col_mm, 0, x0], [row_mm, 0, 0, y0], [0, 0, slice_mm, z0],
                     [0, 0, 0, 1]], dtype=np.float64)


# -- projection helpers (numpy or torch) ---------------------------------------------------
class _NumpyOps:
    """The few array operations the helpers below need, for numpy arrays (float64)."""
    asarray = staticmethod(lambda x: np.asarray(x, dtype=np.float64))
    cat = staticmethod(lambda xs: np.concatenate(xs, axis=-1))
    stack = staticmethod(lambda xs, axis: np.stack(xs, axis=axis))
    inv = staticmethod(np.linalg.inv)
    solve = staticmethod(np.linalg.solve)
    norm = staticmethod(lambda x: np.linalg.norm(x, axis=-1, keepdims=True))
    amin = staticmethod(lambda x, axis: x.min(axis=axis))
    amax = staticmethod(lambda x, axis: x.max(axis=axis))
    transpose = staticmethod(lambda x: np.swapaxes(x, -1, -2))
    eye = staticmethod(lambda n, like: np.eye(n))
    like = staticmethod(lambda values, ref: np.asarray(values, dtype=np.float64))
    maximum = staticmethod(lambda x, floor: np.maximum(x, floor))
    where = staticmethod(np.where)
    argmin = staticmethod(lambda x, axis: x.argmin(axis=axis))
    take_along = staticmethod(lambda x, index, axis: np.take_along_axis(x, index, axis))
    argsort_stable = staticmethod(lambda x: np.argsort(x, kind='stable'))
    bincount = staticmethod(lambda x, length: np.bincount(x, minlength=length))
    arange_like = staticmethod(lambda n, like: np.arange(n))
    full_like_int = staticmethod(lambda shape, value, like: np.full(shape, value, np.int64))
    cos, sin, ones_like, isfinite = np.cos, np.sin, np.ones_like, np.isfinite


class _TorchOps:
    """The same operations for torch tensors (dtype and device kept)."""

    def __init__(self, torch):
        self.asarray = lambda x: x
        self.cat = lambda xs: torch.cat(xs, dim=-1)
        self.stack = lambda xs, axis: torch.stack(xs, dim=axis)
        self.inv = torch.linalg.inv
        self.solve = torch.linalg.solve
        self.norm = lambda x: torch.linalg.norm(x, dim=-1, keepdim=True)
        self.amin = lambda x, axis: x.amin(dim=axis)
        self.amax = lambda x, axis: x.amax(dim=axis)
        self.transpose = lambda x: x.transpose(-1, -2)
        self.eye = lambda n, like: torch.eye(n, dtype=like.dtype, device=like.device)
        self.like = lambda values, ref: torch.as_tensor(values, dtype=ref.dtype,
                                                        device=ref.device)
        self.maximum = lambda x, floor: x.clamp(min=floor)
        self.where = torch.where
        self.argmin = lambda x, axis: x.argmin(dim=axis)
        self.take_along = lambda x, index, axis: torch.gather(x, axis, index)
        self.argsort_stable = lambda x: torch.argsort(x, stable=True)
        self.bincount = lambda x, length: torch.bincount(x, minlength=length)
        self.arange_like = lambda n, like: torch.arange(n, device=like.device)
        self.full_like_int = lambda shape, value, like: torch.full(
            shape, value, dtype=torch.int64, device=like.device)
        self.cos, self.sin, self.ones_like = torch.cos, torch.sin, torch.ones_like
        self.isfinite = torch.isfinite


def _ops(x):
    """:class:`_NumpyOps` for numpy input (or lists), :class:`_TorchOps` for a tensor.
    torch is imported only when a tensor is passed, so the numpy path stays torch-free."""
    if type(x).__module__.startswith('torch'):
        import torch
        return _TorchOps(torch)
    return _NumpyOps


def _homogeneous(points, ops):
    return ops.cat([points, ops.ones_like(points[..., :1])])


def project_points(lidar2img, points):
    """Project ct points into an image.

    Args:
        lidar2img: ``(..., 4, 4)`` ct -> img matrices.
        points: ``(..., P, 3)`` ct points in mm (leading dims broadcast with the matrices).

    Returns:
        tuple: ``uv`` ``(..., P, 2)`` continuous image coordinates and ``depth``
        ``(..., P)``, the cam z in mm (positive in front of the source).
    """
    ops = _ops(points)
    hom = _homogeneous(ops.asarray(points), ops)
    proj = (lidar2img[..., None, :3, :] @ hom[..., None])[..., 0]      # (..., P, 3)
    depth = proj[..., 2]
    return proj[..., :2] / depth[..., None], depth


def seen_in_image(uv, depth, height, width):
    """Whether projected points are seen by their view: in front of its source and inside
    its image, ``0 <= u < width`` and ``0 <= v < height``.

    Args:
        uv: ``(..., 2)`` img px, e.g. from :func:`project_points` (NaN / inf where a point
            lies in the source's plane: not seen).
        depth: ``(...)`` cam z, mm.
        height, width: the image's size in px, numbers or arrays broadcasting with
            ``depth``.

    Returns:
        ``(...)`` bool, numpy or torch as ``uv``.
    """
    u, v = uv[..., 0], uv[..., 1]
    return (depth > 0) & (u >= 0) & (v >= 0) & (u < width) & (v < height)


def unproject_points(lidar2img, uv, depth, img2lidar=None):
    """Inverse of :func:`project_points`: lift image points with known depth to ct.

    Args:
        lidar2img: ``(..., 4, 4)`` ct -> img matrices (unused when ``img2lidar`` is given).
        uv: ``(..., P, 2)`` image coordinates.
        depth: ``(..., P)`` cam z in mm.
        img2lidar: ``(..., 4, 4)`` the inverses of ``lidar2img``, when the caller already
            has them (saves one inversion per call). Optional.

    Returns:
        ``(..., P, 3)`` ct points in mm.
    """
    ops = _ops(uv)
    uv, depth = ops.asarray(uv), ops.asarray(depth)
    hom = ops.cat([uv * depth[..., None], depth[..., None], ops.ones_like(depth[..., None])])
    inv = ops.inv(lidar2img) if img2lidar is None else img2lidar
    return (inv[..., None, :, :] @ hom[..., None])[..., :3, 0]


def ray_planes(lidar2img, uv):
    """The two planes through each view's source and image point ``uv``, as rows
    ``[n, -d]`` with ``|n| = 1``, so that ``n . X + row[3]`` is the signed distance (mm)
    of a ct point ``X`` to the plane; together they pin down the ray.

    Args:
        lidar2img: ``(..., 4, 4)`` ct -> img matrices.
        uv: ``(..., 2)`` image points.

    Returns:
        ``(..., 2, 4)`` plane rows.
    """
    ops = _ops(uv)
    p = lidar2img[..., :3, :]
    rows = ops.stack([uv[..., 0, None] * p[..., 2, :] - p[..., 0, :],
                      uv[..., 1, None] * p[..., 2, :] - p[..., 1, :]], -2)
    return rows / ops.norm(rows[..., :3])


def triangulate_points(lidar2img, uv, weights=None):
    """Linear least-squares triangulation: the ct point closest (in mm, summed squared
    distances) to the rays through each view's source and image point.

    Args:
        lidar2img: ``(..., V, 4, 4)`` ct -> img matrices of the views.
        uv: ``(..., V, 2)`` image points.
        weights: ``(..., V)`` non-negative weight of each view (0 leaves a view out),
            optional. At least two views with non-parallel rays must be weighted.

    Returns:
        ``(..., 3)`` ct points in mm.
    """
    ops = _ops(uv)
    rows = ray_planes(lidar2img, uv)                                   # (..., V, 2, 4)
    if weights is not None:
        rows = rows * weights[..., None, None]
    rows = rows.reshape(*rows.shape[:-3], -1, 4)                       # (..., 2V, 4)
    a, b = rows[..., :3], -rows[..., 3:]
    ata = ops.transpose(a) @ a
    return ops.solve(ata + 1e-9 * ops.eye(3, ata), ops.transpose(a) @ b)[..., 0]


def detection_gates(boxes, gate_px: float, gate_frac: float):
    """The association gate of 2D detections: how far (img px) the projection of a point
    may fall from a detection's box centre for the detection to support it,
    ``max(gate_px, gate_frac * max(w, h))`` -- small boxes get ``gate_px``, large ones a
    fraction of their larger side. Used by the triangulation baseline and by MV2D's
    ``view_support`` rescoring, so both associate by the same rule.

    Args:
        boxes: ``(..., 4)`` xyxy boxes, img px.
        gate_px (float): smallest gate, px.
        gate_frac (float): gate as a fraction of the larger box side.

    Returns:
        ``(...)`` gates, px.
    """
    ops = _ops(boxes)
    boxes = ops.asarray(boxes)
    side = ops.amax(boxes[..., 2:] - boxes[..., :2], -1)
    return ops.maximum(gate_frac * side, gate_px)


def view_slots(scores, views, num_views: int, max_per_view: Optional[int] = None):
    """Lay detections out per view, best first: the ``(V, D)`` index table that
    :func:`nearest_in_gate` reads them through.

    Args:
        scores: ``(N,)`` detection scores.
        views: ``(N,)`` int, each detection's view, ``0 .. num_views - 1``.
        num_views (int): ``V``.
        max_per_view (int, optional): keep at most this many per view (the best).

    Returns:
        ``(V, D)`` int64: row ``v`` holds the indices (into the inputs) of view ``v``'s
        detections by decreasing score (equal scores in input order), then -1 as padding;
        ``D`` is the busiest view's count (at most ``max_per_view``; 0 without any).
    """
    ops = _ops(scores)
    order = ops.argsort_stable(-scores)
    order = order[ops.argsort_stable(views[order])]                    # by view, best first
    by_view = views[order]
    counts = ops.bincount(by_view, num_views)
    rank = ops.arange_like(len(order), order) - (counts.cumsum(0) - counts)[by_view]
    width = int(counts.max()) if len(order) else 0
    if max_per_view is not None:
        keep = rank < max_per_view
        order, by_view, rank = order[keep], by_view[keep], rank[keep]
        width = min(width, max_per_view)
    index = ops.full_like_int((num_views, width), -1, order)
    index[by_view, rank] = order
    return index


def nearest_in_gate(uv, depth, centres, gates, available):
    """In every view, the nearest 2D detection whose gate holds a point's projection.

    Args:
        uv: ``(..., V, 2)`` the points' projections into the ``V`` views, img px.
        depth: ``(..., V)`` their depths (cam z, mm); a point at or behind a view's source
            (depth <= 0) has no detection there.
        centres: ``(V, D, 2)`` the detections' box centres per view, img px (padded to
            ``D`` per view, e.g. by :func:`view_slots`).
        gates: ``(V, D)`` their gates, px (:func:`detection_gates`).
        available: ``(V, D)`` bool, False for padding (and detections left out).

    Returns:
        tuple: ``slot`` ``(..., V)`` the detection's index along ``D`` (-1: none; among
        equally near ones the lowest slot, so with :func:`view_slots`'s best-first order
        the best score) and ``dist`` ``(..., V)`` its distance, px (inf: none).
    """
    ops = _ops(uv)
    dist = ops.norm(uv[..., None, :] - centres)[..., 0]                # (..., V, D)
    ok = available & (dist <= gates) & (depth[..., None] > 0)
    dist = ops.where(ok, dist, math.inf)
    if dist.shape[-1] == 0:                       # no detection in any view: inf, -1
        return ops.full_like_int(dist.shape[:-1], -1, dist), dist.sum(-1) + math.inf
    slot = ops.argmin(dist, -1)
    nearest = ops.take_along(dist, slot[..., None], -1)[..., 0]
    return ops.where(ops.isfinite(nearest), slot, -1), nearest


#: Corner signs of a box, ``(8, 3)``: x slowest, z fastest.
_CORNER_SIGNS = [[sx, sy, sz] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (-0.5, 0.5)]


def box3d_corners(boxes):
    """Corners of 3D boxes ``[x, y, z, dx, dy, dz, yaw]`` (centre, full extents, yaw about
    z), shape ``(..., 7)`` -> ``(..., 8, 3)``."""
    ops = _ops(boxes)
    boxes = ops.asarray(boxes)
    signs = ops.like(_CORNER_SIGNS, boxes)
    cos, sin = ops.cos(boxes[..., 6]), ops.sin(boxes[..., 6])
    offsets = signs * boxes[..., None, 3:6]
    x = offsets[..., 0] * cos[..., None] - offsets[..., 1] * sin[..., None]
    y = offsets[..., 0] * sin[..., None] + offsets[..., 1] * cos[..., None]
    return ops.stack([x, y, offsets[..., 2]], -1) + boxes[..., None, :3]


def project_boxes3d(lidar2img, boxes):
    """Image-space bounding boxes ``[x1, y1, x2, y2]`` of the projections of 3D boxes.

    Args:
        lidar2img: ``(..., 4, 4)``.
        boxes: ``(..., M, 7)`` ct boxes.

    Returns:
        ``(..., M, 4)`` boxes (not clipped to the image).
    """
    ops = _ops(boxes)
    corners = box3d_corners(boxes)                                   # (..., M, 8, 3)
    uv, _ = project_points(lidar2img[..., None, :, :], corners)      # (..., M, 8, 2)
    return ops.cat([ops.amin(uv, -2), ops.amax(uv, -2)])


def normalize_points(points, point_range):
    """ct points in mm -> coordinates in ``[0, 1]`` inside ``point_range`` (not clamped).

    Args:
        points: ``(..., 3)`` ct points in mm.
        point_range: ``[x0, y0, z0, x1, y1, z1]`` in mm (e.g. a config's ``pc_range``).

    Returns:
        ``(..., 3)`` normalised coordinates.
    """
    rng = _ops(points).like(point_range, points)
    return (points - rng[:3]) / (rng[3:] - rng[:3])


def denormalize_points(points, point_range):
    """Inverse of :func:`normalize_points`: ``(..., 3)`` normalised -> ct mm."""
    rng = _ops(points).like(point_range, points)
    return points * (rng[3:] - rng[:3]) + rng[:3]


def image_aug_matrix(scale: Sequence[float] = (1.0, 1.0),
                     crop_offset: Sequence[float] = (0.0, 0.0),
                     flip_width: Optional[float] = None) -> np.ndarray:
    """4x4 affine on ``img`` coordinates for resize -> crop -> horizontal flip.

    ``u' = sx * u - x0``, ``v' = sy * v - y0``, then (if ``flip_width`` is given, the width
    of the cropped image) ``u'' = flip_width - u'``. With continuous coordinates (pixel
    centres at ``c + 0.5``) this is exact for ``cv2.resize`` and integer crops.

    The matrix acts on the homogeneous image vector ``(u * d, v * d, d, 1)`` that
    ``lidar2img`` produces, so the translation sits in column 2 (it scales with the depth
    ``d``); column 3 stays ``(0, 0, 0, 1)``. For a plain image point use ``d = 1``
    (:func:`transform_boxes2d`).
    """
    sx, sy = scale
    x0, y0 = crop_offset
    mat = np.eye(4)
    mat[0, 0], mat[1, 1] = sx, sy
    mat[0, 2], mat[1, 2] = -x0, -y0
    if flip_width is not None:
        flip = np.eye(4)
        flip[0, 0], flip[0, 2] = -1.0, float(flip_width)
        mat = flip @ mat
    return mat


def apply_image_aug(aug_matrix, *matrices):
    """Left-multiply ``cam2img`` / ``lidar2img`` (``(..., 4, 4)`` each) by an image-space
    affine from :func:`image_aug_matrix`; returns them in the same order."""
    out = tuple(aug_matrix @ m for m in matrices)
    return out if len(out) > 1 else out[0]


def transform_boxes2d(aug_matrix, boxes):
    """Apply an image-space affine to ``(..., 4)`` ``[x1, y1, x2, y2]`` boxes (re-sorted so
    ``x1 <= x2`` after a flip)."""
    ops = _ops(boxes)
    a = np.asarray(aug_matrix)
    xs = boxes[..., 0::2] * a[0, 0] + a[0, 2]
    ys = boxes[..., 1::2] * a[1, 1] + a[1, 2]
    return ops.stack([ops.amin(xs, -1), ops.amin(ys, -1), ops.amax(xs, -1), ops.amax(ys, -1)],
                     -1)

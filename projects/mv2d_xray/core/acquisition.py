"""Acquisitions of any shape: one camera matrix per view, and the calibration file that
describes them.

An :class:`Acquisition` is what the converter renders, what the info pickles record and
what the inferencer reads from a study's ``calibration.json``: ``N >= 2`` views, each a
name, an image file name (optional) and three 4x4 matrices in the frames of
:mod:`projects.mv2d_xray.core.geometry` (``ct`` world in mm, ``cam`` with x right,
y down, z along the central ray, ``img`` pixels with the centre of pixel ``(r, c)`` at
``(c + 0.5, r + 0.5)``): ``cam2img`` (intrinsics ``K``), ``lidar2cam`` (``[R | t]``,
ct -> cam, a proper rigid transform) and ``lidar2img = cam2img @ lidar2cam``. All views of
one acquisition share one image size (the model stacks the views of a study).

The calibration file (JSON; README "Running on your own studies") has one of two forms:

* explicit, one entry per view::

    {"world_frame": "ct", "units": "mm",
     "views": [{"name": "VIEW_00", "image": "VIEW_00.png", "height": 1024, "width": 1024,
                "P": [[4 numbers], [4 numbers], [4 numbers]]}, ...]}

  ``P`` is the 3x4 world (mm, homogeneous) -> pixel matrix. Instead of ``P`` a view may
  give ``K`` (3x3) and ``Rt`` (3x4, world -> camera); ``P = K @ Rt``, and both forms load
  to the same ``lidar2img``. ``P`` may be given at any positive scale: it is divided by
  the norm of its left 3x3's third row, so that its third output is the camera depth in
  mm (left as given when that norm is 1 to rounding). ``K`` and ``[R | t]`` of a ``P``
  come from its RQ decomposition (``K[2, 2] = 1``, positive ``K[1, 1]``; a mirrored
  detector gets a negative ``K[0, 0]`` so that ``R`` stays a rotation). Optional per view:
  ``pixel_spacing_mm`` (checked against DICOM headers).
* the ring shorthand ``{"ring": {"num_views": 10, "sod_mm": 300, "sdd_mm": 600,
  "image_size": [1024, 1024], "pixel_spacing_mm": 0.78125, "start_deg": 0,
  "arc_deg": 360, "tilt_deg": 0, "detector_offset_px": [0, 0]}}``: the
  :class:`~projects.mv2d_xray.core.geometry.XrayGeometry` with these settings (the
  converter's ``--views/--sod/--sdd/...`` acquisition when the defaults are used), its
  matrices exactly; an optional ``"images"`` list names each view's file.

Every problem is one :class:`CalibrationError` line naming the file, the view and the
field: non-finite numbers, a ``P`` whose left 3x3 is singular, the world origin behind a
view's source (a source on the wrong side), fewer than 2 views, a view listed twice,
views of different sizes; :func:`check_image_sizes` compares the sizes with the images.

Plain Python and numpy (no torch, no mmengine).
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from projects.mv2d_xray.core.geometry import WORLD_FRAME, XrayGeometry, view_name
from projects.mv2d_xray.core.io import read_json

#: Keys of the ring shorthand, with :class:`XrayGeometry`'s names.
RING_KEYS = ('num_views', 'sod_mm', 'sdd_mm', 'image_size', 'pixel_spacing_mm', 'start_deg',
             'arc_deg', 'tilt_deg', 'detector_offset_px')
#: Keys a view of the explicit form may have.
VIEW_KEYS = ('name', 'image', 'height', 'width', 'P', 'K', 'Rt', 'pixel_spacing_mm')
#: Smallest ``|det|`` of ``P``'s left 3x3, relative to the product of its row norms,
#: below which the view is refused as singular (parallel rows: no camera).
SINGULAR_TOLERANCE = 1e-9
#: ``Rt``'s left 3x3 must be a rotation to this tolerance.
ROTATION_TOLERANCE = 1e-6


class CalibrationError(ValueError):
    """A calibration file (or dict) that cannot describe an acquisition; the message is one
    line naming the file, the view and the field."""


def _pad(mat3x4: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:mat3x4.shape[0], :mat3x4.shape[1]] = mat3x4
    return out


def _matrix(value, shape: Tuple[int, int], where: str) -> np.ndarray:
    """A finite float64 matrix of ``shape`` from nested lists, or a CalibrationError."""
    try:
        mat = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(f'{where}: must be a {shape[0]}x{shape[1]} list of numbers, '
                               f'got {value!r:.80}') from None
    if mat.shape != shape:
        raise CalibrationError(f'{where}: must be {shape[0]}x{shape[1]}, got shape '
                               f'{list(mat.shape)}')
    if not np.isfinite(mat).all():
        raise CalibrationError(f'{where}: has a non-finite number (NaN or infinity)')
    return mat


def rq_decompose(mat: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """RQ decomposition ``mat = K @ R`` of a non-singular 3x3 with ``K`` upper triangular,
    ``K[1, 1] > 0``, ``K[2, 2] > 0`` and ``R`` a rotation (det +1); ``K[0, 0]`` is negative
    for a mirrored camera (``det(mat) < 0``)."""
    q, r = np.linalg.qr(mat[::-1].T)
    k, rot = r.T[::-1, ::-1], q.T[::-1]
    signs = np.sign(np.diag(k))
    k, rot = k * signs, signs[:, None] * rot
    if np.linalg.det(rot) < 0:
        k[:, 0], rot[0] = -k[:, 0], -rot[0]
    return k, rot


def canonical_projection(p: np.ndarray, where: str) -> Tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]:
    """``cam2img``, ``lidar2cam`` and ``lidar2img`` (4x4 each) of a 3x4 ``P``.

    Raises:
        CalibrationError: a singular left 3x3, or the world origin behind the source.
    """
    left = p[:, :3]
    scale = float(np.linalg.norm(left[2]))
    rows = float(np.prod(np.linalg.norm(left, axis=1)))
    if rows == 0 or abs(np.linalg.det(left)) <= SINGULAR_TOLERANCE * rows:
        raise CalibrationError(f'{where}: the left 3x3 of P is singular (its rows are '
                               'dependent): no camera projects like this')
    if abs(scale - 1.0) > 1e-12:
        p = p / scale
    if not p[2, 3] > 0:
        raise CalibrationError(
            f'{where}: the world origin is behind the X-ray source (its camera depth is '
            f'{p[2, 3]:.4g} mm): the source is on the wrong side, or P has the wrong sign')
    k, rot = rq_decompose(p[:, :3])
    k = k / k[2, 2]
    rt = np.concatenate([rot, np.linalg.solve(k, p[:, 3])[:, None]], axis=1)
    return _pad(k), _pad(rt), _pad(p)


class Acquisition:
    """``N >= 2`` views with their matrices; see the module text for frames and forms.

    Args:
        view_names (Sequence[str]): one unique name per view.
        image_size (tuple[int, int]): ``(H, W)`` of every view, pixels.
        cam2img (np.ndarray): ``(N, 4, 4)`` intrinsics.
        lidar2cam (np.ndarray): ``(N, 4, 4)`` ct -> cam rigid transforms.
        lidar2img (np.ndarray, optional): ``(N, 4, 4)`` ct -> img; defaults to
            ``cam2img @ lidar2cam``.
        images (Sequence[str], optional): per view, the image file name in a study folder.
        pixel_spacing_mm (Sequence[float | None], optional): per view, the detector pitch
            when known.
        ring (XrayGeometry, optional): the ring these views were made from (kept for
            ``metainfo`` and the converter's flag-based checks).
    """

    def __init__(self, view_names: Sequence[str], image_size: Sequence[int],
                 cam2img: np.ndarray, lidar2cam: np.ndarray,
                 lidar2img: Optional[np.ndarray] = None,
                 images: Optional[Sequence[Optional[str]]] = None,
                 pixel_spacing_mm: Optional[Sequence[Optional[float]]] = None,
                 ring: Optional[XrayGeometry] = None):
        self.view_names = tuple(str(n) for n in view_names)
        self.image_size = tuple(int(s) for s in image_size)
        self._cam2img = np.asarray(cam2img, dtype=np.float64)
        self._lidar2cam = np.asarray(lidar2cam, dtype=np.float64)
        self._lidar2img = (self._cam2img @ self._lidar2cam if lidar2img is None
                           else np.asarray(lidar2img, dtype=np.float64))
        num = len(self.view_names)
        self.images = tuple(images) if images is not None else (None,) * num
        self.pixel_spacing = (tuple(pixel_spacing_mm) if pixel_spacing_mm is not None
                              else (None,) * num)
        self.ring = ring
        for name, mats in (('cam2img', self._cam2img), ('lidar2cam', self._lidar2cam),
                           ('lidar2img', self._lidar2img)):
            if mats.shape != (num, 4, 4):
                raise ValueError(f'{name} must be ({num}, 4, 4), got {mats.shape}')

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_ring(cls, ring: XrayGeometry,
                  images: Optional[Sequence[str]] = None) -> 'Acquisition':
        """The views of a ring, with exactly its matrices."""
        mats = ring.view_matrices()
        return cls(ring.view_names, ring.image_size, mats['cam2img'], mats['lidar2cam'],
                   mats['lidar2img'], images=images,
                   pixel_spacing_mm=(ring.pixel_spacing_mm,) * ring.num_views, ring=ring)

    @property
    def num_views(self) -> int:
        return len(self.view_names)

    def subset(self, views: Sequence[int]) -> 'Acquisition':
        """The acquisition of some of the views (in the given order)."""
        views = [int(v) for v in views]
        return Acquisition([self.view_names[v] for v in views], self.image_size,
                           self._cam2img[views], self._lidar2cam[views],
                           self._lidar2img[views], [self.images[v] for v in views],
                           [self.pixel_spacing[v] for v in views])

    # -- matrices (XrayGeometry's interface) ------------------------------------------------
    def cam2img(self, view: int = 0) -> np.ndarray:
        """Intrinsics of view ``view``, 4x4 float64."""
        return self._cam2img[view].copy()

    def lidar2cam(self, view: int) -> np.ndarray:
        """ct -> cam of view ``view``, 4x4 float64."""
        return self._lidar2cam[view].copy()

    def lidar2img(self, view: int) -> np.ndarray:
        """ct -> img (``ct2img``) of view ``view``, 4x4 float64."""
        return self._lidar2img[view].copy()

    def view_matrices(self) -> Dict[str, np.ndarray]:
        """All views' matrices, each ``(num_views, 4, 4)`` float64."""
        return dict(cam2img=self._cam2img.copy(), lidar2cam=self._lidar2cam.copy(),
                    lidar2img=self._lidar2img.copy())

    def source_position(self, view: int) -> np.ndarray:
        """Position of view ``view``'s X-ray source in ct (mm), shape (3,)."""
        rt = self._lidar2cam[view]
        return -rt[:3, :3].T @ rt[:3, 3]

    def central_ray(self, view: int) -> np.ndarray:
        """Unit direction of view ``view``'s camera z axis in ct, shape (3,)."""
        return self._lidar2cam[view, 2, :3].copy()

    @property
    def source_distances_mm(self) -> Tuple[float, ...]:
        """Per view, the camera depth of the ct origin (the isocentre), in mm."""
        return tuple(float(self._lidar2cam[v, 2, 3]) for v in range(self.num_views))

    @property
    def sod_mm(self) -> float:
        """Mean source-to-isocentre depth over the views (the ring's ``sod_mm``)."""
        return self.ring.sod_mm if self.ring is not None else \
            float(np.mean(self.source_distances_mm))

    @property
    def angles_rad(self) -> Tuple[float, ...]:
        """Per view, the azimuth of the source about the ct z axis in the ring's
        convention (``theta`` with the source along ``(sin theta, -cos theta)``)."""
        if self.ring is not None:
            return self.ring.angles_rad
        return tuple(float(math.atan2(s[0], -s[1]) % (2 * math.pi))
                     for s in (self.source_position(v) for v in range(self.num_views)))

    def isocentre_pixel_mm(self, view: int) -> float:
        """Size (mm) of one detector pixel seen at the isocentre in view ``view``:
        the origin's depth over the geometric-mean focal length in pixels."""
        k = self._cam2img[view]
        focal = math.sqrt(abs(k[0, 0] * k[1, 1]))
        return self.source_distances_mm[view] / focal

    # -- description ------------------------------------------------------------------------
    def to_calibration(self, form: str = 'P') -> dict:
        """The calibration-file dict: the ring shorthand for a ring (``form='ring'``),
        else the explicit form with ``P`` (default) or ``K`` + ``Rt`` per view."""
        if form == 'ring':
            if self.ring is None:
                raise ValueError('this acquisition is not a ring')
            ring = {key: getattr(self.ring, key) for key in RING_KEYS}
            ring['image_size'] = list(ring['image_size'])
            ring['detector_offset_px'] = list(ring['detector_offset_px'])
            out = dict(world_frame=WORLD_FRAME, units='mm', ring=ring)
            if any(self.images):
                out['images'] = list(self.images)
            return out
        if form not in ('P', 'K_Rt'):
            raise ValueError(f"form must be 'P', 'K_Rt' or 'ring', got {form!r}")
        height, width = self.image_size
        views = []
        for v, name in enumerate(self.view_names):
            view = dict(name=name)
            if self.images[v] is not None:
                view['image'] = self.images[v]
            view.update(height=height, width=width)
            if form == 'P':
                view['P'] = self._lidar2img[v, :3].tolist()
            else:
                view['K'] = self._cam2img[v, :3, :3].tolist()
                view['Rt'] = self._lidar2cam[v, :3].tolist()
            if self.pixel_spacing[v] is not None:
                view['pixel_spacing_mm'] = float(self.pixel_spacing[v])
            views.append(view)
        return dict(world_frame=WORLD_FRAME, units='mm', views=views)

    def to_metainfo(self) -> dict:
        """The acquisition as recorded in the info pickles' ``metainfo['geometry']``: the
        ring's own record for a ring (as before), plus for every acquisition
        ``num_views``, ``image_size``, ``view_names``, ``sod_mm`` (mean depth of the
        isocentre), frame and units, and the calibration dict itself."""
        info = self.ring.to_metainfo() if self.ring is not None else {}
        info.update(num_views=self.num_views, image_size=list(self.image_size),
                    view_names=list(self.view_names), sod_mm=self.sod_mm,
                    world_frame=WORLD_FRAME, units='mm')
        if self.ring is None:
            info.update(angles_rad=list(self.angles_rad),
                        angles_deg=[math.degrees(a) for a in self.angles_rad],
                        source_distances_mm=list(self.source_distances_mm),
                        calibration=self.to_calibration('P'))
        return info

    @classmethod
    def from_metainfo(cls, info: Mapping) -> 'Acquisition':
        """Inverse of :meth:`to_metainfo`."""
        if 'calibration' in info:
            return acquisition_from_dict(info['calibration'], 'metainfo geometry')
        return cls.from_ring(XrayGeometry.from_metainfo(info))


def as_acquisition(geometry) -> Acquisition:
    """An :class:`Acquisition` as is, or a ring's (:meth:`XrayGeometry.to_acquisition`):
    what code that takes either calls first."""
    if isinstance(geometry, XrayGeometry):
        return geometry.to_acquisition()
    if not isinstance(geometry, Acquisition):
        raise TypeError(f'expected an Acquisition or an XrayGeometry, got '
                        f'{type(geometry).__name__}')
    return geometry


# -- reading calibration files --------------------------------------------------------------
def _ring_from_dict(ring: Mapping, where: str) -> XrayGeometry:
    if not isinstance(ring, Mapping):
        raise CalibrationError(f'{where}: "ring" must be an object of settings')
    unknown = sorted(set(ring) - set(RING_KEYS))
    if unknown:
        raise CalibrationError(f'{where}: ring: unknown setting(s) {unknown} (known: '
                               f'{list(RING_KEYS)})')
    settings = dict(ring)
    for key, value in settings.items():
        flat = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
            raise CalibrationError(f'{where}: ring.{key}: must be numbers, got {value!r:.60}')
        if not all(math.isfinite(v) for v in flat):
            raise CalibrationError(f'{where}: ring.{key}: has a non-finite number')
    if 'image_size' in settings and len(settings['image_size']) != 2:
        raise CalibrationError(f'{where}: ring.image_size: must be [height, width]')
    try:
        geometry = XrayGeometry(**settings)
    except (TypeError, ValueError) as err:
        raise CalibrationError(f'{where}: ring: {err}') from None
    if geometry.num_views < 2:
        raise CalibrationError(f'{where}: ring.num_views: at least 2 views are needed, got '
                               f'{geometry.num_views}')
    return geometry


def _view_from_dict(view: Mapping, index: int, num_views: int, where: str) -> dict:
    """One explicit view -> ``name``, ``image``, ``size``, ``pixel_spacing`` and its three
    matrices."""
    name = view.get('name', view_name(index, num_views)) if isinstance(view, Mapping) else None
    here = f'{where}: views[{index}] ({name})'
    if not isinstance(view, Mapping):
        raise CalibrationError(f'{where}: views[{index}]: must be an object')
    unknown = sorted(set(view) - set(VIEW_KEYS))
    if unknown:
        raise CalibrationError(f'{here}: unknown field(s) {unknown} (known: {list(VIEW_KEYS)})')
    size = []
    for key in ('height', 'width'):
        value = view.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CalibrationError(f'{here}: {key}: must be a positive integer, got {value!r}')
        size.append(value)
    if 'P' in view and ('K' in view or 'Rt' in view):
        raise CalibrationError(f'{here}: give either P or K and Rt, not both')
    if 'P' in view:
        p = _matrix(view['P'], (3, 4), f'{here}: P')
    elif 'K' in view and 'Rt' in view:
        k = _matrix(view['K'], (3, 3), f'{here}: K')
        rt = _matrix(view['Rt'], (3, 4), f'{here}: Rt')
        rot = rt[:, :3]
        if not np.allclose(rot @ rot.T, np.eye(3), atol=ROTATION_TOLERANCE) \
                or np.linalg.det(rot) < 0:
            raise CalibrationError(f'{here}: Rt: its left 3x3 is not a rotation (orthonormal, '
                                   'det +1)')
        if k[1, 0] != 0 or k[2, 0] != 0 or k[2, 1] != 0 or not k[2, 2] > 0:
            raise CalibrationError(f'{here}: K: must be upper triangular with K[2][2] > 0')
        p = (_pad(k) @ _pad(rt))[:3]
    else:
        raise CalibrationError(f'{here}: needs P (3x4) or K (3x3) and Rt (3x4)')
    spacing = view.get('pixel_spacing_mm')
    if spacing is not None and not (isinstance(spacing, (int, float)) and spacing > 0
                                    and math.isfinite(spacing)):
        raise CalibrationError(f'{here}: pixel_spacing_mm: must be a positive number, got '
                               f'{spacing!r}')
    image = view.get('image')
    if image is not None and not isinstance(image, str):
        raise CalibrationError(f'{here}: image: must be a file name, got {image!r}')
    cam2img, lidar2cam, lidar2img = canonical_projection(p, f'{here}: P')
    if 'K' in view:     # keep the given factors exactly (P's RQ gives them to rounding)
        cam2img, lidar2cam = _pad(k / k[2, 2]), _pad(rt)
    return dict(name=str(name), image=image, size=tuple(size), spacing=spacing,
                cam2img=cam2img, lidar2cam=lidar2cam, lidar2img=lidar2img)


def _explicit_from_dict(views: Sequence, where: str) -> Acquisition:
    if not isinstance(views, list):
        raise CalibrationError(f'{where}: "views" must be a list')
    if len(views) < 2:
        raise CalibrationError(f'{where}: views: at least 2 views are needed, got '
                               f'{len(views)}')
    parsed = [_view_from_dict(view, i, len(views), where) for i, view in enumerate(views)]
    for field in ('name', 'image'):
        seen: Dict[str, int] = {}
        for i, view in enumerate(parsed):
            value = view[field]
            if value is not None and value in seen:
                raise CalibrationError(f'{where}: views[{i}] ({view["name"]}): {field} '
                                       f'{value!r} is listed twice (also views[{seen[value]}])')
            seen[value] = i
    sizes = {view['size'] for view in parsed}
    if len(sizes) > 1:
        first = parsed[0]
        odd = next(i for i, v in enumerate(parsed) if v['size'] != first['size'])
        raise CalibrationError(
            f'{where}: views[{odd}] ({parsed[odd]["name"]}): height/width '
            f'{parsed[odd]["size"][0]}x{parsed[odd]["size"][1]} differ from views[0]\'s '
            f'{first["size"][0]}x{first["size"][1]}; all views must share one image size')
    stack = {key: np.stack([view[key] for view in parsed])
             for key in ('cam2img', 'lidar2cam', 'lidar2img')}
    return Acquisition([v['name'] for v in parsed], parsed[0]['size'], **stack,
                       images=[v['image'] for v in parsed],
                       pixel_spacing_mm=[v['spacing'] for v in parsed])


def acquisition_from_dict(data: Mapping, where: str = 'calibration') -> Acquisition:
    """Validate a calibration dict (see the module text) and build its
    :class:`Acquisition`.

    Args:
        data (Mapping): the parsed JSON.
        where (str): how messages name the source (the file path).

    Raises:
        CalibrationError: one line naming ``where``, the view and the field.
    """
    if not isinstance(data, Mapping):
        raise CalibrationError(f'{where}: must be a JSON object with "views" or "ring"')
    for key, expected in (('world_frame', WORLD_FRAME), ('units', 'mm')):
        if data.get(key, expected) != expected:
            raise CalibrationError(f'{where}: {key}: must be {expected!r}, got {data[key]!r}')
    if ('ring' in data) == ('views' in data):
        raise CalibrationError(f'{where}: needs exactly one of "views" (one entry per view) '
                               'or "ring" (the ring shorthand)')
    if 'views' in data:
        return _explicit_from_dict(data['views'], where)
    ring = _ring_from_dict(data['ring'], where)
    images = data.get('images')
    if images is not None:
        if not (isinstance(images, list) and all(isinstance(i, str) for i in images)):
            raise CalibrationError(f'{where}: images: must be a list of file names')
        if len(images) != ring.num_views:
            raise CalibrationError(f'{where}: images: {len(images)} file names for '
                                   f'ring.num_views={ring.num_views}')
        if len(set(images)) != len(images):
            twice = next(i for i in images if images.count(i) > 1)
            raise CalibrationError(f'{where}: images: {twice!r} is listed twice')
    return Acquisition.from_ring(ring, images=images)


def load_acquisition(path: str) -> Acquisition:
    """Read and validate a calibration file (JSON).

    Raises:
        CalibrationError: one line naming the file (and the view and field).
    """
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise CalibrationError(str(err)) from None
    return acquisition_from_dict(data, path)


def check_image_sizes(acquisition: Acquisition, sizes: Sequence[Tuple[int, int]],
                      where: str = 'calibration') -> None:
    """Refuse images whose ``(H, W)`` differs from the calibration's.

    Args:
        acquisition (Acquisition): the views, in the order of ``sizes``.
        sizes (Sequence[tuple[int, int]]): per view, the image's ``(H, W)``.
        where (str): how messages name the calibration.

    Raises:
        CalibrationError: naming the view, both sizes and the field.
    """
    for view, size in enumerate(sizes):
        if tuple(size) != acquisition.image_size:
            name = acquisition.view_names[view]
            image = acquisition.images[view] or name
            raise CalibrationError(
                f'{where}: view {name}: height/width say {acquisition.image_size[0]}x'
                f'{acquisition.image_size[1]}, the image {image} is {size[0]}x{size[1]}')

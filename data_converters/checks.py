"""Checks of a run's settings made before anything is written: the acquisition must be
physically usable, a render must fit in memory, ``--out`` must be writable.

Each refusal is a :class:`~data_converters.errors.ConverterError` whose message names the
flag and its value (the CLI prints it as one line and exits with status 2); a setting that
is usable but likely unintended gives one warning line (:func:`acquisition_warnings`).

The rules (README "What the converter refuses"):

* at least :data:`MIN_VIEWS` views (a finding is triangulated from two views, and the
  model needs at least two);
* finite distances and pixel pitch (the flag types refuse ``inf`` and ``nan``),
  ``sdd > sod`` (a calibration file is validated when it is read:
  :func:`~projects.mv2d_xray.core.acquisition.load_acquisition`);
* in every view the X-ray source lies outside the body: the camera depth of the
  isocentre (``sod`` for a ring) exceeds ``body_radius_mm`` of the source (150 mm for a
  chest CT);
* every view's detector sees at least the source's ``field_of_view_mm`` (100 mm by
  default) at the isocentre along its shorter side: ``min(H, W) * isocentre_pixel_mm``
  (``min(H, W) * pixel_spacing * sod / sdd`` for a ring);
* one render fits in memory: ``workers * views * H * W *`` :data:`RENDER_BYTES_PER_PIXEL`
  (the renderer keeps each view's ray targets, 12 bytes a pixel, its float32 output, the
  case's images and their 8-bit windowing) must stay under the machine's physical memory.

A finding of ``--min-diameter-mm`` at the isocentre spanning less than one detector pixel
in some view (``min_diameter / isocentre_pixel_mm < 1``; ``min_diameter * sdd / sod /
pixel_spacing`` for a ring) is allowed (small test datasets do it) but warned about; after
the run, findings with no 2D box in any view are listed in the summary.

An acquisition from the ring flags is named by its flags (``--sod 300 ...``), one from a
calibration file by ``--acquisition FILE`` and the view.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import List, Optional

from data_converters.errors import ConverterError
from projects.mv2d_xray.core.acquisition import Acquisition, as_acquisition

#: Fewest views of an acquisition.
MIN_VIEWS = 2
#: Peak bytes per detector pixel and view of one worker's render (see the module text).
RENDER_BYTES_PER_PIXEL = 64
#: Memory a worker needs besides its renders (the CT, torch, DiffDRR): 1 GiB.
WORKER_BASE_BYTES = 1 << 30


def _flag_values(geometry: Acquisition) -> str:
    """The ring flags of an acquisition made from them."""
    ring = geometry.ring
    height, width = ring.image_size
    return (f'--sod {ring.sod_mm:g} --sdd {ring.sdd_mm:g} --pixel-spacing '
            f'{ring.pixel_spacing_mm:g} --image-size {height}x{width}')


def check_acquisition(geometry: Acquisition, field_of_view_mm: float,
                      body_radius_mm: float, calibration: Optional[str] = None) -> None:
    """Refuse an acquisition that cannot give usable views (see the module text).

    Args:
        geometry (Acquisition | XrayGeometry): the views (from the ring flags when
            ``calibration`` is None: a ring).
        field_of_view_mm (float): least width seen at the isocentre, mm.
        body_radius_mm (float): least camera depth of the isocentre, mm.
        calibration (str, optional): the ``--acquisition`` file it was read from.

    Raises:
        ConverterError: naming the flag (or ``--acquisition FILE`` and the view) and its
        value.
    """
    geometry = as_acquisition(geometry)
    where = None if calibration is None else f'--acquisition {calibration}'
    if geometry.num_views < MIN_VIEWS:
        raise ConverterError(
            f'{where or "--views"} {geometry.num_views}: at least {MIN_VIEWS} views are '
            'needed (a finding is located in 3D from two views; the model needs at least two)')
    height, width = geometry.image_size
    for view, name in enumerate(geometry.view_names):
        depth = geometry.source_distances_mm[view]
        if not depth > body_radius_mm:
            if where is None:
                raise ConverterError(
                    f'--sod {geometry.ring.sod_mm:g}: the X-ray source would be inside the '
                    f'body; the source to isocentre distance must exceed {body_radius_mm:g} mm')
            raise ConverterError(
                f'{where}: view {name}: the X-ray source would be inside the body (the '
                f'isocentre is {depth:.4g} mm deep); it must be more than {body_radius_mm:g}'
                ' mm from the source')
        seen = min(height, width) * geometry.isocentre_pixel_mm(view)
        if not seen >= field_of_view_mm:
            if where is None:
                raise ConverterError(
                    f'the detector sees only {seen:.3g} mm at the isocentre '
                    f'({_flag_values(geometry)}: min(H, W) * pixel spacing * sod / sdd); at '
                    f'least {field_of_view_mm:g} mm are needed: raise --pixel-spacing or '
                    '--image-size')
            raise ConverterError(
                f'{where}: view {name}: the detector sees only {seen:.3g} mm at the isocentre '
                f'(min(H, W) * depth / focal length in pixels); at least '
                f'{field_of_view_mm:g} mm are needed')


def acquisition_warnings(geometry: Acquisition, min_diameter_mm: float,
                         calibration: Optional[str] = None) -> List[str]:
    """One-line warnings about a usable but coarse acquisition (``calibration``: the
    ``--acquisition`` file it was read from, else it is a ring from the flags)."""
    geometry = as_acquisition(geometry)
    pixel_mm = max(geometry.isocentre_pixel_mm(v) for v in range(geometry.num_views))
    if geometry.ring is not None and calibration is None:
        ring = geometry.ring
        pixel_mm = ring.pixel_spacing_mm / ring.magnification
    pixels = min_diameter_mm / pixel_mm
    if pixels < 1:
        where = _flag_values(geometry) if calibration is None else \
            f'--acquisition {calibration}'
        return [f'warning: a {min_diameter_mm:g} mm finding at the isocentre spans {pixels:.2g}'
                f' px ({where}); small findings may leave no 2D box']
    return []


def physical_memory_bytes() -> Optional[int]:
    """The machine's physical memory, or None where it cannot be read."""
    try:
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (AttributeError, ValueError, OSError):
        return None


def render_memory_bytes(geometry: Acquisition, workers: int) -> int:
    """Estimated peak memory of ``workers`` processes rendering ``geometry``'s views."""
    height, width = geometry.image_size
    per_worker = geometry.num_views * height * width * RENDER_BYTES_PER_PIXEL
    return max(int(workers), 1) * (per_worker + WORKER_BASE_BYTES)


def check_memory(geometry: Acquisition, workers: int,
                 available: Optional[int] = None) -> None:
    """Refuse a render that cannot fit in the machine's memory.

    Raises:
        ConverterError: naming ``--image-size`` (and ``--views``, ``--workers``).
    """
    available = physical_memory_bytes() if available is None else available
    need = render_memory_bytes(geometry, workers)
    if available is not None and need > available:
        height, width = geometry.image_size
        raise ConverterError(
            f'--image-size {height}x{width} with --views {geometry.num_views} and --workers '
            f'{workers} needs about {need / 2 ** 30:.3g} GiB to render, more than this '
            f'machine\'s {available / 2 ** 30:.3g} GiB: use a smaller --image-size or '
            'fewer --workers')


def check_writable(out_dir: str, flag: str = '--out') -> None:
    """Refuse an output folder that cannot be created or written (nothing is left
    behind: a folder this check creates is removed again)."""
    folder = osp.abspath(out_dir)
    if osp.exists(folder) and not osp.isdir(folder):
        raise ConverterError(f'{flag} {out_dir} exists and is not a folder')
    existing = folder
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    if not osp.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConverterError(f'{flag} {out_dir}: cannot write to {existing} (permission '
                             'denied or read-only)')

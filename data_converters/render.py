"""DRR rendering with DiffDRR for an :class:`~projects.mv2d_xray.geometry.XrayGeometry`.

Volumes are numpy arrays of Hounsfield units indexed ``[row i, column j, slice k]`` with
DICOM's usual orientation (columns along +x = patient left, rows along +y = posterior,
slices sorted by ascending z = superior), i.e. pylidc's ``(i, j, k)``; the ct frame is
centred on the volume (see ``projects/mv2d_xray/geometry.py``).

Attenuation is set from HU explicitly and identically for every scan (DiffDRR's own
``transform_hu_to_density`` rescales each volume by its min / max): density =
``max(HU + 1000, 0) / 1000`` (water = 1, air = 0). Rendered values are line integrals of
that density in mm (water-equivalent path length); :func:`to_uint8` applies one fixed
window to all scans.
"""
from typing import Sequence

import numpy as np
import torch

from projects.mv2d_xray.geometry import XrayGeometry

#: Fixed display window: water-equivalent path length (mm) mapped to white.
WINDOW_MM = 400.0


def hu_to_density(volume_hu: np.ndarray) -> np.ndarray:
    """Water-relative density from HU, the same mapping for every scan."""
    return np.clip((np.asarray(volume_hu, np.float32) + 1000.0) / 1000.0, 0.0, None)


def make_subject(density: np.ndarray, spacing_mm: Sequence[float]):
    """A DiffDRR subject whose world frame is DiffDRR's RAS version of ``ct``."""
    from diffdrr.data import read
    from torchio import ScalarImage
    row, col, sl = (float(s) for s in spacing_mm)
    # index (i, j, k) -> LPS (x = j * col, y = i * row, z = k * sl); RAS = diag(-1,-1,1) LPS
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.array(
        [[0, col, 0, 0], [row, 0, 0, 0], [0, 0, sl, 0], [0, 0, 0, 1]], dtype=np.float64)
    tensor = torch.from_numpy(np.ascontiguousarray(density, dtype=np.float32))[None]
    subject = read(ScalarImage(tensor=tensor, affine=affine), orientation='AP',
                   center_volume=True)
    subject.density.set_data(tensor)
    return subject


def render_views(volume_hu: np.ndarray, spacing_mm: Sequence[float],
                 geometry: XrayGeometry, device: str = 'cpu') -> np.ndarray:
    """Render every view of ``geometry``: ``(num_views, H, W)`` float32 line integrals."""
    from diffdrr.drr import DRR
    from diffdrr.pose import convert
    height, width = geometry.image_size
    subject = make_subject(hu_to_density(volume_hu), spacing_mm)
    drr = DRR(subject, sdd=geometry.sdd_mm, height=height, width=width,
              delx=geometry.pixel_spacing_mm, dely=geometry.pixel_spacing_mm,
              reverse_x_axis=True).to(device)
    images = []
    with torch.no_grad():
        for theta in geometry.angles_rad:
            pose = convert(torch.tensor([[theta, 0.0, 0.0]]),
                           torch.tensor([[0.0, geometry.sod_mm, 0.0]]),
                           parameterization='euler_angles', convention='ZXY').to(device)
            images.append(drr(pose)[0, 0].cpu().numpy())
    return np.stack(images).astype(np.float32)


def to_uint8(line_integrals: np.ndarray) -> np.ndarray:
    """Fixed windowing of line integrals to 8-bit grey (denser = brighter)."""
    scaled = np.clip(np.asarray(line_integrals) / WINDOW_MM, 0.0, 1.0) * 255.0
    return np.round(scaled).astype(np.uint8)

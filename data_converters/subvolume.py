"""Fast DRRs of modified volumes by linearity (used by the demo builder).

A DRR pixel is a line integral of density (``data_converters.render``), so it is *linear*
in the voxel densities along the ray. If a volume ``V' = V + D`` differs from ``V`` only in
a small box, then

    render(V') = render(V) + render(D restricted to the box)

exactly (Siddon's method sums density x intersection length; the box's voxel planes are
the volume's own planes). The demo renders its base CT once and adds, per synthetic case,
the render of each inserted nodule's density *difference* on a small sub-volume placed at
its position in the same ``ct`` frame -- only the rays through the sub-volume's projected
box are traced. ``tests/test_converter_demo.py`` checks this against a direct render of
the modified volume.

The same linearity gives the left <-> right mirrored CT for free: mirroring the volume
(``x -> -x``) maps view ``theta`` onto view ``-theta`` with the image columns reversed, and
``-theta_i = theta_{(N - i) mod N}`` is again one of the views (:func:`mirror_views`).

The rays are DiffDRR's own (its ``Detector`` for the pose that ``data_converters.render``
uses, the README's ``convert(rotation=(theta, 0, 0), translation=(0, sod, 0), ...)``); the
sub-volume gets a RAS affine that puts its voxels where they are in the full volume.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from projects.mv2d_xray.geometry import XrayGeometry, project_boxes3d
from .volume import index_to_ct_matrix

#: DiffDRR's world is RAS; ct is LPS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _pose(theta: float, sod_mm: float, device):
    from diffdrr.pose import convert
    return convert(torch.tensor([[theta, 0.0, 0.0]]), torch.tensor([[0.0, sod_mm, 0.0]]),
                   parameterization='euler_angles', convention='ZXY').to(device)


def render_subvolume(density: np.ndarray, offset: Sequence[int], volume_shape: Sequence[int],
                     spacing_mm: Sequence[float], geometry: XrayGeometry,
                     device: str = 'cpu') -> np.ndarray:
    """Render a density sub-volume that sits at ``offset`` in a larger volume's grid.

    Args:
        density (np.ndarray): ``(a, b, c)`` water-relative densities (e.g. a difference).
        offset (tuple[int, int, int]): index ``(i, j, k)`` of ``density[0, 0, 0]`` in the
            full volume.
        volume_shape (tuple[int, int, int]): shape of the full volume (defines ``ct``).
        spacing_mm (tuple[float, float, float]): ``(row, col, slice)`` spacing.
        geometry (XrayGeometry): the views.
        device (str): torch device.

    Returns:
        np.ndarray: ``(num_views, H, W)`` float32 line integrals in mm, zero away from the
        sub-volume's projection.
    """
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from torchio import ScalarImage

    # one voxel of zeros around it: exact, and DiffDRR squeezes away axes of length 1
    density = np.pad(np.asarray(density, dtype=np.float32), 1)
    offset = np.asarray(offset, dtype=np.float64) - 1
    # index of the sub-volume -> ct (shift by the offset) -> DiffDRR's RAS world
    shift = np.eye(4)
    shift[:3, 3] = offset
    index2ct = index_to_ct_matrix(volume_shape, spacing_mm) @ shift
    tensor = torch.from_numpy(density)[None]
    subject = read(ScalarImage(tensor=tensor, affine=_LPS_TO_RAS @ index2ct),
                   orientation='AP', center_volume=False)
    subject.density.set_data(tensor)
    height, width = geometry.image_size
    drr = DRR(subject, sdd=geometry.sdd_mm, height=height, width=width,
              delx=geometry.pixel_spacing_mm, dely=geometry.pixel_spacing_mm,
              reverse_x_axis=True).to(device)

    # the sub-volume's full-voxel box, to find the pixels whose rays can cross it
    lo = index2ct[:3, :3] @ np.full(3, -0.5) + index2ct[:3, 3]
    hi = index2ct[:3, :3] @ (np.array(density.shape) - 0.5) + index2ct[:3, 3]
    box = np.concatenate([(lo + hi) / 2, np.abs(hi - lo), [0.0]])[None]
    rois = project_boxes3d(geometry.view_matrices()['lidar2img'], box)[:, 0]   # (N, 4)

    out = np.zeros((geometry.num_views, height, width), dtype=np.float32)
    with torch.no_grad():
        for view, theta in enumerate(geometry.angles_rad):
            x1, y1, x2, y2 = rois[view]
            # pixel (r, c) is centred at (c + 0.5, r + 0.5); one pixel of margin
            c0, c1 = max(int(np.floor(x1)) - 1, 0), min(int(np.ceil(x2)) + 1, width)
            r0, r1 = max(int(np.floor(y1)) - 1, 0), min(int(np.ceil(y2)) + 1, height)
            if c1 <= c0 or r1 <= r0:
                continue
            source, target = drr.detector(_pose(theta, geometry.sod_mm, device), None)
            rows = torch.arange(r0, r1, device=target.device)
            cols = torch.arange(c0, c1, device=target.device)
            pixels = (rows[:, None] * width + cols[None, :]).reshape(-1)
            values = drr.render(drr.density, source, target[:, pixels])
            out[view, r0:r1, c0:c1] = values.reshape(r1 - r0, c1 - c0).cpu().numpy()
    return out


def mirror_views(images: np.ndarray) -> np.ndarray:
    """Views of the left <-> right mirrored volume from those of the volume.

    Args:
        images (np.ndarray): ``(N, H, W)`` renders at ``theta_i = 2 pi i / N``.

    Returns:
        np.ndarray: ``(N, H, W)``, view ``i`` = view ``(N - i) mod N`` with its columns
        reversed (the detector is centred on the central ray, so this is exact).
    """
    num_views = images.shape[0]
    order = [(num_views - i) % num_views for i in range(num_views)]
    return np.ascontiguousarray(images[order][:, :, ::-1])

"""Anatomies that differ per case, made from one CT: its own nodules removed, then a random
affine and a smooth elastic deformation, soft-tissue HU jitter and (elsewhere) mirroring.

Volumes are HU arrays indexed ``[row i, column j, slice k]`` with ``spacing_mm`` ``(row,
col, slice)`` as in :mod:`data_converters.render`; mm offsets below are about the
volume's centre, in the same ``(i, j, k)`` axis order (rows = +y posterior, columns = +x
patient left, slices = +z superior; see ``projects/mv2d_xray/core/geometry.py``).

* :func:`remove_findings`: each finding's mask, grown by ``margin_mm`` inside the lungs,
  is filled with lung parenchyma: HU drawn from the parenchyma (HU < -500) in a shell
  around it, smoothed a little and rescaled to the shell's spread, so the texture level
  and noise of the surrounding lung continue through the hole (vessels are not
  continued);
* :class:`AnatomyParams` (drawn by :meth:`AnatomyParams.draw`) and :func:`deform`: the
  output voxel at ``p`` mm takes the input at ``M p + t + u(p)``, ``M`` a rotation (small
  angles about the three axes) times the inverse of an anisotropic scale, ``t`` a shift
  of the anatomy relative to the isocentre and ``u`` a smooth random displacement field
  (Gaussian-smoothed noise on a coarse grid, RMS ``elastic_mm``); trilinear resampling
  (HU) and nearest (lung mask), air outside; then soft-tissue HU jitter: fat and muscle
  bands each shifted by their own offset, with Gaussian weights in HU so nothing jumps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch

#: Ranges of the random anatomy (uniform draws). Scales are output / input sizes.
SCALE_RANGE = (0.9, 1.1)           # overall
AXIS_SCALE_JITTER = 0.04            # per axis, relative
ROTATION_DEG = (3.0, 3.0, 5.0)      # about the row (y), column (x) and slice (z) axes
SHIFT_MM = (10.0, 10.0, 10.0)       # of the anatomy relative to the isocentre
ELASTIC_MM = 4.0                    # RMS of the smooth displacement
ELASTIC_GRID_MM = 12.0              # coarse grid of the displacement noise
ELASTIC_SMOOTH_CELLS = 2.5          # Gaussian sigma of its smoothing, in grid cells
FAT_HU, MUSCLE_HU, BAND_HU = -100.0, 50.0, 50.0    # centres and width of the jitter bands
HU_JITTER = 25.0                    # range of each band's offset (+-)
#: Air (HU) outside the resampled volume.
AIR_HU = -1024.0
#: Rows per resampling slab (bounds memory: the sampling grid of a slab).
SLAB_ROWS = 32


@dataclass(frozen=True)
class AnatomyParams:
    """One random anatomy (see the module docstring).

    Attributes:
        scale (tuple): ``(i, j, k)`` scale factors (output / input size).
        rotation_deg (tuple): rotations about the ``i``, ``j`` and ``k`` axes (degrees).
        shift_mm (tuple): ``(i, j, k)`` shift of the anatomy (mm).
        elastic (np.ndarray): ``(3, a, b, c)`` displacement (mm) on the coarse grid (spacing
            :data:`ELASTIC_GRID_MM`, spanning the volume), already smoothed.
        fat_offset_hu, muscle_offset_hu (float): HU jitter of the two soft-tissue bands.
    """
    scale: Tuple[float, float, float]
    rotation_deg: Tuple[float, float, float]
    shift_mm: Tuple[float, float, float]
    elastic: np.ndarray
    fat_offset_hu: float
    muscle_offset_hu: float

    @classmethod
    def draw(cls, shape: Sequence[int], spacing_mm: Sequence[float],
             rng: np.random.Generator) -> 'AnatomyParams':
        """A random anatomy for a volume of ``shape`` voxels of ``spacing_mm``."""
        from scipy.ndimage import gaussian_filter
        overall = rng.uniform(*SCALE_RANGE)
        scale = tuple(float(overall * (1 + rng.uniform(-AXIS_SCALE_JITTER, AXIS_SCALE_JITTER)))
                      for _ in range(3))
        rotation = tuple(float(rng.uniform(-r, r)) for r in ROTATION_DEG)
        shift = tuple(float(rng.uniform(-s, s)) for s in SHIFT_MM)
        extent = np.asarray(shape, dtype=float) * np.asarray(spacing_mm, dtype=float)
        grid = tuple(int(np.ceil(e / ELASTIC_GRID_MM)) + 1 for e in extent)
        noise = rng.normal(size=(3,) + grid)
        field = np.stack([gaussian_filter(c, ELASTIC_SMOOTH_CELLS, mode='nearest')
                          for c in noise])
        field *= ELASTIC_MM / max(float(np.sqrt((field ** 2).sum(axis=0).mean())), 1e-12)
        return cls(scale, rotation, shift, field.astype(np.float32),
                   float(rng.uniform(-HU_JITTER, HU_JITTER)),
                   float(rng.uniform(-HU_JITTER, HU_JITTER)))

    def matrix(self) -> np.ndarray:
        """``M`` (3x3, ``(i, j, k)`` mm): output position -> input position, without the
        shift and the elastic part: ``R^T diag(1 / scale)``."""
        a, b, c = np.deg2rad(self.rotation_deg)
        rot_i = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        rot_j = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
        rot_k = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
        return (rot_k @ rot_j @ rot_i).T @ np.diag(1.0 / np.asarray(self.scale))

    def summary(self) -> dict:
        """JSON-able description (the elastic field as its RMS, mm)."""
        rms = float(np.sqrt((self.elastic.astype(np.float64) ** 2).sum(axis=0).mean()))
        return dict(scale=[round(s, 4) for s in self.scale],
                    rotation_deg=[round(r, 3) for r in self.rotation_deg],
                    shift_mm=[round(s, 3) for s in self.shift_mm],
                    elastic_rms_mm=round(rms, 3), fat_offset_hu=round(self.fat_offset_hu, 2),
                    muscle_offset_hu=round(self.muscle_offset_hu, 2))


def deform(hu: np.ndarray, lungs: np.ndarray, spacing_mm: Sequence[float],
           params: AnatomyParams) -> Tuple[np.ndarray, np.ndarray]:
    """Apply ``params`` to a CT and its lung mask (same grid out as in).

    Args:
        hu (np.ndarray): ``(rows, cols, slices)`` HU (float32).
        lungs (np.ndarray): bool, same shape.
        spacing_mm (Sequence[float]): ``(row, col, slice)`` voxel size.
        params (AnatomyParams): the anatomy.

    Returns:
        tuple: the deformed HU (float32) and lung mask (bool), both ``(rows, cols,
        slices)``.

    Implementation: ``grid_sample`` (``align_corners=True``) wants the source position in
    ``[-1, 1]`` per axis, ``g = source_index * 2 / (n - 1) - 1``; with ``source_index =
    (M (p - c) s + t + u) / s + c`` that is affine in the output index ``p`` plus the
    scaled displacement, built per slab of rows from three 1-D terms.
    """
    import torch.nn.functional as F
    shape = np.asarray(hu.shape)
    spacing = np.asarray([float(s) for s in spacing_mm])
    centre = (shape - 1) / 2.0
    to_grid = 2.0 / (np.maximum(shape - 1, 1) * spacing)           # mm -> [-1, 1], per axis
    # g = G p + g0 + to_grid * u, with G (3x3) acting on the index p (axis order i, j, k)
    gain = to_grid[:, None] * params.matrix() * spacing[None, :]
    offset = to_grid * (np.asarray(params.shift_mm) - params.matrix() @ (centre * spacing)) \
        + to_grid * centre * spacing - 1.0
    terms = [torch.from_numpy((np.arange(n)[:, None] * gain[:, axis][None, :])
                              .astype(np.float32)) for axis, n in enumerate(shape)]
    scale_u = torch.from_numpy(to_grid.astype(np.float32))
    # the elastic field spans the volume: output index -> its [-1, 1] coordinates, (k, j, i)
    field_axes = [torch.from_numpy(np.linspace(-1, 1, n).astype(np.float32)) for n in shape]
    volume = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32) - AIR_HU)[None, None]
    mask = torch.from_numpy(np.ascontiguousarray(lungs, dtype=np.float32))[None, None]
    field = torch.from_numpy(params.elastic)[None]                    # (1, 3, a, b, c)
    base_jk = terms[1][:, None, :] + terms[2][None, :, :] \
        + torch.from_numpy(offset.astype(np.float32))                # (J, K, 3)
    fj, fk = torch.meshgrid(field_axes[1], field_axes[2], indexing='ij')
    out_hu = np.empty(hu.shape, np.float32)
    out_lungs = np.empty(hu.shape, bool)
    for start in range(0, int(shape[0]), SLAB_ROWS):
        rows = slice(start, min(start + SLAB_ROWS, int(shape[0])))
        count = rows.stop - rows.start
        where = torch.stack([fk.expand(count, -1, -1), fj.expand(count, -1, -1),
                             field_axes[0][rows, None, None].expand(-1, *fj.shape)], -1)
        displacement = F.grid_sample(field, where[None], mode='bilinear',
                                     padding_mode='border', align_corners=True)[0]
        grid = base_jk[None] + terms[0][rows, None, None, :] \
            + displacement.permute(1, 2, 3, 0) * scale_u              # (r, J, K, 3): (i, j, k)
        grid = grid.flip(-1)[None]                                      # grid_sample: (k, j, i)
        out_hu[rows] = F.grid_sample(volume, grid, mode='bilinear', padding_mode='zeros',
                                     align_corners=True)[0, 0].numpy()
        out_lungs[rows] = F.grid_sample(mask, grid, mode='nearest', padding_mode='zeros',
                                        align_corners=True)[0, 0].numpy() > 0.5
    out_hu += AIR_HU
    out_hu += params.fat_offset_hu * np.exp(-0.5 * ((out_hu - FAT_HU) / BAND_HU) ** 2) \
        + params.muscle_offset_hu * np.exp(-0.5 * ((out_hu - MUSCLE_HU) / BAND_HU) ** 2)
    return out_hu, out_lungs


def _ball(radius_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    """Bool ellipsoid structuring element of ``radius_mm`` on the voxel grid."""
    half = [int(np.floor(radius_mm / s)) for s in spacing_mm]
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing_mm)]
    a, b, c = np.meshgrid(*axes, indexing='ij')
    return a ** 2 + b ** 2 + c ** 2 <= radius_mm ** 2


def remove_findings(hu: np.ndarray, lungs: np.ndarray, spacing_mm: Sequence[float],
                    findings: Sequence, rng: np.random.Generator, margin_mm: float = 2.0,
                    shell_mm: float = 6.0, parenchyma_hu: float = -500.0
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """Fill findings with the surrounding lung parenchyma (see the module docstring).

    Args:
        hu (np.ndarray): ``(rows, cols, slices)`` HU.
        lungs (np.ndarray): bool lung mask, same shape.
        spacing_mm (Sequence[float]): voxel size.
        findings (Sequence[Finding]): the findings to remove (masks in ``hu``'s grid).
        rng (np.random.Generator): draws the fill.
        margin_mm (float): the mask grows by this much inside the lungs (partial-volume
            rim of the nodule).
        shell_mm (float): thickness of the shell the parenchyma is drawn from.
        parenchyma_hu (float): shell voxels above this (vessels, wall) are not drawn.

    Returns:
        tuple: new HU (float32) and lung mask (the filled voxels become lung).
    """
    from scipy.ndimage import binary_dilation, gaussian_filter
    hu = np.array(hu, dtype=np.float32)
    lungs = np.array(lungs, dtype=bool)
    pad = [int(np.ceil((margin_mm + shell_mm) / s)) + 1 for s in spacing_mm]
    for finding in findings:
        lo = [max(o - p, 0) for o, p in zip(finding.offset, pad)]
        hi = [min(o + n + p, size) for o, n, p, size in
              zip(finding.offset, finding.mask.shape, pad, hu.shape)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        mask = np.zeros([b - a for a, b in zip(lo, hi)], bool)
        inner = tuple(slice(o - a, o - a + n) for o, a, n in
                      zip(finding.offset, lo, finding.mask.shape))
        mask[inner] = finding.mask
        grown = binary_dilation(mask, _ball(margin_mm, spacing_mm))
        region = mask | (grown & lungs[box])
        near = binary_dilation(region, _ball(margin_mm + shell_mm, spacing_mm))
        shell = near & ~binary_dilation(region, _ball(margin_mm, spacing_mm)) & lungs[box] \
            & (hu[box] < parenchyma_hu)
        values = hu[box][shell]
        if values.size == 0:
            values = np.array([-850.0], np.float32)
        fill = rng.choice(values, size=region.shape).astype(np.float32)
        smooth = gaussian_filter(fill, sigma=[0.7 / max(s / min(spacing_mm), 1.0)
                                              for s in spacing_mm])
        spread = float(smooth.std())
        smooth = values.mean() + (smooth - smooth.mean()) * (
            values.std() / spread if spread > 0 else 0.0)
        block = hu[box]
        block[region] = smooth[region]
        lungs[box] |= region
    return hu, lungs

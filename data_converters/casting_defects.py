"""Casting defects placed inside a part's material: gas pores, inclusions and cracks.

Every defect is a bool voxel mask in the part's index grid (``[row i, column j, slice k]``,
cubic voxels of ``pitch_mm``) and a *fill*: what its voxels hold instead of the alloy.

* ``pore`` -- a gas pore: an ellipsoid of diameter 0.3-2 mm (semi-axes
  ``d/2 * (1, U(0.7, 1), U(0.7, 1))``, randomly oriented), or with probability
  ``cluster_probability`` a cluster of 2-4 such pores within a few mm, labelled as one
  finding (its box holds the whole cluster); void (fill 0).
* ``inclusion`` -- a foreign particle: an ellipsoid of 0.3-2 mm of a denser or lighter
  material (:data:`~data_converters.xray_physics.INCLUSION_MATERIALS`; fill = that
  material).
* ``crack`` -- a thin planar void, 1-6 mm long, ``length * U(0.2, 0.5)`` wide and
  0.05-0.2 mm thick, in a random plane. Thinner than a voxel: its voxels are the one-voxel
  layer ``|n . (x - c)| <= pitch / 2`` of the plane inside the rectangle, each holding
  the alloy with the void fraction ``thickness / pitch`` removed (the line integral across
  the crack loses ``mu * thickness``, as for the real crack).

Placement (:func:`place_defects`): centres are drawn uniformly over the part's height (a
slice, then a voxel of it), so the airfoil gets most defects rather than the massive root;
a defect is kept only when every voxel of it lies at
least one voxel inside the material (the Euclidean distance to the nearest non-material
voxel centre is more than one pitch, which also keeps it off the cooling channels), and its
box, grown by one voxel, overlaps no other defect's box -- so each label box holds its own
defect's voxels and nothing of another's. Up to :data:`MAX_TRIES` random positions are
tried per defect; defects that find no place are dropped (and counted).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

#: The defect classes, index = label.
DEFECT_CLASSES = ('pore', 'inclusion', 'crack')
#: Random positions tried per defect.
MAX_TRIES = 100


@dataclass(frozen=True)
class DefectSettings:
    """How many defects of which kind and size (recorded in ``metainfo``).

    Args:
        count (tuple[int, int]): defects per part, uniform in ``[low, high]`` (0 gives
            negative parts).
        class_mix (dict): probability of each class.
        size_mm (dict): ``(low, high)`` diameter (pores, inclusions) or length (cracks).
        crack_thickness_mm (tuple[float, float]): crack opening.
        cluster_probability (float): a pore is a cluster of 2-4 pores.
        detectable_mm (float): defects smaller than this (their size) become ignore
            regions.
    """
    count: Tuple[int, int] = (0, 5)
    class_mix: Dict[str, float] = field(
        default_factory=lambda: dict(pore=0.5, inclusion=0.25, crack=0.25))
    size_mm: Dict[str, Tuple[float, float]] = field(
        default_factory=lambda: dict(pore=(0.3, 2.0), inclusion=(0.3, 2.0),
                                     crack=(1.0, 6.0)))
    crack_thickness_mm: Tuple[float, float] = (0.05, 0.2)
    cluster_probability: float = 0.2
    detectable_mm: float = 0.4

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class Defect:
    """One placed defect.

    Attributes:
        label (int): index in :data:`DEFECT_CLASSES`.
        mask (np.ndarray): bool ``(a, b, c)``, cropped to its voxels.
        offset (tuple[int, int, int]): index of ``mask[0, 0, 0]`` in the part's grid.
        size_mm (float): diameter (pore, inclusion; a cluster's extent) or length (crack).
        fill (str): ``'void'``, an inclusion material's name, or ``'crack'``.
        void_fraction (float): the part of each voxel's alloy removed (1 for voids and
            inclusions, ``thickness / pitch`` for cracks).
    """
    label: int
    mask: np.ndarray
    offset: Tuple[int, int, int]
    size_mm: float
    fill: str
    void_fraction: float = 1.0

    @property
    def name(self) -> str:
        return DEFECT_CLASSES[self.label]

    def box(self) -> Tuple[Tuple[int, int], ...]:
        """Inclusive index ranges of the mask."""
        return tuple((o, o + s - 1) for o, s in zip(self.offset, self.mask.shape))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _local_grid(half_mm: float, pitch_mm: float) -> np.ndarray:
    """Voxel-centre offsets ``(n, n, n, 3)`` in mm (row, col, slice axes) of a cube of
    half-size ``half_mm`` centred on a voxel."""
    n = int(math.ceil(half_mm / pitch_mm))
    axis = np.arange(-n, n + 1) * pitch_mm
    return np.stack(np.meshgrid(axis, axis, axis, indexing='ij'), -1)


def ellipsoid_mask(semi_axes_mm, rotation: np.ndarray, pitch_mm: float) -> np.ndarray:
    """Bool mask of a rotated ellipsoid centred on the middle voxel (voxel centres
    inside)."""
    grid = _local_grid(max(semi_axes_mm), pitch_mm) @ rotation       # to the body frame
    inside = ((grid / np.asarray(semi_axes_mm)) ** 2).sum(-1) <= 1.0
    if not inside.any():              # smaller than a voxel: keep the centre voxel
        inside[tuple(s // 2 for s in inside.shape)] = True
    return inside


def crack_mask(length_mm: float, width_mm: float, rotation: np.ndarray,
               pitch_mm: float) -> np.ndarray:
    """Bool mask of the one-voxel layer of a rectangle ``length x width`` in the plane
    with normal ``rotation[:, 2]``."""
    grid = _local_grid(length_mm / 2 + pitch_mm, pitch_mm) @ rotation
    return ((np.abs(grid[..., 0]) <= length_mm / 2) & (np.abs(grid[..., 1]) <= width_mm / 2)
            & (np.abs(grid[..., 2]) <= pitch_mm / 2))


def _pore_or_cluster(rng, size: Tuple[float, float], settings: DefectSettings,
                     pitch_mm: float) -> Tuple[np.ndarray, float]:
    """A pore's mask or a cluster's (the union, in one grid) and its size in mm."""
    count = int(rng.integers(2, 5)) if rng.uniform() < settings.cluster_probability else 1
    pores = []
    for _ in range(count):
        d = rng.uniform(*size)
        semi = d / 2 * np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)])
        shift = rng.uniform(-1.5, 1.5, 3) * (count > 1)
        pores.append((semi, _random_rotation(rng), shift))
    half = max(np.abs(s).max() + p.max() for p, _, s in pores)
    grid = _local_grid(half, pitch_mm)
    mask = np.zeros(grid.shape[:3], dtype=bool)
    for semi, rot, shift in pores:
        body = (grid - shift) @ rot
        mask |= ((body / semi) ** 2).sum(-1) <= 1.0
    if not mask.any():
        mask[tuple(s // 2 for s in mask.shape)] = True
    if count == 1:
        return mask, float(2 * pores[0][0][0])
    extent = (np.array(np.nonzero(mask)).ptp(axis=1).max() + 1) * pitch_mm
    return mask, float(extent)


def make_defect_shape(rng: np.random.Generator, label: int, settings: DefectSettings,
                      pitch_mm: float, inclusion_materials: Tuple[str, ...]
                      ) -> Tuple[np.ndarray, float, str, float]:
    """Mask (centred), size (mm), fill and void fraction of one random defect."""
    name = DEFECT_CLASSES[label]
    size = settings.size_mm[name]
    if name == 'pore':
        mask, extent = _pore_or_cluster(rng, size, settings, pitch_mm)
        return mask, extent, 'void', 1.0
    if name == 'inclusion':
        d = rng.uniform(*size)
        semi = d / 2 * np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)])
        material = inclusion_materials[int(rng.integers(len(inclusion_materials)))]
        return ellipsoid_mask(semi, _random_rotation(rng), pitch_mm), float(d), material, 1.0
    length = rng.uniform(*size)
    width = length * rng.uniform(0.2, 0.5)
    thickness = rng.uniform(*settings.crack_thickness_mm)
    mask = crack_mask(length, width, _random_rotation(rng), pitch_mm)
    return mask, float(length), 'crack', float(min(thickness / pitch_mm, 1.0))


def _crop(mask: np.ndarray) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    idx = np.nonzero(mask)
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    return mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], tuple(lo)


def _boxes_overlap(a, b, margin: int = 1) -> bool:
    return all(a0 - margin <= b1 and b0 - margin <= a1 for (a0, a1), (b0, b1) in zip(a, b))


def place_defects(material: np.ndarray, pitch_mm: float, rng: np.random.Generator,
                  settings: DefectSettings = DefectSettings(),
                  inclusion_materials: Tuple[str, ...] = ('HfO2', 'Al2O3'),
                  depth_mm: Optional[np.ndarray] = None) -> Tuple[List[Defect], int]:
    """Draw and place a part's defects (see the module text).

    Args:
        material (np.ndarray): bool ``(rows, cols, slices)`` part mask.
        pitch_mm (float): the voxel size.
        rng (np.random.Generator): every random draw.
        settings (DefectSettings): counts, mix, sizes.
        inclusion_materials (tuple[str, ...]): fills of inclusions.
        depth_mm (np.ndarray, optional): distance (mm) of each voxel to the nearest
            non-material voxel (``scipy.ndimage.distance_transform_edt`` of ``material``
            times the pitch); computed when not given.

    Returns:
        tuple: the placed defects and the number that found no place.
    """
    if depth_mm is None:
        from scipy.ndimage import distance_transform_edt
        depth_mm = distance_transform_edt(material) * pitch_mm
    deep = depth_mm > pitch_mm * 1.0001                         # more than one voxel in
    candidates = np.argwhere(deep)
    # uniform over the slices first, then over a slice's voxels: the massive root would
    # otherwise take most defects, where the thick metal leaves little contrast
    per_slice = np.bincount(candidates[:, 2], minlength=material.shape[2]).astype(np.float64)
    weights = np.where(per_slice[candidates[:, 2]] > 0, 1.0 / per_slice[candidates[:, 2]], 0)
    cdf = np.cumsum(weights)
    cdf /= max(cdf[-1] if len(cdf) else 1.0, 1e-12)
    classes = list(settings.class_mix)
    probs = np.array([settings.class_mix[c] for c in classes], dtype=np.float64)
    count = int(rng.integers(settings.count[0], settings.count[1] + 1))
    placed: List[Defect] = []
    dropped = 0
    for _ in range(count):
        label = DEFECT_CLASSES.index(classes[int(rng.choice(len(classes), p=probs / probs.sum()))])
        shape_mask, size, fill, void = make_defect_shape(rng, label, settings, pitch_mm,
                                                         inclusion_materials)
        shape_mask, _ = _crop(shape_mask)
        for _try in range(MAX_TRIES):
            if not len(candidates):
                break
            pick = min(int(np.searchsorted(cdf, rng.uniform(), side='right')),
                       len(candidates) - 1)
            centre = candidates[pick]
            offset = tuple(int(c - s // 2) for c, s in zip(centre, shape_mask.shape))
            box = tuple((o, o + s - 1) for o, s in zip(offset, shape_mask.shape))
            if any(o < 0 or o + s > n for o, s, n in zip(offset, shape_mask.shape,
                                                          material.shape)):
                continue
            if any(_boxes_overlap(box, d.box()) for d in placed):
                continue
            region = deep[box[0][0]:box[0][1] + 1, box[1][0]:box[1][1] + 1,
                          box[2][0]:box[2][1] + 1]
            if not region[shape_mask].all():
                continue
            placed.append(Defect(label, shape_mask.copy(), offset, size, fill, void))
            break
        else:
            dropped += 1
    return placed, dropped

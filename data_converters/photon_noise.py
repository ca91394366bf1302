"""Quantum (photon) noise of a projection radiograph, applied to noiseless line integrals.

A DRR pixel holds the line integral ``L`` (mm of water-equivalent path) of the density
along its ray. The detector counts ``N ~ Poisson(I0 * exp(-mu * L))`` quanta, with ``mu``
the linear attenuation coefficient of water at the beam's effective energy and ``I0`` the
quanta an unattenuated pixel counts; the image is then converted back to a line integral,
``L' = -log(N / I0) / mu``. For large counts ``L'`` has mean ``L`` (+ ``1 / (2 mu^2 I0
exp(-mu L))`` bias, negligible here) and standard deviation ``1 / (mu sqrt(I0 exp(-mu L)))``
mm: noise grows behind dense anatomy, as in a real radiograph. Scatter, the detector's
blur and electronic noise are not modelled.

Default dose (assumptions, stated so they can be changed):

* effective energy ~60 keV (a 110-125 kVp chest beam): ``mu_water = 0.0206 /mm``
  (NIST XCOM, water at 60 keV: 0.2059 cm^2/g);
* fluence per air kerma 30174 quanta / (mm^2 uGy): IEC 62220-1's RQA5 beam quality, the
  standard for detector DQE measurements;
* unattenuated air kerma at the detector per view: 10 uGy. A chest PA radiograph gives
  ~0.1 mGy entrance surface dose; at 1.8 m source-detector distance the unattenuated beam
  at the detector is ~70 uGy, and the ten views of a chest-tomosynthesis-like study
  (total ~1.5-2 PA radiographs of dose) get ~10 uGy each;
* detective quantum efficiency at zero frequency 0.6 (CsI flat panel).

So a pixel of pitch ``p`` mm counts ``I0 = 30174 * 10 * 0.6 * p^2`` quanta unattenuated:
1.13e6 at 2.5 mm. Behind the lungs (L ~ 150 mm, 4.6 % transmitted) that is ~5e4 quanta,
sigma ~0.22 mm of water; behind the mediastinum (L ~ 300 mm) ~0.94 mm.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from data_converters.errors import ConverterError


@dataclass(frozen=True)
class PhotonNoise:
    """Poisson quantum noise at a fixed dose (see the module docstring).

    Args:
        air_kerma_ugy (float): unattenuated air kerma at the detector per view (uGy).
        fluence_per_ugy (float): quanta per mm^2 per uGy of air kerma.
        dqe (float): detective quantum efficiency (fraction of quanta that count).
        mu_water_per_mm (float): attenuation of water at the effective energy (/mm).
    """
    air_kerma_ugy: float = 10.0
    fluence_per_ugy: float = 30174.0
    dqe: float = 0.6
    mu_water_per_mm: float = 0.0206

    def __post_init__(self):
        for name in ('air_kerma_ugy', 'fluence_per_ugy', 'dqe', 'mu_water_per_mm'):
            if not float(getattr(self, name)) > 0:
                raise ConverterError(f'photon noise: {name} must be > 0, got '
                                     f'{getattr(self, name)!r}')

    def quanta_per_pixel(self, pixel_mm: float) -> float:
        """``I0``: quanta an unattenuated detector pixel of pitch ``pixel_mm`` counts."""
        return float(self.fluence_per_ugy * self.air_kerma_ugy * self.dqe * pixel_mm ** 2)

    def sigma_mm(self, line_integral_mm, pixel_mm: float) -> np.ndarray:
        """The model's standard deviation (mm of water) of a pixel with line integral
        ``line_integral_mm`` (any shape): ``1 / (mu sqrt(I0 exp(-mu L)))``."""
        counts = self.quanta_per_pixel(pixel_mm) * np.exp(
            -self.mu_water_per_mm * np.asarray(line_integral_mm, dtype=np.float64))
        return 1.0 / (self.mu_water_per_mm * np.sqrt(counts))

    def apply(self, line_integrals: np.ndarray, pixel_mm: float,
              rng: np.random.Generator) -> np.ndarray:
        """Noisy line integrals.

        Args:
            line_integrals (np.ndarray): ``(..., H, W)`` noiseless line integrals (mm of
                water, ``img`` frame), >= 0.
            pixel_mm (float): detector pixel pitch (mm).
            rng (np.random.Generator): the stream of this image (seed it per case and
                view for reproducible outputs).

        Returns:
            np.ndarray: float32, same shape: ``-log(max(N, 0.5) / I0) / mu`` with
            ``N ~ Poisson(I0 exp(-mu L))`` (a pixel that counts nothing reads as half a
            quantum, so the log stays finite).
        """
        i0 = self.quanta_per_pixel(pixel_mm)
        expected = i0 * np.exp(-self.mu_water_per_mm
                               * np.asarray(line_integrals, dtype=np.float64))
        counts = np.maximum(rng.poisson(expected), 0.5)
        return (-np.log(counts / i0) / self.mu_water_per_mm).astype(np.float32)

    def settings(self, pixel_mm: float) -> dict:
        """The model's settings for the dataset's metainfo (with ``I0`` at ``pixel_mm``)."""
        return dict(asdict(self), quanta_per_pixel=round(self.quanta_per_pixel(pixel_mm), 1),
                    model='L = -log(Poisson(I0 exp(-mu L)) / I0) / mu; no scatter, blur or '
                          'electronic noise')

"""16-bit images: line integrals written as 16-bit grey PNG with a fixed scale.

The 8-bit demo window (:data:`~data_converters.render.WINDOW_MM`, 400 mm of water to
white) gives 0.64 grey levels per mm of water: a solid 5 mm nodule in lung changes a pixel
by ~3 levels. Sources that need small contrasts write 16-bit PNG instead, over the same
window: ``value = round(clip(L / window_mm, 0, 1) * 65535)``, i.e. 163.8 levels per mm
(0.0061 mm per level). The window is recorded in ``metainfo['converter']['image']``
(:func:`image_settings`). The loading transform ``LoadXrayMultiViewImages`` reads a 16-bit
PNG unchanged and scales it by ``255 / 65535`` to the 8-bit images' float grey scale
(``L = grey * window_mm / 255``), so models, augmentations and ``data_preprocessor``
mean/std see the same units for 8-bit and 16-bit datasets.
"""
from __future__ import annotations

import numpy as np

#: Largest value of a 16-bit image (white: the window's top).
MAX_VALUE_16 = 65535


def to_uint16(line_integrals: np.ndarray, window_mm: float) -> np.ndarray:
    """Fixed windowing of line integrals (mm of water, any shape) to 16-bit grey:
    ``round(clip(L / window_mm, 0, 1) * 65535)`` as uint16 (denser = brighter)."""
    scaled = np.clip(np.asarray(line_integrals, dtype=np.float64) / window_mm, 0.0, 1.0)
    return np.round(scaled * MAX_VALUE_16).astype(np.uint16)


def from_uint16(values: np.ndarray, window_mm: float) -> np.ndarray:
    """Inverse of :func:`to_uint16` (mm of water, float64; exact to half a level,
    ``window_mm / 131070`` mm)."""
    return np.asarray(values, dtype=np.float64) * (window_mm / MAX_VALUE_16)


def image_settings(window_mm: float, unit: str = 'mm of water') -> dict:
    """``metainfo['converter']['image']`` of a 16-bit dataset.

    Args:
        window_mm (float): the line integral at white, in the renderer's units.
        unit (str): what those units are: ``'mm of water'`` for the chest sources; the
            blades render ``mu`` volumes, whose line integral ``-log(I / I0)`` has none.
    """
    return dict(format='png', bit_depth=16, window_mm=float(window_mm),
                max_value=MAX_VALUE_16, mm_per_level=float(window_mm) / MAX_VALUE_16,
                unit=unit,
                value='round(clip(L / window_mm, 0, 1) * max_value), L the line integral '
                      f'({unit}); LoadXrayMultiViewImages reads value * 255 / max_value')

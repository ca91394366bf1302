"""Local-contrast input channels for grey X-ray views."""
from typing import Sequence

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet3d.registry import TRANSFORMS


def high_pass(grey: np.ndarray, sigma_px: float) -> np.ndarray:
    """``grey`` minus its Gaussian blur of standard deviation ``sigma_px`` (pixels).

    Args:
        grey (np.ndarray): ``(H, W)`` grey values (any scale).

    Returns:
        np.ndarray: ``(H, W)`` float32, same scale; 0 where the image is locally linear.
        Borders are reflected (``cv2.BORDER_REFLECT_101``), so a flat image gives 0
        everywhere.
    """
    grey = np.asarray(grey, np.float32)
    blurred = cv2.GaussianBlur(grey, (0, 0), sigmaX=float(sigma_px), sigmaY=float(sigma_px),
                               borderType=cv2.BORDER_REFLECT_101)
    return grey - blurred


@TRANSFORMS.register_module()
class XrayLocalContrast(BaseTransform):
    """Put the grey view in channel 0 and its high-pass residues in channels 1, 2.

    A small finding changes a radiograph by a tiny fraction of its range: on the chest
    benchmark a 5 mm solid nodule adds ~470 of 65535 levels at its peak (1.8 grey levels
    on the models' 0..255 scale) to a few pixels, while ribs, the heart and the lung
    border span ~100 grey levels, so normalised by the image's global std (~51) it is
    ~0.035 std. Subtracting a Gaussian blur removes the slowly varying anatomy and keeps
    what is about the size of the blur or smaller: at 1.5 px the nodule's residue peaks at
    ~1.07 grey levels against a std of ~1.02 for the anatomy's (``tools/chest_bench_stats.py
    --contrast``), so after the ``data_preprocessor``'s per-channel std it is a contrast
    of order 1, while channel 0 keeps the absolute grey level (the anatomy the model
    localises with). On its own this did not raise the chest 2D stage's recall; with the
    small-box sampling of the chest config it did (README ablations).
    Channel ``c`` (1 or 2) is ``grey - G(sigmas_px[c - 1]) * grey``
    (:func:`high_pass`), in the grey units of the input (mean ~0): give the
    ``data_preprocessor`` per-channel ``mean``/``std`` measured on the training views.

    Put it after the geometric transforms (the sigmas are in pixels of the network's
    input) and after any photometric augmentation (which works on identical channels).

    Required / modified key: ``img`` (list of N ``(H, W, 3)`` float32 arrays whose
    channels are identical, as :class:`LoadXrayMultiViewImages` gives them).

    Args:
        sigmas_px (Sequence[float]): the two blur standard deviations, pixels, > 0.
            Defaults to ``(2.0, 8.0)``; the chest benchmark's configs use ``(1.5, 4.0)``
            (picked from the 3-8 px nodules' residues on training views).
    """

    def __init__(self, sigmas_px: Sequence[float] = (2.0, 8.0)) -> None:
        sigmas = tuple(float(s) for s in sigmas_px)
        if len(sigmas) != 2 or not all(np.isfinite(s) and s > 0 for s in sigmas):
            raise ValueError(f'XrayLocalContrast: sigmas_px must be two positive numbers '
                             f'(pixels), got {sigmas_px!r}')
        self.sigmas_px = sigmas

    def transform(self, results: dict) -> dict:
        imgs = []
        for img in results['img']:
            grey = np.asarray(img[..., 0], np.float32)
            out = np.empty(grey.shape + (3,), np.float32)
            out[..., 0] = grey
            for channel, sigma in enumerate(self.sigmas_px, start=1):
                out[..., channel] = high_pass(grey, sigma)
            imgs.append(out)
        results['img'] = imgs
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(sigmas_px={self.sigmas_px})'

"""Photometric augmentation for grey X-ray views (the paper's list of X-ray distortions)."""
from typing import Sequence, Tuple

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet3d.registry import TRANSFORMS


@TRANSFORMS.register_module()
class XrayPhotoMetricDistortion(BaseTransform):
    """Random brightness, contrast, gamma, vignetting, Gaussian blur, Gaussian noise and
    salt-and-pepper noise, each applied with probability ``prob`` to each view
    independently, in that order (intensity changes, then detector blur, then noise).

    Values stay float32 and are clipped to ``[0, 255]`` after every step. The views are
    grey images replicated to 3 channels (:class:`LoadXrayMultiViewImages`): every step
    works on the grey channel and writes it back to all channels, so noise is drawn once
    per *pixel* (the salt-and-pepper fraction is a fraction of pixels, not of array
    elements) and the image stays grey. mmdet's ``PhotoMetricDistortion`` is not used: its
    hue/saturation steps need colour and it has no X-ray-specific steps.

    The steps, with ``x`` the grey image in 0..255:

    * brightness: ``x + d``, ``d ~ U(-brightness_delta, brightness_delta)``;
    * contrast: ``(x - mean(x)) * a + mean(x)``, ``a ~ U(contrast_range)`` (about the
      mean, so that contrast and brightness stay separate steps);
    * gamma: ``255 * (x / 255) ** g``, ``g ~ U(gamma_range)``;
    * vignetting: ``x * (1 - s * r**2)``, ``r`` the distance from the image centre
      (1 at the corners), ``s ~ U(vignetting_range)``;
    * Gaussian blur: kernel size drawn from ``blur_kernel_sizes``, sigma from the size
      (``cv2.GaussianBlur`` with sigma 0);
    * Gaussian noise: ``x + n``, ``n ~ N(0, sigma)`` per pixel, ``sigma ~ U(noise_std_range)``;
    * salt and pepper: each pixel independently becomes 255 (probability ``f / 2``) or 0
      (``f / 2``), ``f ~ U(salt_pepper_range)``.

    Required / modified key: ``img`` (list of N ``(H, W, C)`` float32 arrays).

    Args:
        prob (float): probability of each step. Defaults to 0.5.
        brightness_delta (float): Defaults to 32.
        contrast_range (tuple[float, float]): Defaults to ``(0.5, 1.5)``.
        gamma_range (tuple[float, float]): Defaults to ``(0.7, 1.5)``.
        vignetting_range (tuple[float, float]): Defaults to ``(0.1, 0.4)``.
        blur_kernel_sizes (sequence[int]): odd sizes. Defaults to ``(3, 5, 7)``.
        noise_std_range (tuple[float, float]): grey levels. Defaults to ``(2, 10)``.
        salt_pepper_range (tuple[float, float]): fraction of pixels. Defaults to
            ``(0.005, 0.02)`` (the earlier fork meant a fixed 2 %).
    """

    def __init__(self,
                 prob: float = 0.5,
                 brightness_delta: float = 32.0,
                 contrast_range: Tuple[float, float] = (0.5, 1.5),
                 gamma_range: Tuple[float, float] = (0.7, 1.5),
                 vignetting_range: Tuple[float, float] = (0.1, 0.4),
                 blur_kernel_sizes: Sequence[int] = (3, 5, 7),
                 noise_std_range: Tuple[float, float] = (2.0, 10.0),
                 salt_pepper_range: Tuple[float, float] = (0.005, 0.02)) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'prob must be in [0, 1], got {prob}')
        for name, (lo, hi) in dict(contrast_range=contrast_range, gamma_range=gamma_range,
                                   vignetting_range=vignetting_range,
                                   noise_std_range=noise_std_range,
                                   salt_pepper_range=salt_pepper_range).items():
            if not 0 <= lo <= hi:
                raise ValueError(f'{name} must be (lo, hi) with 0 <= lo <= hi, got '
                                 f'{(lo, hi)}')
        if gamma_range[0] <= 0 or salt_pepper_range[1] > 1 or vignetting_range[1] > 1:
            raise ValueError('gamma must be > 0, salt-and-pepper fraction and vignetting '
                             'strength <= 1')
        if not blur_kernel_sizes or any(k < 1 or k % 2 == 0 for k in blur_kernel_sizes):
            raise ValueError(f'blur_kernel_sizes must be odd and positive, got '
                             f'{blur_kernel_sizes}')
        self.prob = prob
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = tuple(contrast_range)
        self.gamma_range = tuple(gamma_range)
        self.vignetting_range = tuple(vignetting_range)
        self.blur_kernel_sizes = tuple(int(k) for k in blur_kernel_sizes)
        self.noise_std_range = tuple(noise_std_range)
        self.salt_pepper_range = tuple(salt_pepper_range)

    # -- the steps, on a grey (H, W) float32 image --------------------------------------
    def brightness(self, grey: np.ndarray) -> np.ndarray:
        return grey + np.float32(np.random.uniform(-self.brightness_delta,
                                                   self.brightness_delta))

    def contrast(self, grey: np.ndarray) -> np.ndarray:
        mean = grey.mean(dtype=np.float64)
        alpha = np.random.uniform(*self.contrast_range)
        return ((grey - mean) * alpha + mean).astype(np.float32)

    def gamma(self, grey: np.ndarray) -> np.ndarray:
        gamma = np.random.uniform(*self.gamma_range)
        return (255.0 * np.power(grey / 255.0, gamma)).astype(np.float32)

    def vignetting(self, grey: np.ndarray) -> np.ndarray:
        height, width = grey.shape
        v = (np.arange(height, dtype=np.float32) + 0.5 - height / 2) / (height / 2)
        u = (np.arange(width, dtype=np.float32) + 0.5 - width / 2) / (width / 2)
        radius2 = (v[:, None] ** 2 + u[None, :] ** 2) / 2.0       # 1 at the corners
        strength = np.random.uniform(*self.vignetting_range)
        return grey * (1.0 - np.float32(strength) * radius2)

    def blur(self, grey: np.ndarray) -> np.ndarray:
        ksize = int(np.random.choice(self.blur_kernel_sizes))
        return cv2.GaussianBlur(grey, (ksize, ksize), 0)

    @staticmethod
    def _pixel_rng() -> np.random.Generator:
        """A generator for per-pixel draws (float32, several times faster than the legacy
        ``np.random`` calls), seeded from ``np.random`` so that mmengine's seeding of
        ``np.random`` in every worker keeps runs reproducible."""
        return np.random.default_rng(np.random.randint(2**31))

    def noise(self, grey: np.ndarray) -> np.ndarray:
        sigma = np.float32(np.random.uniform(*self.noise_std_range))
        return grey + sigma * self._pixel_rng().standard_normal(grey.shape, np.float32)

    def salt_pepper(self, grey: np.ndarray) -> np.ndarray:
        fraction = np.random.uniform(*self.salt_pepper_range)
        draw = self._pixel_rng().random(grey.shape, np.float32)
        grey = grey.copy()
        grey[draw < fraction / 2] = 0.0
        grey[(draw >= fraction / 2) & (draw < fraction)] = 255.0
        return grey

    STEPS = ('brightness', 'contrast', 'gamma', 'vignetting', 'blur', 'noise', 'salt_pepper')

    def distort(self, grey: np.ndarray) -> np.ndarray:
        """Apply each step with probability ``prob`` to one grey ``(H, W)`` view."""
        grey = np.asarray(grey, dtype=np.float32)
        for step in self.STEPS:
            if np.random.rand() < self.prob:
                grey = getattr(self, step)(grey).astype(np.float32, copy=False)
                np.clip(grey, 0.0, 255.0, out=grey)
        return grey

    def transform(self, results: dict) -> dict:
        imgs = results['img']
        for view, img in enumerate(imgs):
            if img.ndim == 2:
                imgs[view] = self.distort(img)
                continue
            out = np.empty(img.shape, np.float32)
            out[...] = self.distort(img[..., 0])[..., None]      # same grey in all channels
            imgs[view] = out
        results['img'] = imgs
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(prob={self.prob}, '
                f'brightness_delta={self.brightness_delta}, '
                f'contrast_range={self.contrast_range}, gamma_range={self.gamma_range}, '
                f'vignetting_range={self.vignetting_range}, '
                f'blur_kernel_sizes={self.blur_kernel_sizes}, '
                f'noise_std_range={self.noise_std_range}, '
                f'salt_pepper_range={self.salt_pepper_range})')

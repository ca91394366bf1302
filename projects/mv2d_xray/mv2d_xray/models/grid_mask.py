"""GridMask augmentation on the (normalised) input views, applied inside the model.

Same scheme as PETR's / MV2D's ``GridMask`` (stripes of period ``d`` with a fraction
``ratio`` masked, optionally rotated and inverted), written for any device: the mask is
built with numpy/OpenCV and moved to the images' device (the originals call
``.cuda()``). Note that masking 16-36 % of the pixels in blocks can hide small findings;
use it with care (low ``prob``) for nodules.
"""
import cv2
import numpy as np
import torch
from mmdet3d.registry import MODELS
from torch import Tensor, nn


@MODELS.register_module()
class XrayGridMask(nn.Module):
    """Randomly mask a grid of stripes on a batch of images (one mask per call).

    Args:
        use_h (bool): Mask horizontal stripes. Defaults to True.
        use_w (bool): Mask vertical stripes. Defaults to True.
        rotate (int): The grid is rotated by a random integer angle in
            ``[0, rotate)`` degrees. Defaults to 1 (no rotation).
        offset (bool): Fill masked pixels with uniform noise in ``[-1, 1]`` instead
            of 0. Defaults to False.
        ratio (float): Masked fraction of each period. Defaults to 0.5.
        mode (int): 0 masks the stripes, 1 keeps only the stripes. Defaults to 1.
        prob (float): Probability of applying the mask. Defaults to 0.7.
    """

    def __init__(self,
                 use_h: bool = True,
                 use_w: bool = True,
                 rotate: int = 1,
                 offset: bool = False,
                 ratio: float = 0.5,
                 mode: int = 1,
                 prob: float = 0.7) -> None:
        super().__init__()
        if mode not in (0, 1):
            raise ValueError(f'mode must be 0 or 1, got {mode}')
        self.use_h = use_h
        self.use_w = use_w
        self.rotate = max(int(rotate), 1)
        self.offset = offset
        self.ratio = ratio
        self.mode = mode
        self.prob = prob

    def _mask(self, height: int, width: int) -> np.ndarray:
        hh, ww = int(1.5 * height), int(1.5 * width)
        period = np.random.randint(2, max(min(height, width), 3))
        length = min(max(int(period * self.ratio + 0.5), 1), period - 1)
        mask = np.ones((hh, ww), np.float32)
        start_h, start_w = np.random.randint(period), np.random.randint(period)
        if self.use_h:
            for i in range(hh // period):
                s = period * i + start_h
                mask[s:min(s + length, hh), :] = 0
        if self.use_w:
            for i in range(ww // period):
                s = period * i + start_w
                mask[:, s:min(s + length, ww)] = 0
        angle = np.random.randint(self.rotate)
        if angle:
            rot = cv2.getRotationMatrix2D((ww / 2.0, hh / 2.0), float(angle), 1.0)
            mask = cv2.warpAffine(mask, rot, (ww, hh), flags=cv2.INTER_NEAREST,
                                  borderValue=1.0)
        top, left = (hh - height) // 2, (ww - width) // 2
        mask = mask[top:top + height, left:left + width]
        return 1.0 - mask if self.mode == 1 else mask

    def forward(self, imgs: Tensor) -> Tensor:
        """Args:
            imgs (Tensor): ``(N, C, H, W)`` images.

        Returns:
            Tensor: ``(N, C, H, W)``, masked with probability ``prob`` in training.
        """
        if not self.training or np.random.rand() > self.prob:
            return imgs
        height, width = imgs.shape[-2:]
        mask = torch.from_numpy(self._mask(height, width)).to(imgs)
        if self.offset:
            noise = torch.from_numpy(2 * (np.random.rand(height, width) - 0.5))
            return imgs * mask + noise.to(imgs) * (1 - mask)
        return imgs * mask

"""Image-space geometric augmentation of every view, with exact camera-matrix updates."""
from typing import Sequence, Tuple

import mmcv
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet3d.registry import TRANSFORMS

from projects.mv2d_xray.core.geometry import apply_image_aug, image_aug_matrix, transform_boxes2d
from projects.mv2d_xray.mv2d_xray.datasets.transforms.loading import BOX2D_FIELDS


@TRANSFORMS.register_module()
class XrayResizeCropFlip(BaseTransform):
    """Resize, crop (or pad) and horizontally flip each view to ``img_scale``.

    For each view: scale by ``s = fit * r`` (``fit`` makes the view fit into ``img_scale``
    keeping its aspect ratio, ``r ~ U(ratio_range)``), take an ``img_scale`` window of the
    resized view (random or centred; where the window leaves the view it is filled with
    ``pad_val``), then flip it with probability ``flip_prob``. Each view draws its own
    parameters unless ``sync_views``; all views end up ``img_scale``.

    The three steps are one affine ``A`` on continuous image coordinates
    (:func:`~projects.mv2d_xray.core.geometry.image_aug_matrix`, exact for ``cv2`` resizing to an
    integer size and integer crops): ``cam2img`` and ``lidar2img`` of the view become
    ``A @ cam2img`` and ``A @ lidar2img`` (``lidar2cam`` is unchanged), so 3D -> 2D
    projection stays exact, and ``A`` is composed into ``img_aug_matrix``. The view's 2D
    boxes are mapped by ``A``, clipped to the new image and dropped (with their labels and
    ids) when narrower or lower than ``min_box_size`` pixels. 3D boxes are not touched: a
    finding cropped out of one view is still seen by the others.

    Like PETR's ``ResizeCropFlipImage`` (mmdet3d ``projects/PETR``), but it also updates
    ``lidar2img`` and the 2D boxes and lets every view draw its own parameters.

    Required keys: ``img`` (list of N ``(H, W, C)``), ``cam2img``, ``lidar2img``,
    ``img_aug_matrix`` (``(N, 4, 4)``); optional: the 2D box fields of
    :class:`LoadXrayAnnotations3D`.

    Modified keys: ``img``, ``img_shape``, ``cam2img``, ``lidar2img``, ``img_aug_matrix``
    and the 2D box fields.

    Args:
        img_scale (tuple[int, int]): output ``(H, W)`` of every view.
        ratio_range (tuple[float, float]): range of the random factor ``r`` on the fitting
            scale. Defaults to ``(1.0, 1.0)`` (fit only).
        random_crop (bool): random window position; otherwise centred. Defaults to False.
        flip_prob (float): probability of a horizontal flip per view. Defaults to 0.
        sync_views (bool): draw one set of parameters for all views. Defaults to False.
        min_box_size (float): smallest width and height (px) of a clipped 2D box that is
            kept. Defaults to 1.
        interpolation (str): ``mmcv.imresize`` interpolation. Defaults to ``'bilinear'``.
        pad_val (float): value of padded pixels (0 = no attenuation, black in the DRRs).
    """

    def __init__(self,
                 img_scale: Tuple[int, int],
                 ratio_range: Sequence[float] = (1.0, 1.0),
                 random_crop: bool = False,
                 flip_prob: float = 0.0,
                 sync_views: bool = False,
                 min_box_size: float = 1.0,
                 interpolation: str = 'bilinear',
                 pad_val: float = 0.0) -> None:
        self.img_scale = tuple(int(s) for s in img_scale)
        self.ratio_range = tuple(float(r) for r in ratio_range)
        if len(self.img_scale) != 2 or min(self.img_scale) < 1:
            raise ValueError(f'img_scale must be (H, W) > 0, got {img_scale}')
        if len(self.ratio_range) != 2 or not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f'ratio_range must be (lo, hi) with 0 < lo <= hi, got '
                             f'{ratio_range}')
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f'flip_prob must be in [0, 1], got {flip_prob}')
        self.random_crop = random_crop
        self.flip_prob = float(flip_prob)
        self.sync_views = sync_views
        self.min_box_size = float(min_box_size)
        self.interpolation = interpolation
        self.pad_val = pad_val

    def _sample_params(self, shape: Tuple[int, int]) -> dict:
        """Resized size, crop offset and flip of one view of ``shape`` ``(H, W)``."""
        out_h, out_w = self.img_scale
        fit = min(out_h / shape[0], out_w / shape[1])
        ratio = np.random.uniform(*self.ratio_range) \
            if self.ratio_range[0] < self.ratio_range[1] else self.ratio_range[0]
        new_h = max(1, int(round(shape[0] * fit * ratio)))
        new_w = max(1, int(round(shape[1] * fit * ratio)))
        if self.random_crop:
            # a window inside the resized view, or the view inside the window when smaller
            y0 = np.random.randint(min(0, new_h - out_h), max(0, new_h - out_h) + 1)
            x0 = np.random.randint(min(0, new_w - out_w), max(0, new_w - out_w) + 1)
        else:
            y0, x0 = (new_h - out_h) // 2, (new_w - out_w) // 2
        flip = bool(np.random.rand() < self.flip_prob) if self.flip_prob > 0 else False
        return dict(size=(new_h, new_w), offset=(int(y0), int(x0)), flip=flip)

    def _crop(self, img: np.ndarray, y0: int, x0: int) -> np.ndarray:
        """The ``img_scale`` window with top-left ``(y0, x0)``; outside pixels = pad_val."""
        out_h, out_w = self.img_scale
        out = np.full((out_h, out_w) + img.shape[2:], self.pad_val, dtype=img.dtype)
        src_y, src_x = max(y0, 0), max(x0, 0)
        end_y, end_x = min(y0 + out_h, img.shape[0]), min(x0 + out_w, img.shape[1])
        if end_y > src_y and end_x > src_x:
            out[src_y - y0:end_y - y0, src_x - x0:end_x - x0] = img[src_y:end_y, src_x:end_x]
        return out

    def transform(self, results: dict) -> dict:
        imgs = results['img']
        shared = self._sample_params(imgs[0].shape[:2]) if self.sync_views else None
        out_h, out_w = self.img_scale
        aug = np.empty((len(imgs), 4, 4))
        for view, img in enumerate(imgs):
            height, width = img.shape[:2]
            params = shared or self._sample_params((height, width))
            new_h, new_w = params['size']
            y0, x0 = params['offset']
            if (new_h, new_w) != (height, width):
                img = mmcv.imresize(img, (new_w, new_h), interpolation=self.interpolation,
                                    backend='cv2')
            img = self._crop(img, y0, x0)
            if params['flip']:
                img = np.ascontiguousarray(img[:, ::-1])
            imgs[view] = img
            aug[view] = image_aug_matrix(scale=(new_w / width, new_h / height),
                                         crop_offset=(x0, y0),
                                         flip_width=out_w if params['flip'] else None)
        results['img'] = imgs
        results['img_shape'] = (out_h, out_w)
        results['cam2img'], results['lidar2img'] = apply_image_aug(
            aug, results['cam2img'], results['lidar2img'])
        results['img_aug_matrix'] = aug @ results['img_aug_matrix']
        for box_key, extra_keys in BOX2D_FIELDS.items():
            if box_key in results:
                self._transform_boxes(results, box_key, extra_keys, aug)
        return results

    def _transform_boxes(self, results: dict, box_key: str, extra_keys: Sequence[str],
                         aug: np.ndarray) -> None:
        """Map each view's 2D boxes by its affine, clip to the image, drop tiny ones."""
        moved = np.asarray(results[box_key], dtype=np.float64).reshape(-1, 4).copy()
        view_ids = np.asarray(results[f'{box_key}_view_ids'])
        for view in np.unique(view_ids):
            in_view = view_ids == view
            moved[in_view] = transform_boxes2d(aug[view], moved[in_view])
        out_h, out_w = self.img_scale
        moved[:, 0::2] = moved[:, 0::2].clip(0, out_w)
        moved[:, 1::2] = moved[:, 1::2].clip(0, out_h)
        width, height = moved[:, 2] - moved[:, 0], moved[:, 3] - moved[:, 1]
        keep = (width > 0) & (height > 0) & (width >= self.min_box_size) & \
            (height >= self.min_box_size)
        results[box_key] = moved[keep].astype(np.float32)
        for key in extra_keys:
            if key in results:
                results[key] = results[key][keep]

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(img_scale={self.img_scale}, '
                f'ratio_range={self.ratio_range}, random_crop={self.random_crop}, '
                f'flip_prob={self.flip_prob}, sync_views={self.sync_views}, '
                f'min_box_size={self.min_box_size}, interpolation={self.interpolation!r}, '
                f'pad_val={self.pad_val})')

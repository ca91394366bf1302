"""Loading transforms: the N grey views of a case and its annotations."""
from typing import Optional, Sequence

import mmcv
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet3d.registry import TRANSFORMS
from mmengine.fileio import get

#: 2D box arrays that the pipeline carries, each with the per-box arrays that travel (and
#: are filtered) with it. ``*_view_ids`` say which view a box lies in.
BOX2D_FIELDS = {
    'gt_bboxes': ('gt_bboxes_labels', 'gt_bboxes_view_ids', 'gt_bboxes_instance_ids_3d'),
    'ignore_bboxes': ('ignore_bboxes_labels', 'ignore_bboxes_view_ids'),
}
#: Annotation keys copied from ``ann_info`` by :class:`LoadXrayAnnotations3D`.
ANN_KEYS = ('gt_bboxes_3d', 'gt_labels_3d') + tuple(
    key for box_key, extra in BOX2D_FIELDS.items() for key in (box_key, *extra))


#: PNG signature; byte :data:`PNG_BIT_DEPTH_BYTE` of a PNG is its bit depth (IHDR).
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
PNG_BIT_DEPTH_BYTE = 24
#: 16-bit grey values are put on the 8-bit scale: ``grey * 255 / 65535`` (float, so their
#: 257x finer steps are kept).
UINT16_TO_GREY = 255.0 / 65535.0


def is_16bit_png(data: bytes) -> bool:
    """Whether ``data`` is a PNG with 16 bits per sample (its IHDR's bit depth)."""
    return (len(data) > PNG_BIT_DEPTH_BYTE and data[:8] == PNG_SIGNATURE
            and data[PNG_BIT_DEPTH_BYTE] == 16)


def grey_scale(values: np.ndarray, bit_depth: int) -> np.ndarray:
    """Grey values of an image on the models' 0..255 scale: a 16-bit image's (values
    0..65535) times :data:`UINT16_TO_GREY` as float32, an 8-bit image's as they are. The
    rule goes by the image's bit depth (a 16-bit PNG; for a study, the depth the model
    was trained on), not by the array's type: an 8-bit DICOM stores 0..255 in uint16."""
    if bit_depth == 16:
        return np.asarray(values, np.float32) * np.float32(UINT16_TO_GREY)
    return values


class XrayImageError(ValueError):
    """An image file that cannot be decoded or disagrees with the info pickle."""


def add_views(results: dict, greys: Sequence[np.ndarray]) -> dict:
    """Put a case's N grey views into ``results`` as :class:`LoadXrayMultiViewImages`
    does (also used by the inferencer for a study's images).

    Args:
        results (dict): with ``cam2img`` and ``lidar2img`` ``(N, 4, 4)`` (and ``token``
            for messages).
        greys (Sequence[np.ndarray]): per view an ``(H, W)`` array of grey values on
            the model's 0..255 scale (any numeric type; 16-bit images first go through
            :func:`grey_scale`).

    Returns:
        dict: ``results`` with ``img`` (N ``(H, W, 3)`` float32, the grey value in 3
        identical channels), ``img_shape`` / ``ori_shape`` ``(H, W)``, ``num_views``,
        ``ori_cam2img`` / ``ori_lidar2img`` (copies) and ``img_aug_matrix`` ``(N, 4, 4)``
        identity.

    Raises:
        XrayImageError: views of different sizes.
    """
    imgs = []
    for grey in greys:
        # explicit grey -> 3 identical float32 channels (see LoadXrayMultiViewImages)
        img = np.empty(grey.shape + (3,), np.float32)
        img[...] = grey[:, :, None]
        imgs.append(img)
    shapes = {img.shape[:2] for img in imgs}
    if len(shapes) != 1:
        raise XrayImageError(f'the views of case {results.get("token")} differ in '
                             f'size: {sorted(shapes)}')
    num_views = len(imgs)
    results['img'] = imgs
    results['img_shape'] = results['ori_shape'] = imgs[0].shape[:2]
    results['num_views'] = num_views
    results['ori_cam2img'] = results['cam2img'].copy()
    results['ori_lidar2img'] = results['lidar2img'].copy()
    results['img_aug_matrix'] = np.tile(np.eye(4), (num_views, 1, 1))
    return results


@TRANSFORMS.register_module()
class LoadXrayMultiViewImages(BaseTransform):
    """Load every view of a case as a 3-channel float32 image.

    The views are 8-bit or 16-bit grey PNGs. An 8-bit file is decoded as grey (a colour
    file would be converted to grey), values 0..255; a 16-bit PNG (the blades' and the
    chest benchmark's) is decoded unchanged and put on the same scale by ``255 / 65535``
    (:func:`grey_scale`), keeping its finer steps, so one ``data_preprocessor`` mean/std
    convention serves both. The grey channel is replicated into **3 identical channels**, so
    that 3-channel backbones (and ``Det3DDataPreprocessor`` with a 3-value mean/std) take it
    unchanged; the photometric augmentations keep the channels identical. mmdet3d's
    ``LoadMultiViewImageFromFiles`` is not used: with ``color_type='unchanged'`` a grey PNG
    gives ``(H, W)`` arrays that its packing cannot stack, and it neither checks the image
    size against the matrices nor keeps ``lidar2img``.

    Required keys: ``img_path`` (list of N paths), ``view_names``, ``images`` (the
    pickle's per-view dicts, for ``height``/``width``), ``cam2img``, ``lidar2img``
    (``(N, 4, 4)``).

    Added keys:

    * ``img`` (list of N ``(H, W, 3)`` float32 arrays, values 0..255; 16-bit files give
      non-integer values);
    * ``img_shape``, ``ori_shape`` (``(H, W)``), ``num_views``;
    * ``ori_cam2img``, ``ori_lidar2img`` (copies before augmentation) and
      ``img_aug_matrix`` (``(N, 4, 4)`` identity; image-space augmentations compose into
      it, see ``projects/mv2d_xray/core/geometry.py``).

    Args:
        backend_args (dict, optional): mmengine file backend arguments.
    """

    def __init__(self, backend_args: Optional[dict] = None) -> None:
        self.backend_args = backend_args

    def _read(self, path: str, view: str) -> np.ndarray:
        try:
            data = get(path, backend_args=self.backend_args)
        except FileNotFoundError:
            raise FileNotFoundError(f"image file of view '{view}' not found: {path}") \
                from None
        deep = is_16bit_png(data)
        try:
            grey = mmcv.imfrombytes(data, flag='unchanged' if deep else 'grayscale',
                                    backend='cv2')
        except Exception:   # cv2.error for an empty file
            grey = None
        if deep and grey is not None and (grey.ndim != 2 or grey.dtype != np.uint16):
            raise XrayImageError(f"the 16-bit image of view '{view}' is not one grey "
                                 f'channel ({grey.shape}, {grey.dtype}): {path}')
        if grey is None or grey.size == 0:
            raise XrayImageError(f"cannot decode the image of view '{view}' (not a valid "
                                 f'PNG: corrupt, truncated or empty): {path}')
        return grey_scale(grey, 16 if deep else 8)

    def transform(self, results: dict) -> dict:
        greys = []
        for view, path in zip(results['view_names'], results['img_path']):
            grey = self._read(path, view)
            expected = results['images'][view]
            if grey.shape != (expected['height'], expected['width']):
                raise XrayImageError(f'image {path} is {grey.shape[0]}x{grey.shape[1]} '
                                     f"(HxW), the info pickle says {expected['height']}x"
                                     f"{expected['width']}")
            greys.append(grey)
        return add_views(results, greys)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(backend_args={self.backend_args})'


@TRANSFORMS.register_module()
class LoadXrayAnnotations3D(BaseTransform):
    """Copy a case's annotations from ``ann_info`` to the top level of ``results``.

    Added keys (see ``MV2DXrayDataset.parse_ann_info``): ``gt_bboxes_3d``
    (``LiDARInstance3DBoxes`` ``(M, 7)``), ``gt_labels_3d`` ``(M,)``; the findings' 2D boxes
    ``gt_bboxes`` ``(K, 4)`` with ``gt_bboxes_labels``, ``gt_bboxes_view_ids``,
    ``gt_bboxes_instance_ids_3d`` ``(K,)``; ignore 2D boxes ``ignore_bboxes`` ``(J, 4)``
    (ignore regions', and the findings' boxes a view flags ignore) with
    ``ignore_bboxes_labels``, ``ignore_bboxes_view_ids`` ``(J,)``.
    """

    def transform(self, results: dict) -> dict:
        ann_info = results['ann_info']
        for key in ANN_KEYS:
            results[key] = ann_info[key]
        return results

"""Packing a case into the model's inputs and a :class:`Det3DDataSample`."""
from typing import Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmdet3d.registry import TRANSFORMS
from mmdet3d.structures import Det3DDataSample
from mmengine.structures import InstanceData


@TRANSFORMS.register_module()
class PackMV2DXrayInputs(BaseTransform):
    """Pack the views, the camera matrices and the 3D and per-view 2D ground truth.

    mmdet3d's ``Pack3DDetInputs`` cannot carry the per-view 2D boxes (it raises on unknown
    keys and gives ``InstanceData`` no view index), so MV2D's packing is written here.

    Output: ``{'inputs': {'img': Tensor}, 'data_samples': Det3DDataSample}`` with

    * ``inputs['img']``: float32 ``(N_views, 3, H, W)`` (not normalised: the model's
      ``Det3DDataPreprocessor`` normalises and pads, giving ``imgs`` ``(B, N_views, 3, H', W')``);
    * metainfo (``meta_keys``): ``token``, ``sample_idx``, ``num_views``, ``view_names``,
      ``img_path`` (N), ``lidar2img`` / ``cam2img`` / ``lidar2cam`` (float64
      ``(N_views, 4, 4)``, after augmentation), ``ori_lidar2img`` / ``ori_cam2img`` (before),
      ``img_aug_matrix`` ``(N_views, 4, 4)`` (img -> augmented img), ``img_shape`` and
      ``ori_shape`` ``(H, W)``, ``scale_factor`` ``(sx, sy)`` of the resize (a list of N
      pairs when the views were resized differently), ``flip`` (list of N bools),
      ``box_type_3d``, ``box_mode_3d``;
    * ``gt_instances_3d``: ``bboxes_3d`` (``LiDARInstance3DBoxes`` ``(M, 7)``), ``labels_3d``
      (int64 ``(M,)``): the findings (ignore regions excluded);
    * ``gt_instances``: ``bboxes`` (float32 ``(K, 4)`` ``[x1, y1, x2, y2]`` in the augmented
      view), ``labels``, ``view_ids``, ``instance_ids_3d`` (int64 ``(K,)``; indexes
      ``gt_instances_3d``): the 2D boxes of all views, flattened;
    * ``ignored_instances``: ``bboxes`` (float32 ``(J, 4)``), ``labels``, ``view_ids``: 2D
      boxes of ignore regions and the findings' boxes a view flags ignore;
    * ``eval_ann_info``: the dataset's annotations for the metric in test mode, else None.

    Without the annotation fields (a test pipeline without
    :class:`LoadXrayAnnotations3D`) the three ``InstanceData`` are left without fields;
    with them, a negative case packs empty tensors of the shapes above.

    Args:
        meta_keys (sequence[str]): ``results`` keys copied to the metainfo when present
            (``scale_factor`` and ``flip`` are derived from ``img_aug_matrix``).
    """

    def __init__(self,
                 meta_keys: Sequence[str] = (
                     'token', 'sample_idx', 'num_views', 'view_names', 'img_path',
                     'lidar2img', 'cam2img', 'lidar2cam', 'ori_lidar2img', 'ori_cam2img',
                     'img_aug_matrix', 'img_shape', 'ori_shape', 'scale_factor', 'flip',
                     'box_type_3d', 'box_mode_3d')) -> None:
        self.meta_keys = tuple(meta_keys)

    @staticmethod
    def _long(array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.int64).reshape(-1))

    @staticmethod
    def _boxes(array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float32).reshape(-1, 4))

    def transform(self, results: dict) -> dict:
        imgs = results['img']
        shapes = {img.shape for img in imgs}
        if len(shapes) != 1:
            raise ValueError(f'cannot pack views of different shapes {sorted(shapes)} '
                             f'(case {results.get("token")}); resize them to one size '
                             '(XrayResizeCropFlip)')
        imgs = np.stack(imgs).astype(np.float32, copy=False)            # (N, H, W, 3)
        inputs = dict(img=torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous())

        if 'img_aug_matrix' in results:
            aug = np.asarray(results['img_aug_matrix'])
            scales = [(float(abs(a[0, 0])), float(abs(a[1, 1]))) for a in aug]
            results['scale_factor'] = scales[0] if len(set(scales)) == 1 else scales
            results['flip'] = [bool(a[0, 0] < 0) for a in aug]
        metainfo = {key: results[key] for key in self.meta_keys if key in results}
        for key in ('img_shape', 'ori_shape'):
            if key in metainfo:
                metainfo[key] = tuple(int(s) for s in metainfo[key][:2])
        data_sample = Det3DDataSample(metainfo=metainfo)

        gt_instances_3d, gt_instances, ignored_instances = (InstanceData(), InstanceData(),
                                                            InstanceData())
        if 'gt_bboxes_3d' in results:
            gt_instances_3d.bboxes_3d = results['gt_bboxes_3d']
            gt_instances_3d.labels_3d = self._long(results['gt_labels_3d'])
        if 'gt_bboxes' in results:
            gt_instances.bboxes = self._boxes(results['gt_bboxes'])
            gt_instances.labels = self._long(results['gt_bboxes_labels'])
            gt_instances.view_ids = self._long(results['gt_bboxes_view_ids'])
            gt_instances.instance_ids_3d = self._long(results['gt_bboxes_instance_ids_3d'])
        if 'ignore_bboxes' in results:
            ignored_instances.bboxes = self._boxes(results['ignore_bboxes'])
            ignored_instances.labels = self._long(results['ignore_bboxes_labels'])
            ignored_instances.view_ids = self._long(results['ignore_bboxes_view_ids'])
        data_sample.gt_instances_3d = gt_instances_3d
        data_sample.gt_instances = gt_instances
        data_sample.ignored_instances = ignored_instances
        data_sample.eval_ann_info = results.get('eval_ann_info')
        return dict(inputs=inputs, data_samples=data_sample)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(meta_keys={self.meta_keys})'

"""The multi-view X-ray dataset: one sample = one case (CT scan) seen in ``num_views`` DRRs.

Reads the converter's mmdet3d v2 info pickles (README, *Data format*): per case, the views'
image paths and 4x4 matrices, the 3D findings (``instances``) and their per-view 2D boxes
(``cam_instances``). Ground truth is split by ``ignore_flag``: findings (0) train and score,
ignore regions (1, LUNA16's "irrelevant findings") only reach the 2D detector as boxes it may
ignore and the metric, which neither rewards nor punishes detections on them.
"""
import os.path as osp
import posixpath
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
from mmdet3d.datasets import Det3DDataset
from mmdet3d.registry import DATASETS
from mmdet3d.structures import LiDARInstance3DBoxes

from projects.mv2d_xray.core.data_format import InfoFormatError, load_infos, view_box_ignored

#: The matrices every view carries (4x4, column convention; ``lidar2img`` is ``ct2img``).
VIEW_MATRIX_KEYS = ('cam2img', 'lidar2cam', 'lidar2img')


def _boxes3d(bboxes_3d: Sequence) -> LiDARInstance3DBoxes:
    """``(M, 7)`` gravity-centre ct boxes -> :class:`LiDARInstance3DBoxes`.

    mmdet3d stores LiDAR boxes by their bottom centre; ``origin=(0.5, 0.5, 0.5)`` says ours
    are centred, and ``.gravity_center`` gives the centre back. The boxes are axis-aligned
    (yaw = 0), hence ``with_yaw=False``.
    """
    array = np.asarray(bboxes_3d, dtype=np.float32).reshape(-1, 7)
    return LiDARInstance3DBoxes(array, box_dim=7, with_yaw=False, origin=(0.5, 0.5, 0.5))


class XrayDataError(ValueError):
    """The data and the config (or this code) disagree: wrong number of views, unknown
    classes, an unreadable or inconsistent info pickle. The message names the file, the
    case and the setting; ``tools/train.py`` and ``tools/test.py`` print it as one line."""


@DATASETS.register_module()
class MV2DXrayDataset(Det3DDataset):
    """Multi-view X-ray detection dataset on the converter's info pickles.

    Classes come from the pickle's ``metainfo['classes']``. A config may name
    ``metainfo=dict(classes=...)`` to train on a subset (or reorder them); a class the data
    does not have is an error. The acquisition is the pickle's ``metainfo['geometry']``
    (any number of views works). The acquisition a config states (``num_views``,
    ``sod_mm``, ``image_size``; the config derives its depth ranges from ``sod_mm``) must
    agree with it: the dataset stops with one line naming the setting and both values.

    Each item handed to the pipeline has, besides the pickle's keys:

    * ``view_names`` (list[str]), ``num_views`` (int), ``img_path`` (list[str], N paths);
    * ``cam2img``, ``lidar2cam``, ``lidar2img``: ``(N_views, 4, 4)`` float64 arrays, in the
      order of ``view_names`` (the ct -> cam -> img chain of
      ``projects/mv2d_xray/core/geometry.py``);
    * ``ann_info`` (train and test): see :meth:`parse_ann_info`;
    * ``eval_ann_info`` (test mode with ``load_eval_anns``): the same dict, for the metric.

    Negative cases (no findings) are kept: ``filter_empty_gt`` defaults to False.

    Args:
        data_root (str): the converted dataset directory ``DIR``.
        ann_file (str): info pickle, relative to ``data_root``
            (``<prefix>_infos_{train,val}.pkl``).
        num_views (int, optional): expected number of views; checked against the data.
        sod_mm (float, optional): expected source to isocentre distance (mm), from which
            the config derives the depth ranges of the model; checked against the data.
        image_size (tuple[int, int], optional): expected ``(H, W)`` of the radiographs;
            checked against the data.
        metainfo (dict, optional): ``classes`` to select; other keys are merged as usual.
        data_prefix (dict): prefix of the pickle's ``img_path`` (relative to ``data_root``);
            ``img`` for every view, or one entry per view name. Defaults to ``dict(img='')``.
        pipeline (list): data pipeline.
        modality (dict): must use the camera. Defaults to ``dict(use_camera=True)``.
        box_type_3d (str): only ``'LiDAR'`` (the ct frame plays mmdet3d's lidar frame).
        filter_empty_gt (bool): drop cases without findings in training. Defaults to False.
        test_mode (bool): test mode (adds ``eval_ann_info``).
        check_image_files (bool): check at start-up that every view's image exists (local
            files only). Defaults to True.
        **kwargs: passed to :class:`Det3DDataset` / :class:`mmengine.dataset.BaseDataset`.
    """
    #: Defaults of the converter; the actual classes are read from the info pickle.
    METAINFO = {'classes': ('nodule',), 'palette': [(255, 64, 64)]}

    def __init__(self,
                 data_root: Optional[str] = None,
                 ann_file: str = '',
                 num_views: Optional[int] = None,
                 sod_mm: Optional[float] = None,
                 image_size: Optional[Sequence[int]] = None,
                 metainfo: Optional[dict] = None,
                 data_prefix: dict = dict(img=''),
                 pipeline: List[Union[dict, Callable]] = [],
                 modality: dict = dict(use_camera=True, use_lidar=False),
                 box_type_3d: str = 'LiDAR',
                 filter_empty_gt: bool = False,
                 test_mode: bool = False,
                 check_image_files: bool = True,
                 **kwargs) -> None:
        if str(box_type_3d).lower() != 'lidar':
            raise XrayDataError(f"{type(self).__name__} supports box_type_3d='LiDAR' only "
                             f'(boxes live in the ct frame), got {box_type_3d!r}')
        if not modality.get('use_camera', False) or modality.get('use_lidar', False):
            raise XrayDataError(f'{type(self).__name__} needs modality=dict(use_camera=True, '
                             f'use_lidar=False), got {modality}')
        self.expected_geometry = {
            key: value for key, value in (
                ('num_views', None if num_views is None else int(num_views)),
                ('sod_mm', None if sod_mm is None else float(sod_mm)),
                ('image_size', None if image_size is None else
                 [int(s) for s in image_size])) if value is not None}
        self.check_image_files = check_image_files
        # Det3DDataset maps config classes against the class METAINFO; ours are only known
        # once the pickle is read, so the selection is applied in `load_data_list`.
        metainfo = dict(metainfo or {})
        classes = metainfo.pop('classes', None)
        self.selected_classes = None if classes is None else tuple(classes)
        super().__init__(
            data_root=data_root,
            ann_file=ann_file,
            metainfo=metainfo,
            data_prefix=data_prefix,
            pipeline=pipeline,
            modality=modality,
            box_type_3d=box_type_3d,
            filter_empty_gt=filter_empty_gt,
            test_mode=test_mode,
            **kwargs)

    # -- loading --------------------------------------------------------------------------
    def load_data_list(self) -> List[dict]:
        """Read the info pickle, check it against this code and the config, parse the
        cases."""
        if not osp.isfile(self.ann_file):
            raise FileNotFoundError(f'info pickle not found: {self.ann_file} (convert a '
                                    'dataset first: README "Converting data")')
        try:
            annotations = load_infos(self.ann_file)
        except InfoFormatError as exc:
            raise XrayDataError(str(exc)) from None
        if not annotations['data_list']:
            raise XrayDataError(f'{self.ann_file}: the split has no cases (convert the '
                                'dataset with cases in this split, e.g. a --val-fraction '
                                'between 0 and 1, or point ann_file at another split)')
        file_meta = annotations['metainfo']
        self._check_file_metainfo(file_meta)
        self._set_classes(tuple(file_meta['classes']))
        geometry = file_meta['geometry']
        self.view_names = tuple(geometry['view_names'])
        self.image_size = tuple(int(s) for s in geometry['image_size'])
        for key, value in file_meta.items():
            self._metainfo.setdefault(key, value)
        self._metainfo['num_views'] = len(self.view_names)
        return [self.parse_data_info(raw) for raw in annotations['data_list']]

    def _check_file_metainfo(self, meta: dict) -> None:
        """The pickle's geometry must be consistent and match the config's acquisition."""
        geometry = meta['geometry']
        num_views = int(geometry['num_views'])
        if len(geometry['view_names']) != num_views:
            raise XrayDataError(f"{self.ann_file}: metainfo geometry lists "
                                f"{len(geometry['view_names'])} view names for "
                                f'num_views={num_views}')
        for key, expected in self.expected_geometry.items():
            found = geometry.get(key)
            if isinstance(found, (list, tuple)):
                found = [int(v) for v in found]
            elif key == 'sod_mm' and found is not None:
                found = float(found)
            if found != expected:
                raise XrayDataError(
                    f'{self.ann_file}: the data was converted with {key}={found}, the '
                    f'config says {key}={expected}; convert the data with the config\'s '
                    'acquisition or set the config\'s acquisition to the data\'s')

    def _set_classes(self, file_classes: tuple) -> None:
        """Classes and label mapping (pickle label -> training label, -1 = dropped)."""
        if self.selected_classes is None:
            classes = file_classes
        else:
            unknown = [c for c in self.selected_classes if c not in file_classes]
            if unknown:
                raise XrayDataError(f'{self.ann_file}: the config names classes {unknown} that '
                                 f'the data does not have (data classes: {list(file_classes)})')
            classes = self.selected_classes
        self.file_classes = file_classes
        self.label_mapping = {i: (classes.index(name) if name in classes else -1)
                              for i, name in enumerate(file_classes)}
        self.label_mapping[-1] = -1
        self.num_ins_per_cat = [0] * len(classes)
        self._metainfo['classes'] = classes
        self._metainfo['label_mapping'] = self.label_mapping

    def parse_data_info(self, info: dict) -> dict:
        """Order the views, join image paths, stack the matrices, parse annotations.

        Args:
            info (dict): one ``data_list`` item of the pickle.

        Returns:
            dict: the item with ``view_names``, ``num_views``, ``img_path`` (list),
            ``cam2img`` / ``lidar2cam`` / ``lidar2img`` ``(N_views, 4, 4)`` float64, and
            ``ann_info`` / ``eval_ann_info``.
        """
        token = info.get('token', info.get('sample_idx'))
        where = f"{self.ann_file}: case '{token}'"
        images = info.get('images', {})
        if set(images) != set(self.view_names):
            raise XrayDataError(f'{where} has views {sorted(images)}, the metainfo geometry '
                             f'has {len(self.view_names)}: {list(self.view_names)}')
        img_paths = []
        for name in self.view_names:
            view = images[name]
            prefix = self.data_prefix.get(name, self.data_prefix.get('img', ''))
            self._check_inside_root(where, name, prefix, view.get('img_path'))
            view['img_path'] = osp.join(prefix, view['img_path'])
            if self.check_image_files and self.backend_args is None \
                    and not osp.isfile(view['img_path']):
                raise FileNotFoundError(f"{where} view '{name}': image file not found: "
                                        f"{view['img_path']}")
            img_paths.append(view['img_path'])
            if (view.get('height'), view.get('width')) != self.image_size:
                raise XrayDataError(f"{where} view '{name}' is {view.get('height')}x"
                                 f"{view.get('width')} (HxW), the metainfo geometry says "
                                 f'{self.image_size[0]}x{self.image_size[1]}')
        matrices = {key: np.array([images[name][key] for name in self.view_names],
                                  dtype=np.float64) for key in VIEW_MATRIX_KEYS}
        if not np.allclose(matrices['lidar2img'],
                           matrices['cam2img'] @ matrices['lidar2cam'],
                           rtol=1e-6, atol=1e-6 * np.abs(matrices['lidar2img']).max()):
            raise XrayDataError(f'{where}: lidar2img is not cam2img @ lidar2cam')
        info.update(matrices, view_names=list(self.view_names),
                    num_views=len(self.view_names), img_path=img_paths)
        ann_info = self.parse_ann_info(info)
        info['ann_info'] = ann_info
        if self.test_mode and self.load_eval_anns:
            info['eval_ann_info'] = ann_info
        return info

    def _check_inside_root(self, where: str, view_name: str, root: str, img_path) -> None:
        """An info file's ``img_path`` must be a relative path that stays inside the data
        root (``data_root`` joined with ``data_prefix``) once resolved: no absolute path,
        no ``..`` out of it, no symbolic link pointing elsewhere (local files), so an
        info file cannot make the dataset read another dataset's or the system's files.
        """
        inside = isinstance(img_path, str) and img_path != '' and not osp.isabs(img_path)
        if inside and self.backend_args is None:
            base = osp.realpath(root or '.')
            path = osp.realpath(osp.join(root, img_path))
            inside = path.startswith(osp.join(base, ''))
        elif inside:                              # a storage backend: by name only
            base = posixpath.normpath(root or '.')
            path = posixpath.normpath(posixpath.join(base, img_path))
            inside = path.startswith(base.rstrip('/') + '/')
        if not inside:
            raise XrayDataError(f"{where} view '{view_name}': image path {img_path!r} is not "
                                f"inside the data root {root or '.'!r}")

    def parse_ann_info(self, info: dict) -> dict:
        """Split the case's annotations into findings and ignore regions.

        Instances whose class is not selected are dropped entirely. 2D boxes are flattened
        over the views (in ``view_names`` order); ``*_instance_ids_3d`` index the findings
        kept here, not the pickle's ``instances``.

        Args:
            info (dict): a parsed case (``instances``, ``cam_instances``, ``view_names``).

        Returns:
            dict: always a dict (empty arrays for negative cases) with

            * ``gt_bboxes_3d`` :class:`LiDARInstance3DBoxes` ``(M, 7)``, ``gt_labels_3d``
              int64 ``(M,)``, ``gt_diameters_mm`` float32 ``(M,)``: the findings;
            * ``ignore_bboxes_3d`` ``(J3, 7)``, ``ignore_labels_3d``, ``ignore_diameters_mm``:
              the ignore regions;
            * ``gt_bboxes`` float32 ``(K, 4)`` ``[x1, y1, x2, y2]`` px, ``gt_bboxes_labels``,
              ``gt_bboxes_view_ids``, ``gt_bboxes_instance_ids_3d`` (int64 ``(K,)``): every
              view's 2D boxes of the findings;
            * ``ignore_bboxes`` float32 ``(J, 4)``, ``ignore_bboxes_labels``,
              ``ignore_bboxes_view_ids`` (int64 ``(J,)``): 2D boxes of ignore regions,
              and the findings' boxes a view flags ``ignore_flag`` itself;
            * ``token`` and ``instances`` (the pickle's list, unchanged).
        """
        token = info.get('token', info.get('sample_idx'))
        instances = info.get('instances', [])
        kept, new_index = self._select_instances(token, instances)
        ann_info = dict(token=token, instances=instances)
        for flag, prefix in ((0, 'gt'), (1, 'ignore')):
            (ann_info[f'{prefix}_bboxes_3d'], ann_info[f'{prefix}_labels_3d'],
             ann_info[f'{prefix}_diameters_mm']) = self._stack_findings(kept[flag])
        ann_info.update(self._boxes_2d(token, instances, info.get('cam_instances') or {},
                                       new_index))
        return ann_info

    def _select_instances(self, token, instances: List[dict]) -> tuple:
        """The case's instances of the selected classes, split by ``ignore_flag``.

        Returns:
            tuple: ``{flag: [(instance, training label), ...]}`` for flags 0 (findings)
            and 1 (ignore regions), and ``{pickle index: index among its kind}``.
        """
        num_file_classes = len(self.file_classes)
        new_index: Dict[int, int] = {}
        kept = {0: [], 1: []}
        for i, inst in enumerate(instances):
            label_3d = int(inst['bbox_label_3d'])
            if not 0 <= label_3d < num_file_classes:
                raise XrayDataError(f"{self.ann_file}: case '{token}' instance {i} has label "
                                    f'{label_3d}; the data has {num_file_classes} classes')
            label = self.label_mapping[label_3d]
            if label < 0:
                continue
            flag = int(inst.get('ignore_flag', 0))
            new_index[i] = len(kept[flag])
            kept[flag].append((inst, label))
            if flag == 0:
                self.num_ins_per_cat[label] += 1
        return kept, new_index

    @staticmethod
    def _stack_findings(items: List[tuple]) -> tuple:
        """``(M, 7)`` ct boxes (mm), int64 labels and float32 diameters (mm) of
        ``[(instance, label), ...]``."""
        return (_boxes3d([inst['bbox_3d'] for inst, _ in items]),
                np.array([label for _, label in items], dtype=np.int64),
                np.array([inst.get('diameter_mm', np.nan) for inst, _ in items],
                         dtype=np.float32))

    def _boxes_2d(self, token, instances: List[dict], cam_instances: dict,
                  new_index: Dict[int, int]) -> dict:
        """Every view's 2D boxes (px, ``img``) of the kept instances, flattened over the
        views in ``view_names`` order: ``gt_bboxes*`` for findings, ``ignore_bboxes*``
        for ignore regions and for the boxes a view flags ``ignore_flag`` itself (a
        finding that view does not show; see :meth:`parse_ann_info`)."""
        boxes = {0: [], 1: []}          # rows: x1, y1, x2, y2, label, view, id_3d
        for view_id, name in enumerate(self.view_names):
            for box in cam_instances.get(name, []):
                inst_id = int(box['instance_id'])
                if not 0 <= inst_id < len(instances):
                    raise XrayDataError(f"{self.ann_file}: case '{token}' view '{name}': 2D "
                                        f'box refers to instance {inst_id}, the case has '
                                        f'{len(instances)}')
                if inst_id not in new_index:
                    continue
                flag = int(view_box_ignored(box, instances[inst_id]))
                label = self.label_mapping[int(box.get('bbox_label',
                                                       instances[inst_id]['bbox_label_3d']))]
                boxes[flag].append([*box['bbox'], label, view_id, new_index[inst_id]])
        out = {}
        for flag, prefix in ((0, 'gt_bboxes'), (1, 'ignore_bboxes')):
            rows = np.array(boxes[flag], dtype=np.float64).reshape(-1, 7)
            out[prefix] = rows[:, :4].astype(np.float32)
            out[f'{prefix}_labels'] = rows[:, 4].astype(np.int64)
            out[f'{prefix}_view_ids'] = rows[:, 5].astype(np.int64)
            if flag == 0:
                out[f'{prefix}_instance_ids_3d'] = rows[:, 6].astype(np.int64)
        return out

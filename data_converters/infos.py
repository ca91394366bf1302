"""The converter's output format: info pickle items, metainfo, COCO files and the split.

The layout is the README's "Data format" (mmdet3d v2 info pickles: ``{'metainfo': ...,
'data_list': [...]}``). :data:`FORMAT_VERSION` is the one place that names the version of
that format; the dataset imports it and refuses pickles of another version. Bump it
whenever a key's meaning or layout changes.

Everything here is plain Python (lists, dicts, floats, ints, strings): the pickles load
without this package and the COCO files are the same data as JSON.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Set

import numpy as np

from projects.mv2d_xray.geometry import XrayGeometry

#: Version of the converter's output format (``metainfo['format_version']``).
FORMAT_VERSION = 1
#: ``metainfo['dataset']`` and ``metainfo['info_version']`` (mmdet3d's v2 layout).
DATASET_NAME = 'mv2d-xray'
INFO_VERSION = '2.0'
#: Default class list; more classes are possible (``bbox_label_3d`` indexes it).
CLASSES = ('nodule',)


def _matrix(mat: np.ndarray) -> List[List[float]]:
    return [[float(v) for v in row] for row in np.asarray(mat)]


def build_case_info(token: str, patient_id: str, source: str, ct_meta: dict,
                    geometry: XrayGeometry, image_paths: Sequence[str],
                    instances: List[dict], boxes2d: List[List[Optional[List[float]]]]
                    ) -> dict:
    """One ``data_list`` item, without ``sample_idx`` (set when the split is written).

    Args:
        token (str): case id (``LIDC-IDRI-0001``, ``demo-0003``).
        patient_id (str): the patient (the split keeps a patient's cases together).
        source (str): ``'lidc'`` or ``'synthetic'``.
        ct_meta (dict): ``shape``, ``spacing_mm``, ``series_uid``.
        geometry (XrayGeometry): the views.
        image_paths (Sequence[str]): per view, the PNG's path relative to the dataset dir.
        instances (list[dict]): per finding, ``bbox_3d`` plus :meth:`Finding.attributes`.
        boxes2d (list[list]): per finding, per view, ``[x1, y1, x2, y2]`` or ``None``.

    Returns:
        dict: the item (README "Data format").
    """
    mats = geometry.view_matrices()
    height, width = geometry.image_size
    images, cam_instances = {}, {}
    for view, name in enumerate(geometry.view_names):
        images[name] = dict(img_path=image_paths[view], height=height, width=width,
                            theta_rad=float(geometry.angles_rad[view]),
                            cam2img=_matrix(mats['cam2img'][view]),
                            lidar2cam=_matrix(mats['lidar2cam'][view]),
                            lidar2img=_matrix(mats['lidar2img'][view]))
        cam_instances[name] = [
            dict(bbox=list(boxes[view]), bbox_label=int(inst['bbox_label_3d']),
                 instance_id=idx, ignore_flag=int(inst['ignore_flag']))
            for idx, (inst, boxes) in enumerate(zip(instances, boxes2d))
            if boxes[view] is not None]
    return dict(token=token, patient_id=patient_id, source=source, ct=dict(ct_meta),
                images=images, instances=list(instances), cam_instances=cam_instances)


def build_metainfo(geometry: XrayGeometry, converter: dict,
                   classes: Sequence[str] = CLASSES) -> dict:
    """``metainfo`` of the info pickles."""
    return dict(dataset=DATASET_NAME, info_version=INFO_VERSION,
                format_version=FORMAT_VERSION, classes=tuple(classes),
                categories={name: idx for idx, name in enumerate(classes)},
                geometry=geometry.to_metainfo(), converter=dict(converter))


def build_coco(data_list: List[dict], metainfo: dict) -> dict:
    """The COCO file of a split: one image per view, one annotation per 2D box.

    Image and annotation ids count from 1 in the order of ``data_list`` and its views;
    ``category_id`` is the class index + 1; ignore regions have ``iscrowd = 1``.
    """
    images, annotations = [], []
    for info in data_list:
        for view_index, (view, img) in enumerate(info['images'].items()):
            image_id = len(images) + 1
            images.append(dict(id=image_id, file_name=img['img_path'], width=img['width'],
                               height=img['height'], token=info['token'], view=view,
                               view_index=view_index, theta_rad=img['theta_rad'],
                               cam2img=img['cam2img'], lidar2cam=img['lidar2cam'],
                               lidar2img=img['lidar2img']))
            for cam_inst in info['cam_instances'][view]:
                inst = info['instances'][cam_inst['instance_id']]
                x1, y1, x2, y2 = cam_inst['bbox']
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id,
                    category_id=int(cam_inst['bbox_label']) + 1,
                    bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1),
                    iscrowd=int(cam_inst['ignore_flag']),
                    instance_id=int(cam_inst['instance_id']), nodule_id=inst['nodule_id'],
                    bbox_3d=list(inst['bbox_3d']), diameter_mm=inst['diameter_mm'],
                    num_readers=inst['num_readers'],
                    characteristics=dict(inst['characteristics'])))
    categories = [dict(id=idx + 1, name=name) for idx, name in enumerate(metainfo['classes'])]
    return dict(info=dict(description=f"{metainfo['dataset']} 2D boxes",
                          format_version=metainfo['format_version']),
                images=images, annotations=annotations, categories=categories)


def split_patients(patient_ids: Iterable[str], val_fraction: float, seed: int,
                   force_val: Iterable[str] = ()) -> Set[str]:
    """The validation patients: ``round(val_fraction * #patients)`` of them, drawn with
    ``numpy.random.default_rng(seed)`` from the sorted patient list (``force_val``
    patients, when present, are always in validation and count towards the number).

    The split depends only on the set of patients, the fraction and the seed, never on
    the order in which cases were converted.
    """
    patients = sorted(set(patient_ids))
    forced = [p for p in patients if p in set(force_val)]
    rest = [p for p in patients if p not in set(forced)]
    num_val = max(int(round(val_fraction * len(patients))) - len(forced), 0)
    order = np.random.default_rng(seed).permutation(len(rest))
    return set(forced) | {rest[i] for i in order[:num_val]}

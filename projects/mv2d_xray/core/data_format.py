"""The project's data contract, in one place: the info pickles and COCO files the
converter writes and the plugin reads, and the prediction files every method writes and
the metric reads.

* **Info pickles** (README "Data format"): mmdet3d v2 layout ``{'metainfo': ...,
  'data_list': [...]}``. :data:`FORMAT_VERSION` is the one place that names the version
  of that format; readers refuse pickles of another version. Bump it whenever a key's
  meaning or layout changes. Builders: :func:`build_case_info`, :func:`build_metainfo`,
  :func:`build_coco`, :func:`split_patients`; readers: :func:`load_infos`,
  :func:`infos_classes`, :func:`load_gt_cases`.
* **Predictions** (README "Prediction format")::

      {"results": {"LIDC-IDRI-0001": [{"bbox_3d": [x, y, z, dx, dy, dz, 0.0],
                                        "score": 0.93, "label": 0}],
                   "demo-0003": []}}

  read and validated by :func:`load_predictions` / :func:`parse_predictions`, written by
  :func:`predictions_to_json`.
* In memory, ground truth and predictions of one case are :class:`CaseGT` and
  :class:`CasePred` (what :mod:`projects.mv2d_xray.core.metric` scores).

Everything written is plain Python (lists, dicts, floats, ints, strings): the pickles load
without this package and the COCO files are the same data as JSON. Plain Python and numpy
only (no torch, no mmengine).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np

from projects.mv2d_xray.core.acquisition import Acquisition
from projects.mv2d_xray.core.io import read_json, read_pickle

#: Version of the converter's output format (``metainfo['format_version']``).
FORMAT_VERSION = 1
#: ``metainfo['dataset']`` and ``metainfo['info_version']`` (mmdet3d's v2 layout).
DATASET_NAME = 'mv2d-xray'
INFO_VERSION = '2.0'


class PredictionFormatError(ValueError):
    """A prediction file or item that does not follow the README's prediction format."""


class InfoFormatError(ValueError):
    """An info pickle that is not of this format (or not an info pickle at all). The
    message names the file."""


# -- in memory -----------------------------------------------------------------------------
@dataclass
class CaseGT:
    """Ground truth of one scan.

    Args:
        boxes (np.ndarray): ``(G, 7)`` ct boxes ``[x, y, z, dx, dy, dz, yaw]`` in mm.
        labels (np.ndarray): ``(G,)`` class indices.
        ignore (np.ndarray): ``(G,)`` bool, True for ignore regions.
        diameters_mm (np.ndarray): ``(G,)`` finding diameters (FROC radius, size bands).
    """
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    diameters_mm: np.ndarray

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 7)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        self.ignore = np.asarray(self.ignore, bool).reshape(-1)
        self.diameters_mm = np.asarray(self.diameters_mm, np.float64).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.ignore)
                == len(self.diameters_mm)):
            raise ValueError('CaseGT fields must have the same length')


@dataclass
class CasePred:
    """Predictions for one scan.

    Args:
        boxes (np.ndarray): ``(P, 7)`` ct boxes in mm.
        scores (np.ndarray): ``(P,)`` confidences (higher = more confident).
        labels (np.ndarray): ``(P,)`` class indices.
    """
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 7)
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError('CasePred fields must have the same length')

    @classmethod
    def empty(cls) -> 'CasePred':
        return cls(np.zeros((0, 7)), np.zeros(0), np.zeros(0, np.int64))


def view_box_ignored(cam_instance: Mapping, instance: Mapping) -> bool:
    """Whether one view's 2D box (an item of ``cam_instances``) is an ignore box of that
    view: its finding is an ignore region (``instance['ignore_flag']``), or the view does
    not show the finding (the box's own ``cam_instance['ignore_flag']``). The finding
    itself stays a finding in 3D and in its other views (README "Data format")."""
    return bool(cam_instance.get('ignore_flag', 0) or instance.get('ignore_flag', 0))


# -- writing: info items, metainfo, COCO, the split ------------------------------------
def _matrix(mat: np.ndarray) -> List[List[float]]:
    return [[float(v) for v in row] for row in np.asarray(mat)]


def build_case_info(token: str, patient_id: str, source: str, ct_meta: dict,
                    geometry: Acquisition, image_paths: Sequence[str],
                    instances: List[dict], boxes2d: List[List[Optional[List[float]]]]
                    ) -> dict:
    """One ``data_list`` item, without ``sample_idx`` (set when the split is written).

    Args:
        token (str): case id (``LIDC-IDRI-0001``, ``demo-0003``).
        patient_id (str): the patient (the split keeps a patient's cases together).
        source (str): ``'lidc'`` or ``'synthetic'``.
        ct_meta (dict): ``shape``, ``spacing_mm``, ``series_uid``.
        geometry (Acquisition): the views (an ``XrayGeometry`` ring works too): each
            view's ``cam2img``, ``lidar2cam``, ``lidar2img`` and ``theta_rad`` (the source's
            azimuth, ``Acquisition.angles_rad``).
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


def build_metainfo(geometry: Acquisition, converter: dict, classes: Sequence[str]) -> dict:
    """``metainfo`` of the info pickles; ``geometry`` is ``Acquisition.to_metainfo()``
    (for a ring: the ring's settings as before, for other acquisitions also the
    calibration dict)."""
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
                    iscrowd=int(view_box_ignored(cam_inst, inst)),    # as in training
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


# -- COCO files ----------------------------------------------------------------------------
#: The COCO file of a split is the info pickle's name with this instead of ``.pkl``.
COCO_SUFFIX = '_2d.coco.json'


def coco_path(infos_path: str) -> str:
    """The COCO file beside an info pickle: ``<prefix>_infos_<split>_2d.coco.json`` for
    ``<prefix>_infos_<split>.pkl``."""
    stem = infos_path[:-4] if infos_path.endswith('.pkl') else infos_path
    return stem + COCO_SUFFIX


def load_coco(coco_gt: Union[str, dict]) -> dict:
    """A COCO dataset dict from a path or as loaded.

    Raises:
        FileNotFoundError: no file at the path.
        ValueError: the file is not JSON, or not a COCO dataset (naming the file).
    """
    data = coco_gt if isinstance(coco_gt, dict) else read_json(coco_gt, 'COCO file')
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in
                                             ('images', 'annotations', 'categories')):
        name = 'COCO data' if isinstance(coco_gt, dict) else str(coco_gt)
        raise ValueError(f'{name} is not a COCO file: expected images, annotations and '
                         'categories lists')
    return data


def image_index(coco: dict) -> Dict[tuple, int]:
    """``{(token, view name): image_id}`` of a converter COCO file."""
    return {(img.get('token'), img.get('view')): img['id'] for img in coco['images']}


def resolve_detections(coco: dict, dets: Sequence[dict]) -> List[dict]:
    """Validate COCO-results detections and fill ``image_id`` from ``token`` / ``view``;
    the ``token`` and ``view`` a detection with an ``image_id`` gives must be that image's.

    Raises:
        ValueError: naming the first bad item.
    """
    images = {img['id']: img for img in coco['images']}
    by_view = image_index(coco)
    cat_ids = {c['id'] for c in coco['categories']}
    out = []
    if not isinstance(dets, list):
        raise ValueError('detections must be a JSON list of COCO results')
    for i, det in enumerate(dets):
        where = f'detection [{i}]'
        if not isinstance(det, dict):
            raise ValueError(f'{where}: expected an object, got {type(det).__name__}')
        det = dict(det)
        if det.get('image_id') is None:
            key = (det.get('token'), det.get('view'))
            if key not in by_view:
                raise ValueError(f'{where}: no image_id, and token/view {key} is not an '
                                 'image of the COCO file')
            det['image_id'] = by_view[key]
        if det['image_id'] not in images:
            raise ValueError(f'{where}: image_id {det["image_id"]!r} is not in the COCO file')
        image = images[det['image_id']]
        named = (det.get('token'), det.get('view'))
        if any(given is not None and given != image.get(key)
               for key, given in zip(('token', 'view'), named)):
            # image ids restart at 1 in every split's COCO file: another split's
            # detections would otherwise land on this split's images unnoticed
            raise ValueError(f'{where}: image_id {det["image_id"]} is token/view '
                             f'{(image.get("token"), image.get("view"))} in the COCO file, '
                             f'but the detection names {named} (detections of another '
                             'split?)')
        if det.get('category_id') not in cat_ids:
            raise ValueError(f'{where}: category_id {det.get("category_id")!r} is not a '
                             f'category of the COCO file {sorted(cat_ids)}')
        det['bbox'], _ = check_detection_values(det, where)
        out.append(det)
    return out


def check_detection_values(det: dict, where: str) -> Tuple[List[float], float]:
    """The ``bbox`` (``[x, y, w, h]`` as floats) and ``score`` of one COCO-results
    detection, checked: 4 finite numbers with ``w, h >= 0``, and a finite number.

    Raises:
        ValueError: ``'<where>: ...'`` naming the bad value.
    """
    bbox = det.get('bbox')
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
            for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f'{where}: bbox must be 4 finite numbers [x, y, w, h] with '
                         f'w, h >= 0, got {bbox!r}')
    score = det.get('score')
    if not isinstance(score, (int, float)) or isinstance(score, bool) or \
            not np.isfinite(score):
        raise ValueError(f'{where}: score must be a finite number, got {score!r}')
    return [float(v) for v in bbox], float(score)


# -- ground truth --------------------------------------------------------------------------
def check_metainfo(meta: Any, source: str) -> None:
    """The metainfo of an info pickle must be of this format: :data:`FORMAT_VERSION`,
    ``classes`` and ``geometry`` present.

    Raises:
        InfoFormatError: one line naming ``source`` and what is wrong.
    """
    if not isinstance(meta, Mapping):
        raise InfoFormatError(f"{source}: the info pickle has no 'metainfo' dict")
    version = meta.get('format_version')
    if version != FORMAT_VERSION:
        raise InfoFormatError(
            f'{source}: info pickle format_version {version!r}, but this code reads '
            f'format_version {FORMAT_VERSION}; convert the data again with this version '
            'of the converter')
    for key in ('classes', 'geometry'):
        if key not in meta:
            raise InfoFormatError(f"{source}: metainfo has no '{key}'")


def load_infos(infos: Union[str, dict]) -> dict:
    """An info pickle (``{'metainfo', 'data_list'}``) of this format, from a path or as
    loaded; read with :func:`~projects.mv2d_xray.core.io.read_pickle` (plain data only).

    Raises:
        FileNotFoundError / ValueError: with a one-line message for a missing file, a
        file that is not an info pickle or one of another format version
        (:class:`InfoFormatError`).
    """
    if isinstance(infos, dict):
        data, source = infos, 'infos'
    else:
        source = str(infos)
        data = read_pickle(source, 'info pickle')
    if not isinstance(data, dict) or not isinstance(data.get('data_list'), list):
        raise InfoFormatError(f'{source} is not an info pickle: expected a dict with '
                              "'metainfo' and a 'data_list' list")
    check_metainfo(data.get('metainfo'), source)
    tokens = [item.get('token') for item in data['data_list']]
    if len(set(tokens)) != len(tokens) or None in tokens:
        raise InfoFormatError(f'{source}: case tokens must be present and unique')
    return data


def infos_classes(infos: dict) -> Tuple[str, ...]:
    """Class names of a loaded info pickle (``metainfo['classes']``)."""
    return tuple(str(c) for c in infos['metainfo']['classes'])


def infos_size_bands(infos: dict) -> Optional[Tuple[Tuple[str, float, float], ...]]:
    """The size bands a dataset declares (``metainfo['converter']['size_bands_mm']``:
    ``[name, low_mm, high_mm or None]`` rows, e.g. the blades' 0.3-1, 1-2, > 2 mm), as
    ``(name, low, high)`` with ``inf`` for an open end; None when it declares none (the
    metric's LUNA16 nodule bands then apply). ``ValueError`` for rows of another shape."""
    rows = (infos['metainfo'].get('converter') or {}).get('size_bands_mm')
    if rows is None:
        return None
    try:
        return tuple((str(name), float(low), math.inf if high is None else float(high))
                     for name, low, high in rows)
    except (TypeError, ValueError):
        raise ValueError("metainfo['converter']['size_bands_mm'] must hold [name, low_mm, "
                         f'high_mm or None] rows, got {rows!r}') from None


def case_gt_from_info(info: dict) -> CaseGT:
    """:class:`CaseGT` of one ``data_list`` item. ``diameter_mm`` missing or ``None`` falls
    back to the largest box extent."""
    instances = info.get('instances') or []
    boxes = np.asarray([inst['bbox_3d'] for inst in instances], np.float64).reshape(-1, 7)
    diameters = [inst.get('diameter_mm') for inst in instances]
    diameters = [float(d) if d is not None else float(max(b[3:6]))
                 for d, b in zip(diameters, boxes)]
    return CaseGT(boxes=boxes,
                  labels=[int(inst.get('bbox_label_3d', 0)) for inst in instances],
                  ignore=[bool(inst.get('ignore_flag', 0)) for inst in instances],
                  diameters_mm=diameters)


def load_gt_cases(infos: Union[str, dict], name: Optional[str] = None
                  ) -> Tuple[Dict[str, CaseGT], Tuple[str, ...]]:
    """``({token: CaseGT}, classes)`` from an info pickle (path or loaded), in file order.

    Args:
        infos (str | dict): the pickle's path, or its loaded content.
        name (str, optional): how messages name a loaded pickle (its path). Defaults to
            the path, or ``'infos'``.

    Raises:
        InfoFormatError: also for a ground-truth label that is not an index of
        ``metainfo['classes']`` (naming the file, the case and the instance).
    """
    data = load_infos(infos)
    classes = infos_classes(data)
    source = name or ('infos' if isinstance(infos, dict) else str(infos))
    cases = {}
    for item in data['data_list']:
        case = case_gt_from_info(item)
        for i, label in enumerate(case.labels):
            if not 0 <= label < len(classes):
                raise InfoFormatError(f"{source}: case '{item['token']}' instance {i} has "
                                      f'label {label}, not a class index of the file\'s '
                                      f'metainfo classes {list(classes)} '
                                      f'(0..{len(classes) - 1})')
        cases[item['token']] = case
    return cases, classes


# -- predictions ---------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def parse_prediction_item(item: Any, where: str, num_classes: int) -> Tuple[list, float, int]:
    """Validate one ``{'bbox_3d', 'score', 'label'}`` item; ``where`` names it in errors.

    Returns:
        tuple: ``(bbox_3d (7 floats), score, label)``.
    """
    if not isinstance(item, Mapping):
        raise PredictionFormatError(f'{where}: expected an object with bbox_3d, score and '
                                    f'label, got {type(item).__name__}')
    missing = [k for k in ('bbox_3d', 'score', 'label') if k not in item]
    if missing:
        raise PredictionFormatError(f'{where}: missing {", ".join(missing)}')
    box = item['bbox_3d']
    if not isinstance(box, (list, tuple)) or len(box) != 7 or \
            not all(_is_number(v) for v in box):
        raise PredictionFormatError(f'{where}: bbox_3d must be 7 numbers '
                                    f'[x, y, z, dx, dy, dz, yaw], got {box!r}')
    box = [float(v) for v in box]
    if not all(math.isfinite(v) for v in box):
        raise PredictionFormatError(f'{where}: bbox_3d has a non-finite value: {box}')
    for name, size in zip(('dx', 'dy', 'dz'), box[3:6]):
        if size < 0:
            raise PredictionFormatError(f'{where}: bbox_3d has a negative size '
                                        f'({name} = {size:g})')
    score = item['score']
    if not _is_number(score) or not math.isfinite(float(score)):
        raise PredictionFormatError(f'{where}: score must be a finite number, got {score!r}')
    label = item['label']
    if isinstance(label, bool) or not (isinstance(label, Integral) or
                                       (_is_number(label) and float(label).is_integer())):
        raise PredictionFormatError(f'{where}: label must be an integer class index, '
                                    f'got {label!r}')
    label = int(label)
    if not 0 <= label < num_classes:
        raise PredictionFormatError(f'{where}: label {label} is not a class index '
                                    f'(0..{num_classes - 1})')
    return box, float(score), label


def parse_predictions(obj: Any, num_classes: int) -> Dict[str, CasePred]:
    """``{token: CasePred}`` from a loaded prediction JSON, validated item by item."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get('results'), Mapping):
        raise PredictionFormatError('expected a JSON object {"results": {case id: [...]}}')
    preds = {}
    for token, items in obj['results'].items():
        if not isinstance(items, list):
            raise PredictionFormatError(f'results[{token!r}]: expected a list of '
                                        f'predictions, got {type(items).__name__}')
        parsed = [parse_prediction_item(item, f'results[{token!r}][{i}]', num_classes)
                  for i, item in enumerate(items)]
        preds[token] = CasePred(boxes=[p[0] for p in parsed], scores=[p[1] for p in parsed],
                                labels=[p[2] for p in parsed])
    return preds


def load_predictions(path: str, num_classes: int) -> Dict[str, CasePred]:
    """Read and validate a prediction JSON file (README "Prediction format")."""
    try:
        obj = read_json(path, 'prediction file')
    except ValueError as exc:
        raise PredictionFormatError(str(exc)) from exc
    try:
        return parse_predictions(obj, num_classes)
    except PredictionFormatError as exc:
        raise PredictionFormatError(f'{path}: {exc}') from None


def predictions_to_json(preds: Mapping[str, CasePred]) -> dict:
    """The README prediction format for ``{token: CasePred}`` (plain Python floats)."""
    results = {}
    for token, pred in preds.items():
        results[token] = [dict(bbox_3d=[float(v) for v in box], score=float(score),
                               label=int(label))
                          for box, score, label in zip(pred.boxes, pred.scores, pred.labels)]
    return dict(results=results)


def check_cases(preds: Mapping[str, CasePred], cases: Mapping[str, CaseGT],
                allow_missing: bool = False, gt_name: str = 'the ground truth') -> None:
    """Raise ``KeyError`` for a predicted case that is not in the ground truth, and (unless
    ``allow_missing``) for ground-truth cases that have no entry in the predictions."""
    unknown = [t for t in preds if t not in cases]
    if unknown:
        more = f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''
        raise KeyError(f'case {unknown[0]!r}{more} is in the predictions but not in '
                       f'{gt_name}')
    missing = [t for t in cases if t not in preds]
    if missing and not allow_missing:
        more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
        raise KeyError(f'case {missing[0]!r}{more} of {gt_name} has no entry in the '
                       'predictions (write an empty list for a case without detections)')

"""Reading ground truth from info pickles and predictions in README's "Prediction format",
with one clear error per bad item, and writing JSON atomically.

Prediction file (README)::

    {"results": {"LIDC-IDRI-0001": [{"bbox_3d": [x, y, z, dx, dy, dz, 0.0],
                                      "score": 0.93, "label": 0}],
                 "demo-0003": []}}
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp
import tempfile
from numbers import Integral, Real
from typing import Any, Dict, Mapping, Tuple, Union

import numpy as np

from .xray_eval import CaseGT, CasePred


class PredictionFormatError(ValueError):
    """A prediction file or item that does not follow the README's prediction format."""


# -- ground truth --------------------------------------------------------------------------
def load_infos(infos: Union[str, dict]) -> dict:
    """An info pickle (``{'metainfo', 'data_list'}``), from a path or as loaded.

    Raises:
        FileNotFoundError / ValueError: with a one-line message for a missing file or a
        file that is not an mmdet3d v2 info pickle.
    """
    if isinstance(infos, dict):
        data = infos
        source = 'infos'
    else:
        source = str(infos)
        if not osp.isfile(source):
            raise FileNotFoundError(f'info pickle not found: {source}')
        import mmengine
        try:
            data = mmengine.load(source)
        except Exception as exc:  # unpickling errors of any kind
            raise ValueError(f'cannot read info pickle {source}: {type(exc).__name__}: '
                             f'{exc}') from exc
    if not isinstance(data, dict) or not isinstance(data.get('data_list'), list):
        raise ValueError(f'{source} is not an info pickle: expected a dict with '
                         "'metainfo' and a 'data_list' list")
    tokens = [item.get('token') for item in data['data_list']]
    if len(set(tokens)) != len(tokens) or None in tokens:
        raise ValueError(f'{source}: case tokens must be present and unique')
    return data


def infos_classes(infos: dict) -> Tuple[str, ...]:
    """Class names from ``metainfo['classes']`` (default ``('nodule',)``)."""
    classes = (infos.get('metainfo') or {}).get('classes') or ('nodule',)
    return tuple(str(c) for c in classes)


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


def load_gt_cases(infos: Union[str, dict]) -> Tuple[Dict[str, CaseGT], Tuple[str, ...]]:
    """``({token: CaseGT}, classes)`` from an info pickle (path or loaded), in file order."""
    data = load_infos(infos)
    cases = {item['token']: case_gt_from_info(item) for item in data['data_list']}
    return cases, infos_classes(data)


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


def read_json(path: str, what: str = 'file') -> Any:
    """Load a JSON file with one clear error: ``FileNotFoundError('<what> not found:
    <path>')`` or ``ValueError('<path> is not valid JSON: ...')``."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} not found: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f'{path} is not valid JSON: {exc}') from exc


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


# -- output --------------------------------------------------------------------------------
def write_json_atomic(obj: Any, path: str, indent: int = 2) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and a rename, so
    a failure never leaves a half-written file. NaN / inf are refused."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            json.dump(obj, f, indent=indent, allow_nan=False)
            f.write('\n')
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise

"""The project's mmengine metric: LUNA16 FROC / CPM, centre-distance AP in mm, 3D IoU AP,
centre error, by size band and class, plus the per-view 2D AP of the 2D stage."""
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmdet3d.registry import METRICS
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from projects.mv2d_xray.core.data_format import (CaseGT, CasePred, case_gt_from_info, coco_path,
                                                 image_index, infos_classes, infos_size_bands,
                                                 load_coco, load_infos, predictions_to_json)
from projects.mv2d_xray.core.geometry import transform_boxes2d
from projects.mv2d_xray.core.io import write_json
from projects.mv2d_xray.core.metric import (DEFAULT_DIST_THRS_MM, DEFAULT_FROC_FP_RATES,
                                            DEFAULT_IOU_THRS, DEFAULT_SIZE_BANDS,
                                            evaluate_detections, flatten_metrics, format_table)
from projects.mv2d_xray.mv2d_xray.evaluation.coco2d import (evaluate_coco_2d, flatten_2d,
                                                            format_table_2d)
from projects.mv2d_xray.mv2d_xray.models.config_keys import XrayConfigError


def _get(sample, key, default=None):
    """A field or metainfo key of a data sample (a ``Det3DDataSample`` or its dict)."""
    if isinstance(sample, dict):
        return sample.get(key, default)
    return sample.get(key, default) if hasattr(sample, 'get') else default


def _numpy(x) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if hasattr(x, 'detach'):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def boxes3d_to_numpy(bboxes_3d) -> np.ndarray:
    """``(P, 7)`` ``[x, y, z, dx, dy, dz, yaw]`` gravity-centre boxes from mmdet3d boxes
    (``LiDARInstance3DBoxes``: ``.gravity_center``, ``.dims``, ``.yaw``) or from an array
    that already is in that form."""
    if hasattr(bboxes_3d, 'gravity_center'):
        centre, dims = _numpy(bboxes_3d.gravity_center), _numpy(bboxes_3d.dims)
        yaw = _numpy(bboxes_3d.yaw).reshape(-1, 1) if bboxes_3d.tensor.shape[-1] > 6 \
            else np.zeros((len(centre), 1))
        return np.concatenate([centre, dims, yaw], axis=1).astype(np.float64)
    return _numpy(bboxes_3d).astype(np.float64).reshape(-1, 7)


@METRICS.register_module()
class XrayDet3DMetric(BaseMetric):
    """3D detection metric for mm-sized findings seen in X-ray views.

    Ground truth (findings, ignore regions, classes, diameters) is read from the info
    pickle ``ann_file``, matched to the predictions by the case id
    (``data_sample.metainfo['token']``, else ``sample_idx``). Predictions are
    ``data_sample.pred_instances_3d`` (``bboxes_3d`` ``LiDARInstance3DBoxes`` in ct mm --
    the gravity centre is used --, ``scores_3d``, ``labels_3d``). Non-finite boxes or
    scores and negative sizes are dropped with a warning (counted as ``num_invalid_pred``).

    Figures (defined exactly in :mod:`projects.mv2d_xray.core.metric`): AP at axis-aligned 3D IoU
    ``iou_thrs`` (101-point interpolation), AP at centre distance ``dist_thrs_mm`` and
    their mean ``mAP_dist`` (nuScenes matching), LUNA16 FROC at ``froc_fp_rates`` FPs per
    scan (all scans evaluated, negatives included) and its mean ``CPM``, the centre error
    of matched predictions; all of them by size band and, with several classes, by class.
    Absent figures (no ground truth) are ``null`` in the JSON and not logged.

    When the model also attaches per-view 2D detections (``data_sample.pred_instances``:
    ``bboxes`` ``(K, 4)`` xyxy in the input (augmented) image, ``scores``, ``labels``,
    ``view_ids`` indexing ``metainfo['view_names']``), they are mapped back to the original
    image (through ``metainfo['img_aug_matrix']``, else ``scale_factor``) and evaluated
    with COCO AP per view against the converter's COCO file (logged as ``2d/AP@0.5`` etc.).

    Args:
        ann_file (str): the info pickle of the evaluated split.
        data_root (str, optional): joined to relative ``ann_file`` / ``coco_ann_file``.
        dist_thrs_mm (sequence[float]): centre-distance thresholds. Defaults to
            (2, 4, 8, 16) mm.
        iou_thrs (sequence[float]): 3D IoU thresholds. Defaults to (0.1, 0.25, 0.5).
        froc_fp_rates (sequence[float]): FPs per scan of the FROC. Defaults to LUNA16's
            (1/8, 1/4, 1/2, 1, 2, 4, 8).
        size_bands (sequence, optional): ``(name, low_mm, high_mm)`` size bands. Defaults
            to the dataset's (``metainfo['converter']['size_bands_mm']``, e.g. the blades'
            0.3-1, 1-2, >2 mm), else LUNA16's 3-6, 6-10, >10 mm.
        out_file (str, optional): write the full metrics JSON there (``tools/test.py``
            sets ``<work_dir>/metrics.json``); the format of ``tools/evaluate.py``.
        pred_out_file (str, optional): write the 3D predictions there in the README's
            prediction format. ``'auto'`` (default): ``predictions.json`` beside
            ``out_file`` when that is set, else nothing.
        dets2d_out_file (str, optional): write the 2D detections there as COCO results
            (original image pixels; ``image_id`` from the COCO file, plus ``token`` and
            ``view``). ``'auto'`` (default): ``dets2d.json`` beside ``out_file``.
        coco_ann_file (str, optional): the split's COCO file for the 2D evaluation.
            ``'auto'`` (default): ``ann_file`` with ``.pkl`` -> ``_2d.coco.json`` if that
            exists; ``None``: no 2D evaluation.
        evaluate_3d (bool): False for a model without its 3D stage (``model.roi_head=None``,
            the 2D detections only, e.g. ``tools/benchmark_detection.py``'s per-class-NMS
            detections): no 3D figures and no ``pred_out_file``; ``out_file`` holds
            ``{'eval_2d': ...}`` (``{}`` with a warning when there is no COCO file) and
            the 2D detections are written as usual, instead of 3D figures of 0 for boxes
            the model never makes. A case without 2D detections then raises
            :class:`XrayConfigError` (as does a value other than True or False).
            Defaults to True.
        collect_device (str): 'cpu' or 'gpu'. Defaults to 'cpu'.
        prefix (str, optional): prefix of the logged names. Defaults to none.
    """

    def __init__(self,
                 ann_file: str,
                 data_root: Optional[str] = None,
                 dist_thrs_mm: Sequence[float] = DEFAULT_DIST_THRS_MM,
                 iou_thrs: Sequence[float] = DEFAULT_IOU_THRS,
                 froc_fp_rates: Sequence[float] = DEFAULT_FROC_FP_RATES,
                 size_bands: Optional[Sequence[Tuple[str, float, float]]] = None,
                 out_file: Optional[str] = None,
                 pred_out_file: Optional[str] = 'auto',
                 dets2d_out_file: Optional[str] = 'auto',
                 coco_ann_file: Optional[str] = 'auto',
                 evaluate_3d: bool = True,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ann_file = self._join(data_root, ann_file)
        self.dist_thrs_mm = tuple(float(t) for t in dist_thrs_mm)
        self.iou_thrs = tuple(float(t) for t in iou_thrs)
        self.froc_fp_rates = tuple(float(r) for r in froc_fp_rates)
        self.size_bands = None if size_bands is None else tuple(
            (str(n), float(lo), float(hi)) for n, lo, hi in size_bands)
        if not isinstance(evaluate_3d, (bool, np.bool_)):   # bool('no') would be True
            raise XrayConfigError(f'XrayDet3DMetric: evaluate_3d is True or False, not '
                                  f'{evaluate_3d!r}')
        self.evaluate_3d = bool(evaluate_3d)
        self.out_file = out_file
        out_dir = osp.dirname(out_file) if out_file else None
        if pred_out_file == 'auto':
            pred_out_file = (osp.join(out_dir, 'predictions.json') if out_dir is not None
                             else None)
        self.pred_out_file = pred_out_file if self.evaluate_3d else None
        self.dets2d_out_file = (osp.join(out_dir, 'dets2d.json') if out_dir is not None
                                else None) if dets2d_out_file == 'auto' else dets2d_out_file
        if coco_ann_file == 'auto':
            coco_ann_file = coco_path(self.ann_file)
            self._coco_optional = True
        else:    # None: no 2D evaluation; a path: it must be there
            coco_ann_file = self._join(data_root, coco_ann_file)
            self._coco_optional = coco_ann_file is None
        self.coco_ann_file = coco_ann_file
        self._infos = None

    @staticmethod
    def _join(root: Optional[str], path: Optional[str]) -> Optional[str]:
        if path is None or root is None or osp.isabs(path):
            return path
        return osp.join(root, path)

    # -- ground truth ----------------------------------------------------------------------
    def _load_infos(self) -> dict:
        if self._infos is None:
            infos = load_infos(self.ann_file)
            self._infos = dict(data=infos, by_token={d['token']: d for d in infos['data_list']},
                               by_idx={d.get('sample_idx', i): d for i, d in
                                       enumerate(infos['data_list'])})
        return self._infos

    def _classes(self) -> Tuple[str, ...]:
        """Classes the predictions' labels index: the dataset's (which a config may have
        narrowed or reordered), else the pickle's."""
        meta = self.dataset_meta or {}
        if meta.get('classes'):
            return tuple(meta['classes'])
        return infos_classes(self._load_infos()['data'])

    def _case_gt(self, info: dict, classes: Tuple[str, ...]) -> CaseGT:
        """Ground truth of a case with labels remapped from the pickle's classes to
        ``classes`` (findings of other classes dropped)."""
        gt = case_gt_from_info(info)
        file_classes = infos_classes(self._load_infos()['data'])
        if file_classes == classes:
            return gt
        remap = np.array([classes.index(c) if c in classes else -1 for c in file_classes],
                         np.int64)
        labels = remap[gt.labels] if len(gt.labels) else gt.labels
        keep = labels >= 0
        return CaseGT(gt.boxes[keep], labels[keep], gt.ignore[keep], gt.diameters_mm[keep])

    # -- mmengine interface ----------------------------------------------------------------
    def process(self, data_batch: dict, data_samples: Sequence) -> None:
        """Keep each sample's case id, 3D predictions and (if any) 2D detections."""
        for sample in data_samples:
            token = _get(sample, 'token')
            if token is None:
                idx = _get(sample, 'sample_idx')
                info = self._load_infos()['by_idx'].get(idx)
                if info is None:
                    raise KeyError(f'data sample without token and with unknown '
                                   f'sample_idx {idx!r} (ann_file {self.ann_file})')
                token = info['token']
            elif token not in self._load_infos()['by_token']:
                raise KeyError(f'case {token!r} is not in the ground truth {self.ann_file}')
            pred = _get(sample, 'pred_instances_3d')
            record = dict(token=token, boxes=np.zeros((0, 7)), scores=np.zeros(0),
                          labels=np.zeros(0, np.int64))
            if pred is not None and len(_get(pred, 'scores_3d', [])):
                record.update(boxes=boxes3d_to_numpy(_get(pred, 'bboxes_3d')),
                              scores=_numpy(_get(pred, 'scores_3d')).astype(np.float64),
                              labels=_numpy(_get(pred, 'labels_3d')).astype(np.int64))
            dets2d = _get(sample, 'pred_instances')
            if dets2d is not None and _get(dets2d, 'bboxes') is not None and \
                    _get(dets2d, 'view_ids') is not None:
                record['dets2d'] = self._dets2d_original(sample, dets2d)
            elif not self.evaluate_3d:   # here, on every process of a distributed run
                raise XrayConfigError(f'XrayDet3DMetric(evaluate_3d=False) on {self.ann_file}:'
                                      f' case {token!r} has no 2D detections (pred_instances '
                                      'with view_ids) to evaluate')
            self.results.append(record)

    @staticmethod
    def _dets2d_original(sample, dets2d) -> dict:
        """2D detections in the original images: ``bboxes`` ``(K, 4)`` xyxy, ``scores``,
        ``labels``, ``views`` (view names)."""
        boxes = _numpy(_get(dets2d, 'bboxes')).astype(np.float64).reshape(-1, 4)
        view_ids = _numpy(_get(dets2d, 'view_ids')).astype(np.int64).reshape(-1)
        names = _get(sample, 'view_names')
        aug = _get(sample, 'img_aug_matrix')
        if aug is not None:
            aug = np.asarray(_numpy(aug), np.float64).reshape(-1, 4, 4)
            out = np.zeros_like(boxes)
            for v in np.unique(view_ids):
                sel = view_ids == v
                out[sel] = transform_boxes2d(np.linalg.inv(aug[v]), boxes[sel])
            boxes = out
        elif _get(sample, 'scale_factor') is not None:
            # (sx, sy) for every view, one pair per view, or one number
            scale = np.asarray(_get(sample, 'scale_factor'), np.float64)
            if scale.ndim == 2:
                per_box = scale[view_ids]
            else:
                per_box = np.broadcast_to(np.resize(scale.reshape(-1), 2), (len(boxes), 2))
            boxes = boxes / np.concatenate([per_box, per_box], axis=1)
        views = [str(names[v]) if names is not None else int(v) for v in view_ids]
        return dict(bboxes=boxes, scores=_numpy(_get(dets2d, 'scores')).astype(np.float64),
                    labels=_numpy(_get(dets2d, 'labels')).astype(np.int64), views=views)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Evaluate every processed case; log the tables, write the files, return the flat
        figures (``CPM``, ``mAP_dist``, ``AP_dist@2mm``, ``AP_iou@0.1``, ``FROC@1``,
        ``centre_error_mm``, ``CPM_3-6mm``, ``2d/AP@0.5`` ...; the ``2d/`` ones alone with
        ``evaluate_3d=False``)."""
        infos = self._load_infos()
        classes = self._classes()
        preds, result, flat, tables = None, {}, {}, []
        if self.evaluate_3d:
            preds, result = self._evaluate_3d(results, infos, classes)
            flat = flatten_metrics(result)
            tables.append(format_table(result))
        dets2d = self._coco_results(results, infos, classes)
        result2d = None if dets2d is None else self._evaluate_2d(
            dets2d, {r['token'] for r in results if 'dets2d' in r})
        if result2d is not None:
            result['eval_2d'] = result2d
            flat.update(flatten_2d(result2d))
            tables.append('Per-view 2D detection (COCO):\n' + format_table_2d(result2d))
        elif not self.evaluate_3d:
            print_log(f'no COCO file for {self.ann_file} ({self.coco_ann_file}): the 2D '
                      'detections are written, not evaluated', logger='current', level=30)
        if tables:
            print_log('\n' + '\n\n'.join(tables), logger='current')
        self._write_files(result, preds, dets2d)
        return flat

    def _evaluate_3d(self, results: List[dict], infos: dict, classes: Tuple[str, ...]
                     ) -> Tuple[Dict[str, CasePred], dict]:
        """The valid 3D predictions of the processed cases and their figures (the format
        of ``tools/evaluate.py``, plus ``num_invalid_pred``)."""
        preds, num_invalid = self._valid_predictions(results, infos, classes)
        # the scans evaluated: those processed, in the pickle's order
        cases = {d['token']: self._case_gt(d, classes) for d in infos['data']['data_list']
                 if d['token'] in preds}
        bands = self.size_bands or infos_size_bands(infos['data']) or DEFAULT_SIZE_BANDS
        result = evaluate_detections(cases, preds, classes, self.dist_thrs_mm, self.iou_thrs,
                                     self.froc_fp_rates, bands)
        result['num_invalid_pred'] = num_invalid
        return preds, result

    def _valid_predictions(self, results: List[dict], infos: dict,
                           classes: Tuple[str, ...]) -> Tuple[Dict[str, CasePred], int]:
        """``{token: CasePred}`` of the processed cases (boxes ``(P, 7)`` ct mm) without the
        boxes that are non-finite, have a negative size or an unknown label (logged), and
        how many those were (:meth:`process` kept only cases of ``ann_file``)."""
        preds: Dict[str, CasePred] = {}
        num_invalid = 0
        for record in results:
            token = record['token']
            boxes, scores, labels = record['boxes'], record['scores'], record['labels']
            ok = np.isfinite(boxes).all(1) & np.isfinite(scores) & (boxes[:, 3:6] >= 0).all(1) \
                & (labels >= 0) & (labels < len(classes))
            num_invalid += int((~ok).sum())
            preds[token] = CasePred(boxes[ok], scores[ok], labels[ok])
        if num_invalid:
            print_log(f'{num_invalid} predicted boxes with non-finite values, negative sizes '
                      'or unknown labels were dropped', logger='current', level=30)
        return preds, num_invalid

    def _write_files(self, result: dict, preds: Optional[Dict[str, CasePred]],
                     dets2d: Optional[List[dict]]) -> None:
        """Write the metrics JSON, the 3D predictions (README format; none without the 3D
        evaluation) and the 2D detections (COCO results) where configured (each
        atomically)."""
        if self.out_file:
            write_json(self.out_file, result)
            print_log(f'metrics written to {self.out_file}', logger='current')
        if self.pred_out_file and preds is not None:
            write_json(self.pred_out_file, predictions_to_json(preds))
            print_log(f'3D predictions written to {self.pred_out_file}', logger='current')
        if self.dets2d_out_file and dets2d is not None:
            write_json(self.dets2d_out_file, dets2d)
            print_log(f'2D detections written to {self.dets2d_out_file}', logger='current')

    # -- 2D --------------------------------------------------------------------------------
    def _coco_results(self, results: List[dict], infos: dict,
                      classes: Tuple[str, ...]) -> Optional[List[dict]]:
        """COCO results of the 2D detections (``None`` when the model attached none);
        ``image_id`` is filled when the COCO file is there."""
        if not any('dets2d' in r for r in results):
            return None
        index = {}
        if self.coco_ann_file and osp.isfile(self.coco_ann_file):
            index = image_index(load_coco(self.coco_ann_file))
        file_classes = infos_classes(infos['data'])
        dets = []
        for record in results:
            d = record.get('dets2d')
            if d is None:
                continue
            view_names = list(infos['by_token'][record['token']]['images'])
            for box, score, label, view in zip(d['bboxes'], d['scores'], d['labels'],
                                               d['views']):
                view = view if isinstance(view, str) else view_names[view]
                name = classes[label] if 0 <= label < len(classes) else None
                if name not in file_classes or not np.isfinite(box).all():
                    continue
                x1, y1, x2, y2 = (float(v) for v in box)
                det = dict(image_id=index.get((record['token'], view)),
                           category_id=file_classes.index(name) + 1,
                           bbox=[x1, y1, x2 - x1, y2 - y1], score=float(score),
                           token=record['token'], view=view)
                dets.append(det)
        return dets

    def _evaluate_2d(self, dets: List[dict], tokens: set) -> Optional[dict]:
        """COCO evaluation of ``dets`` on the images of the cases ``tokens``."""
        if not self.coco_ann_file or not osp.isfile(self.coco_ann_file):
            if not self._coco_optional:
                raise FileNotFoundError(f'COCO file not found: {self.coco_ann_file}')
            return None
        coco = load_coco(self.coco_ann_file)
        return evaluate_coco_2d(_subset_coco(coco, tokens), dets)


def _subset_coco(coco: dict, tokens) -> dict:
    """The COCO dataset restricted to the images of ``tokens``."""
    images = [img for img in coco['images'] if img.get('token') in tokens]
    ids = {img['id'] for img in images}
    return dict(coco, images=images,
                annotations=[a for a in coco['annotations'] if a['image_id'] in ids])

"""2D detections read from files, in place of the 2D stage's own, for MV2D's training queries.

Cross-fitting (README chest ablations, `crossfit`): the 2D stage detects on the images it
was trained on better than on unseen ones, so a 3D stage trained on its own detections of
the training cases learns from queries that look unlike those of val and test. Detections
of the training cases made by 2D stages that did not train on them (each case detected by
a stage trained on the other folds, ``tools/benchmark_detection.py --cross-fit-2d K``) are
what this class serves instead; the features still come from the model's own 2D stage.
"""
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.structures import InstanceData

from projects.mv2d_xray.core.data_format import check_detection_values
from projects.mv2d_xray.core.geometry import transform_boxes2d
from projects.mv2d_xray.core.io import read_json


class MissingDetectionsError(KeyError):
    """A training case has no entry in the detection files (they were made for another
    split or other folds)."""

    def __str__(self) -> str:     # KeyError quotes its message; this one reads as a line
        return str(self.args[0])


class StoredDetections:
    """Per-view 2D detections of each case, read from COCO-results files.

    The files are ``tools/test.py``'s ``dets2d.json``: a list of ``{"token", "view",
    "bbox": [x, y, w, h], "score", "category_id"}`` with ``bbox`` in px of the
    **original** image and ``category_id`` 1-based in the dataset's classes (the same
    converter's classes as the model's). A case may appear in one file only; a view of a
    listed case without entries has no detections.

    Args:
        files (str | sequence[str]): the detection files (one per fold).
    """

    def __init__(self, files: Union[str, Sequence[str]]) -> None:
        self.files = (files, ) if isinstance(files, str) else tuple(files)
        if not self.files:
            raise ValueError('StoredDetections: no detection file given')
        # token -> view name -> ((K, 4) xyxy px, (K,) scores, (K,) labels)
        self._by_case: Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        for path in self.files:
            self._add_file(path)

    def _add_file(self, path: str) -> None:
        records = read_json(path, '2D detection file')
        if not isinstance(records, list):
            raise ValueError(f'{path}: expected a list of COCO results, got '
                             f'{type(records).__name__}')
        grouped: Dict[str, Dict[str, List[tuple]]] = {}
        for i, rec in enumerate(records):
            where = f'{path}: entry {i}'
            try:
                token, view = str(rec['token']), str(rec['view'])
                label = int(rec['category_id']) - 1
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f'{where} is not a 2D detection with token, view and '
                                 f'category_id ({exc!r})') from exc
            if label < 0:
                raise ValueError(f'{where} has a category_id below 1')
            (x, y, w, h), score = check_detection_values(rec, where)
            grouped.setdefault(token, {}).setdefault(view, []).append(
                (x, y, x + w, y + h, score, label))
        for token, views in grouped.items():
            if token in self._by_case:
                raise ValueError(f'{path}: case {token!r} is also in an earlier detection '
                                 'file: each case belongs to one fold')
            self._by_case[token] = {
                view: (np.array([r[:4] for r in rows], np.float32).reshape(-1, 4),
                       np.array([r[4] for r in rows], np.float32),
                       np.array([r[5] for r in rows], np.int64))
                for view, rows in views.items()}

    def __len__(self) -> int:
        return len(self._by_case)

    def __contains__(self, token: str) -> bool:
        return token in self._by_case

    def for_case(self, meta: dict, device: Union[str, torch.device] = 'cpu'
                 ) -> List[InstanceData]:
        """The detections of one case in its network input, one per view.

        Args:
            meta (dict): the sample's metainfo: ``token``, ``view_names`` (the views in
                input order) and ``img_aug_matrix`` ``(N_views, 4, 4)`` (original img ->
                augmented img px; identity when absent).
            device: where the tensors go.

        Returns:
            list[InstanceData]: per view ``bboxes`` ``(K, 4)`` xyxy px of the input image,
            ``scores`` ``(K,)``, ``labels`` ``(K,)``, by descending score.
        """
        token = str(meta['token'])
        if token not in self._by_case:
            raise MissingDetectionsError(
                f'case {token!r} has no entry in the 2D detection files '
                f'{", ".join(self.files)} (model.train_cfg.detections_file): they were made '
                'for other cases')
        views = self._by_case[token]
        aug = meta.get('img_aug_matrix')
        out = []
        for v, name in enumerate(meta['view_names']):
            boxes, scores, labels = views.get(
                str(name), (np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                            np.zeros(0, np.int64)))
            if aug is not None and len(boxes):
                boxes = transform_boxes2d(np.asarray(aug, np.float64)[v], boxes)
            order = np.argsort(-scores, kind='stable')
            out.append(InstanceData(
                bboxes=torch.as_tensor(np.asarray(boxes, np.float32)[order], device=device),
                scores=torch.as_tensor(scores[order], device=device),
                labels=torch.as_tensor(labels[order], device=device)))
        return out

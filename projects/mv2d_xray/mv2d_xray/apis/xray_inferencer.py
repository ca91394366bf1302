"""Run a trained MV2D model on study folders (images + ``calibration.json``).

:class:`MV2DXrayInferencer` follows mmdet3d 1.4's ``Base3DInferencer``
(``mmdet3d/apis/inferencers/base_3d_inferencer.py``) where it fits: it is built from a
config, a checkpoint and a device, ``__call__`` takes one input or a list, and the work is
split into ``preprocess`` (input -> the model's batch), ``forward`` (-> one
:class:`~mmdet3d.structures.Det3DDataSample` per study) and ``postprocess`` (->
:class:`~projects.mv2d_xray.core.data_format.CasePred`, the prediction format). It does not
subclass it, because:

* mmdet3d's inferencers load the checkpoint with ``torch.load(weights_only=False)``; this
  one loads it the project's safe way (:func:`projects.mv2d_xray.core.checkpoint.load_weights`:
  weights-only with an allow-list unless ``trust_checkpoint``, refused when it does not fit);
* their inputs are files of one camera or a point cloud with mmdet3d's loading transforms;
  a study is N radiographs in several formats with a calibration file, read and checked by
  :mod:`projects.mv2d_xray.core.study` (whose messages are one line);
* their visualiser is mmdet3d's ``Det3DLocalVisualizer``; the pictures here are the
  project's (:func:`~projects.mv2d_xray.mv2d_xray.visualization.case_views.draw_case`,
  drawn by ``tools/infer.py``).

**Same results as ``tools/test.py``.** The config's test pipeline is used as it is, except
its image-loading transform (``LoadXrayMultiViewImages``), whose output is built by the
same function (:func:`~projects.mv2d_xray.mv2d_xray.datasets.transforms.loading.add_views`)
from the study's images, and annotation loading (there is none): so the model's resize
(``XrayResizeCropFlip``, with the matching ``cam2img`` / ``lidar2img`` update) and
the data preprocessor's normalisation are those of testing, and an exported converted
case gives ``tools/test.py``'s boxes and scores.

**Edges.** A study with another number of views than the config's acquisition runs (the
model takes any N) and the inferencer says so once (:attr:`warn`); images whose grey
values do not fit the training convention (``image_intensity`` in the config, else the
converter's 8-bit DRRs, :data:`projects.mv2d_xray.core.study.DRR_INTENSITY`) are refused
with one line naming it; missing, extra or unreadable images and a calibration that does
not fit its images are refused by :func:`load_study` with one line.

Frames and units: boxes are ``[x, y, z, dx, dy, dz, yaw]`` in ``ct`` mm (centre and full
extents); images are ``img`` pixels; the matrices of a returned sample's metainfo are
those after the resize (``lidar2img``) and before it (``ori_lidar2img``, the study's).

Example::

    from projects.mv2d_xray.mv2d_xray.apis import MV2DXrayInferencer
    inferencer = MV2DXrayInferencer('configs/mv2d_xray/mv2d_r18_fpn_1xb1-30e_demo-256.py',
                                    'work_dirs/demo/epoch_30.pth', device='cpu')
    sample, = inferencer('my_study')             # a Det3DDataSample
    pred = inferencer.postprocess(sample)        # CasePred: boxes (P, 7) mm, scores
"""
from __future__ import annotations

import copy
import logging
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from projects.mv2d_xray.core.checkpoint import load_weights
from projects.mv2d_xray.core.data_format import CasePred
from projects.mv2d_xray.core.study import (ImageValues, IntensityConvention, Study, StudyImage,
                                           check_intensity, find_study, read_images)

#: Transforms of the test pipeline that the inferencer replaces: image loading (done from
#: the study) and annotation loading (a study has none).
REPLACED_TRANSFORMS = ('LoadXrayMultiViewImages', 'LoadXrayAnnotations3D')

StudyInput = Union[str, Tuple[Study, Sequence[StudyImage]]]


def _log_warning(message: str) -> None:
    from mmengine.logging import print_log
    print_log(message, logger='current', level=logging.WARNING)


class MV2DXrayInferencer:
    """MV2D on study folders (see the module text).

    Args:
        model (str | mmengine.Config): the config (file or loaded) the model was trained
            with; its ``model``, ``test_dataloader.dataset.pipeline`` and, when present,
            ``image_intensity`` (``dict(low, high, bit_depth, description)``) are used.
        weights (str): the checkpoint (``.pth``).
        device (str): torch device. Defaults to ``'cpu'``.
        scope (str): registry scope. Defaults to ``'mmdet3d'``.
        trust_checkpoint (bool): load the checkpoint with ``weights_only=False`` (can run
            code stored in it). Defaults to False.
        warn (Callable[[str], None], optional): where notes go (a study with another
            number of views than the config's: once per number); defaults to mmengine's
            current logger at WARNING.

    Attributes:
        cfg: the config. model: the network (eval mode, on ``device``).
        train_num_views (int | None): the views of the config's acquisition.
        intensity (IntensityConvention): the grey values the model was trained on.
        classes (tuple[str, ...]): class names (the checkpoint's ``dataset_meta``, else
            the config's ``class_names``, else ``('nodule',)``).
    """

    def __init__(self, model, weights: str, device: str = 'cpu', scope: str = 'mmdet3d',
                 trust_checkpoint: bool = False,
                 warn: Optional[Callable[[str], None]] = None) -> None:
        from mmengine.config import Config
        from mmengine.registry import init_default_scope

        # the plugin (this package's parent) is imported, so its modules are registered
        cfg = Config.fromfile(model) if isinstance(model, str) else copy.deepcopy(model)
        init_default_scope(cfg.get('default_scope', scope))
        self.cfg = cfg
        self.device = torch.device(device)
        self.warn = warn or _log_warning
        self._said = set()
        dataset_cfg = cfg.test_dataloader.dataset
        self.train_num_views = dataset_cfg.get('num_views', cfg.get('num_views'))
        self.intensity = IntensityConvention.from_setting(cfg.get('image_intensity'))
        self.pipeline = self._init_pipeline(dataset_cfg.pipeline)
        self.model, checkpoint = self._init_model(cfg, weights, trust_checkpoint)
        meta = (checkpoint or {}).get('meta') or {}
        classes = (meta.get('dataset_meta') or {}).get('classes') or \
            cfg.get('class_names') or ('nodule',)
        self.classes = tuple(classes)

    # -- set-up -------------------------------------------------------------------------------
    def _init_model(self, cfg, weights: str, trust: bool):
        """The config's model with the checkpoint's weights, in eval mode on the device
        (``Base3DInferencer._init_model`` without its unsafe loading)."""
        from mmdet3d.registry import MODELS
        model = MODELS.build(cfg.model)
        checkpoint = load_weights(model, weights, trust)
        model.cfg = cfg
        return model.to(self.device).eval(), checkpoint

    @staticmethod
    def _init_pipeline(pipeline_cfg):
        """The test pipeline without :data:`REPLACED_TRANSFORMS`."""
        from mmengine.dataset import Compose

        from projects.mv2d_xray.mv2d_xray.datasets.xray_dataset import XrayDataError
        kept = [copy.deepcopy(t) for t in pipeline_cfg if t['type'] not in REPLACED_TRANSFORMS]
        if len(kept) == len(pipeline_cfg):
            raise XrayDataError('the config\'s test pipeline has no LoadXrayMultiViewImages: '
                                'the inferencer reads the study in its place, so it needs '
                                'the test pipeline of an MV2D X-ray config')
        return Compose(kept)

    def _say_once(self, key, message: str) -> None:
        """Pass ``message`` to :attr:`warn` the first time ``key`` comes up."""
        if key not in self._said:
            self._said.add(key)
            self.warn(message)

    # -- reading studies ----------------------------------------------------------------------
    def load_study(self, folder: str,
                   calibration: Optional[str] = None) -> Tuple[Study, List[StudyImage]]:
        """Find, read and check a study folder (nothing of the model runs).

        Args:
            folder (str): the study folder.
            calibration (str, optional): a calibration file instead of the folder's.

        Returns:
            tuple: the :class:`Study` and its images (per view ``(H, W)``, ``img`` px).

        Raises:
            StudyError, CalibrationError: one line naming the file and the setting
                (missing, extra, unreadable images; sizes or pixel spacing that do not
                fit the calibration; grey values that do not fit the training
                convention).
        """
        study = find_study(folder, calibration)
        images = read_images(study)
        self.check_intensity(study, [img.values() for img in images])
        return study, images

    def check_intensity(self, study: Study, values: Sequence[ImageValues]) -> None:
        """Refuse a study whose grey values do not fit :attr:`intensity` (one
        :class:`StudyError` line naming the study, the image and both ranges)."""
        check_intensity(values, self.intensity, study.folder)

    # -- the three steps ---------------------------------------------------------------------
    def preprocess(self, study: Study, images: Sequence[StudyImage]) -> dict:
        """The model's batch of one study, as ``tools/test.py`` makes it from a converted
        case: ``inputs['imgs']`` ``(1, N, 3, H', W')`` normalised and padded, and one
        ``Det3DDataSample`` whose metainfo has the resized views' ``lidar2img`` /
        ``cam2img`` ``(N, 4, 4)`` and the study's (``ori_*``), ``view_names``, ``token``.
        A study with another number of views than the config's acquisition is said once
        (:attr:`warn`).
        """
        from mmdet3d.structures import get_box_type
        from mmengine.dataset import pseudo_collate

        from projects.mv2d_xray.mv2d_xray.datasets.transforms.loading import (add_views,
                                                                           grey_scale)
        if self.train_num_views is not None and study.num_views != self.train_num_views:
            self._say_once(('num_views', study.num_views),
                           f'studies with {study.num_views} views (e.g. {study.token}): the '
                           f'model was trained on {self.train_num_views}; it takes any '
                           'number of views, but was not tested on this one')
        mats = study.acquisition.view_matrices()
        box_type, box_mode = get_box_type('LiDAR')
        results = dict(token=study.token, sample_idx=0,
                       view_names=list(study.acquisition.view_names),
                       img_path=list(study.image_paths), box_type_3d=box_type,
                       box_mode_3d=box_mode, **mats)
        # the training images' scale: 16-bit values onto 0..255 for a 16-bit model (its
        # data were 16-bit PNGs, which the loader scales the same way)
        add_views(results, [grey_scale(img.pixels, self.intensity.bit_depth)
                            for img in images])
        item = self.pipeline(results)
        return self.model.data_preprocessor(pseudo_collate([item]), False)

    def forward(self, data: dict, explain: bool = False):
        """The model's prediction of a :meth:`preprocess` batch: a ``Det3DDataSample``
        with ``pred_instances_3d`` (``bboxes_3d`` ct mm, ``scores_3d``, ``labels_3d``,
        sorted by score) and ``pred_instances`` (2D detections, network-input px), and
        with ``explain`` the ``explanations`` of ``tools/explain.py``."""
        with torch.no_grad():
            return self.model(**data, mode='predict', explain=explain)[0]

    @staticmethod
    def postprocess(sample) -> CasePred:
        """The prediction format of a sample: boxes ``(P, 7)`` ``[x, y, z, dx, dy, dz,
        yaw]`` (gravity centre, ct mm), scores, labels -- as ``tools/test.py`` writes them
        (:func:`~projects.mv2d_xray.mv2d_xray.evaluation.xray_metric.boxes3d_to_numpy`)."""
        from projects.mv2d_xray.mv2d_xray.evaluation.xray_metric import boxes3d_to_numpy
        pred = sample.pred_instances_3d
        if len(pred.scores_3d) == 0:
            return CasePred.empty()
        return CasePred(boxes3d_to_numpy(pred.bboxes_3d),
                        pred.scores_3d.detach().cpu().numpy().astype(np.float64),
                        pred.labels_3d.detach().cpu().numpy())

    def __call__(self, inputs: Union[StudyInput, Sequence[StudyInput]],
                 calibration: Optional[str] = None, explain: bool = False) -> list:
        """Predict one study or several.

        Args:
            inputs: a study folder, a ``(Study, images)`` pair from :meth:`load_study`,
                or a list of them.
            calibration (str, optional): a calibration file for folders without their own.
            explain (bool): attach ``explanations`` (see :meth:`forward`).

        Returns:
            list[Det3DDataSample]: one per study, in order (:meth:`postprocess` gives the
            prediction format).
        """
        if isinstance(inputs, (str, tuple)):
            inputs = [inputs]
        samples = []
        for item in inputs:
            study, images = self.load_study(item, calibration) if isinstance(item, str) \
                else item
            samples.append(self.forward(self.preprocess(study, images), explain))
        return samples

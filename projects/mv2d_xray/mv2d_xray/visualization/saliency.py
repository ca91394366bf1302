"""Gradient-free saliency maps (CAMs) of the 2D stage, one view at a time.

Two class-activation maps adapted to detection, computed on the 2D detector of an
:class:`~projects.mv2d_xray.mv2d_xray.models.mv2d.MV2DXray` (its ``base_detector``, an
mmdet two-stage detector) or on that detector itself:

* :func:`eigen_cam` -- EigenCAM (Muhammad & Yeasin, IJCNN 2020): the activations of one FPN
  level ``(C, h, w)`` projected on their first principal component, ReLU, upsampled to the
  input, normalised to [0, 1]. Class-agnostic: it shows what the level responds to most.
* :func:`score_cam` -- Score-CAM (Wang et al., CVPR-W 2020) driven by a detection's score:
  the view is masked by each of K channels' upsampled activations, the 2D stage is re-run
  on every masked view, and each channel is weighted by the score of the re-run's
  detection of the same class that best overlaps the chosen box (minus that score on a
  blank view). It explains one detection.

**FPN level.** The level of a detection is the one its RoI features come from: the rule
of mmdet's ``SingleRoIExtractor.map_roi_levels`` (level ``floor(log2(sqrt(w h) /
finest_scale))`` clamped to the extractor's levels), called on the model's own RoI
extractor (:func:`roi_level`). With mmdet's ``finest_scale = 56`` every box with
``sqrt(w h) < 112`` px -- every lung nodule at this project's resolutions -- maps to the
finest level (P2, stride 4). Without a box, :func:`eigen_cam` uses the finest level.

**Frames and units.** ``img`` is one view's network input ``(1, 3, H, W)``, already
normalised (and padded) by the model's ``data_preprocessor``; boxes are
``[x1, y1, x2, y2]`` in px of that input (pixel ``(r, c)`` covers ``[c, c + 1) x [r, r +
1)``); maps are ``(H, W)`` float32 in [0, 1] on that same grid (crop ``[:h, :w]`` to the
unpadded ``img_shape``). A map that is flat before normalisation (e.g. all channels
weighted 0) comes back as all zeros: it has no peak (see
:mod:`projects.mv2d_xray.mv2d_xray.evaluation.pointing_game`).

No gradients are needed: everything runs under ``torch.no_grad()`` on the device of
``img`` (no ``.cuda()``), with the 2D detector temporarily in eval mode (BN statistics;
its previous mode is restored).

**Why not ``grad-cam``.** The maintained library ``grad-cam`` (PyPI, module
``pytorch_grad_cam``) cannot be used here: its ``requirements.txt`` requires
``torchvision>=0.13`` and ``pytorch_grad_cam/__init__.py`` imports ``sess.py``, which
imports torchvision; PyPI's torchvision is a CUDA build that fails on this CPU torch, and
installing it would replace torch. So the small part needed is written here: the
first-principal-component projection of its ``get_2d_projection`` (EigenCAM) and the
masking loop of its ``ScoreCAM``, with a detection score as the target.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_overlaps
from mmengine.structures import InstanceData
from torch import Tensor, nn

#: Detection settings of the re-runs of :func:`score_cam` (R-CNN ``test_cfg``): no score
#: threshold, so a weakened detection still has a (small) score instead of vanishing.
SCORE_CAM_DET_CFG = dict(score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5),
                         max_per_img=100)


# -- the model ----------------------------------------------------------------------------
def detector_2d(model: nn.Module) -> nn.Module:
    """The 2D detector: ``model.base_detector`` of an ``MV2DXray``, else ``model`` itself
    (anything with ``extract_feat`` and ``predict_by_feat``)."""
    return getattr(model, 'base_detector', model)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block, its previous mode restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _roi_extractor(detector: nn.Module) -> nn.Module:
    """The R-CNN's RoI extractor (the first stage's for a cascade)."""
    extractor = detector.roi_head.bbox_roi_extractor
    return extractor[0] if isinstance(extractor, nn.ModuleList) else extractor


def roi_level(model: nn.Module, box_xyxy: Optional[Sequence[float]]) -> Tuple[int, int]:
    """``(level, stride)`` of the FPN level the RoI features of ``box_xyxy`` (img px) come
    from, by the model's own ``SingleRoIExtractor.map_roi_levels``; the finest level
    without a box. ``stride``: img px per feature pixel."""
    extractor = _roi_extractor(detector_2d(model))
    strides = list(extractor.featmap_strides)
    if box_xyxy is None:
        return 0, int(strides[0])
    roi = torch.tensor([[0.0, *[float(v) for v in box_xyxy]]])
    level = int(extractor.map_roi_levels(roi, len(strides))[0])
    return level, int(strides[level])


def _check_view(img: Tensor) -> Tensor:
    if img.dim() != 4 or img.shape[:2] != (1, 3):
        raise ValueError(f'expected one view (1, 3, H, W), got {tuple(img.shape)}')
    return img


def _view_samples(num: int, height: int, width: int) -> List[DetDataSample]:
    """mmdet samples of ``num`` views of the input's size (no rescaling)."""
    meta = dict(img_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1.0, 1.0))
    return [DetDataSample(metainfo=meta) for _ in range(num)]


def _per_view_batches(detector: nn.Module, imgs: Tensor, batch_size: int,
                      step: Callable[[Tuple[Tensor], List[DetDataSample]], list]) -> list:
    """``step(feats, samples)`` on batches of ``batch_size`` views of ``imgs`` ``(N, 3, H,
    W)``, the detector in eval mode; the per-view results in order."""
    out: list = []
    with _eval_mode(detector):
        for start in range(0, len(imgs), batch_size):
            batch = imgs[start:start + batch_size]
            out.extend(step(detector.extract_feat(batch),
                            _view_samples(len(batch), *batch.shape[-2:])))
    return out


def _detection_cfg(model: nn.Module, det_cfg: Optional[dict]) -> dict:
    """``det_cfg``, or by default the ``MV2DXray``'s ``test_cfg['detection_proposal']``,
    else the detector's ``test_cfg.rcnn``, else :data:`SCORE_CAM_DET_CFG`."""
    if det_cfg is not None:
        return det_cfg
    return (dict(getattr(model, 'test_cfg', None) or {}).get('detection_proposal')
            or dict(getattr(detector_2d(model), 'test_cfg', None) or {}).get('rcnn')
            or SCORE_CAM_DET_CFG)


@torch.no_grad()
def detect_views(model: nn.Module, imgs: Tensor, det_cfg: Optional[dict] = None,
                 batch_size: int = 8) -> List[InstanceData]:
    """The 2D stage's detections of every view.

    Args:
        model: ``MV2DXray`` or its ``base_detector``.
        imgs: ``(N, 3, H, W)`` preprocessed views.
        det_cfg: R-CNN test settings (``score_thr``, ``nms``, ``max_per_img``); default
            the ``MV2DXray``'s ``test_cfg['detection_proposal']`` (the detections that
            become 3D queries), else the detector's ``test_cfg.rcnn``, else
            :data:`SCORE_CAM_DET_CFG`.
        batch_size: views per forward pass.

    Returns:
        list[InstanceData]: per view ``bboxes`` ``(K, 4)`` img px, ``scores`` ``(K,)``,
        ``labels`` ``(K,)``.
    """
    detector = detector_2d(model)
    det_cfg = _detection_cfg(model, det_cfg)
    return _per_view_batches(
        detector, imgs, batch_size,
        lambda feats, samples: detector.predict_by_feat(feats, samples, det_cfg))


@torch.no_grad()
def propose_and_detect_views(model: nn.Module, imgs: Tensor, det_cfg: Optional[dict] = None,
                             batch_size: int = 8
                             ) -> Tuple[List[InstanceData], List[InstanceData]]:
    """The RPN's test-time proposals and the 2D stage's detections of every view, from one
    pass of the backbone and the RPN head per view.

    Args:
        model: ``MV2DXray`` or its ``base_detector``.
        imgs: ``(N, 3, H, W)`` preprocessed views.
        det_cfg: R-CNN test settings of the detections (default as :func:`detect_views`).
        batch_size: views per forward pass.

    Returns:
        tuple: per view the proposals (the detector's ``test_cfg.rpn``: its ``nms_pre``,
        NMS and ``max_per_img``; ``bboxes`` ``(K, 4)`` img px and ``scores`` ``(K,)``,
        ranked by decreasing objectness) and the detections (as :func:`detect_views`).
    """
    detector = detector_2d(model)
    det_cfg = _detection_cfg(model, det_cfg)

    def step(feats, samples):
        proposals = detector.propose_by_feat(feats, samples)
        dets = detector.detect_from_proposals(feats, samples, proposals, det_cfg)
        return list(zip(proposals, dets))

    pairs = _per_view_batches(detector, imgs, batch_size, step)
    return [p for p, _ in pairs], [d for _, d in pairs]


@torch.no_grad()
def view_features(model: nn.Module, img: Tensor, level: int) -> Tensor:
    """``(C, h, w)`` activations of FPN level ``level`` for one view ``(1, 3, H, W)``."""
    detector = detector_2d(model)
    with _eval_mode(detector):
        return detector.extract_feat(_check_view(img))[level][0]


# -- map steps (pure functions) -----------------------------------------------------------
def normalise_map(saliency: Tensor) -> Tensor:
    """Min-max normalised to [0, 1] (same shape, float32); a flat map gives zeros."""
    saliency = saliency.float()
    low, high = saliency.min(), saliency.max()
    if not bool(high > low):
        return torch.zeros_like(saliency)
    return (saliency - low) / (high - low)


def upsample_map(saliency: Tensor, size: Tuple[int, int]) -> Tensor:
    """``(..., h, w)`` feature-grid maps -> ``(..., H, W)`` input grid, bilinear with
    ``align_corners=False`` (feature pixel ``i`` of stride ``s`` centred on img px ``(i +
    0.5) s``)."""
    shape = saliency.shape[:-2]
    flat = saliency.float().reshape(-1, 1, *saliency.shape[-2:])
    up = F.interpolate(flat, size=tuple(size), mode='bilinear', align_corners=False)
    return up.reshape(*shape, *size)


def first_component_projection(feat: Tensor) -> Tensor:
    """EigenCAM's step: activations projected on their first principal component.

    The ``(h w, C)`` matrix of the activations (one row per feature pixel) is centred
    (channel means removed); the centred rows are projected on its first right-singular
    vector -- computed in float64 as the top eigenvector of the ``(C, C)`` Gram matrix
    ``A^T A``, the same vector as the SVD's but 7x faster on P2 of a 1024 px view (0.35 s
    instead of 2.4 s, 256 channels, one CPU thread). Its sign is arbitrary, so it is fixed
    to make the map correlate positively with the per-pixel activation norm
    ``||feat[:, y, x]||`` (kept when the correlation is 0).

    Args:
        feat: ``(C, h, w)`` activations.

    Returns:
        ``(h, w)`` float32 projection (signed; no ReLU, no normalisation).
    """
    channels, height, width = feat.shape
    rows = feat.reshape(channels, -1).T.double()                     # (h w, C)
    centred = rows - rows.mean(dim=0, keepdim=True)
    _, eigenvectors = torch.linalg.eigh(centred.T @ centred)         # ascending
    projection = centred @ eigenvectors[:, -1]                       # (h w,)
    norm = rows.norm(dim=1)
    correlation = ((projection - projection.mean()) * (norm - norm.mean())).sum()
    if correlation < 0:
        projection = -projection
    return projection.reshape(height, width).float()


def select_channels(feat: Tensor, box_xyxy: Sequence[float], stride: float, k: int,
                    margin: int = 1) -> Tensor:
    """The ``k`` channels with the highest mean activation in and around a box.

    Args:
        feat: ``(C, h, w)`` activations of the box's level.
        box_xyxy: ``[x1, y1, x2, y2]`` img px.
        stride: img px per feature pixel.
        k: channels wanted (all ``C`` if ``k >= C``).
        margin: feature pixels added on every side of the box's footprint.

    Returns:
        ``(min(k, C),)`` long channel indices, highest mean first.
    """
    _, height, width = feat.shape
    x1, y1, x2, y2 = [float(v) / stride for v in box_xyxy]
    c1 = min(max(math.floor(x1) - margin, 0), width - 1)
    r1 = min(max(math.floor(y1) - margin, 0), height - 1)
    c2 = max(min(math.ceil(x2) + margin, width), c1 + 1)
    r2 = max(min(math.ceil(y2) + margin, height), r1 + 1)
    means = feat[:, r1:r2, c1:c2].float().mean(dim=(1, 2))
    return torch.argsort(means, descending=True, stable=True)[:k]


def channel_masks(acts: Tensor, size: Tuple[int, int]) -> Tensor:
    """Score-CAM's masks: ``(K, h, w)`` activations upsampled to ``(K, H, W)`` and each
    min-max normalised to [0, 1] (a flat channel masks everything: zeros)."""
    up = upsample_map(acts, size)
    return torch.stack([normalise_map(m) for m in up]) if len(up) else up


def best_overlap_score(det: InstanceData, box_xyxy: Sequence[float], label: int,
                       min_iou: float = 0.0) -> float:
    """Score of the detection of class ``label`` that overlaps ``box_xyxy`` most (IoU >
    ``min_iou``; ties: the higher score), 0 if there is none.

    Args:
        det: ``bboxes`` ``(K, 4)`` img px, ``scores`` ``(K,)``, ``labels`` ``(K,)``.
        box_xyxy: the chosen box, img px.
        label: its class.
        min_iou: overlaps at or below this do not count.
    """
    keep = det.labels == int(label)
    if not bool(keep.any()):
        return 0.0
    boxes, scores = det.bboxes[keep].float(), det.scores[keep].float()
    iou = bbox_overlaps(boxes.new_tensor([list(map(float, box_xyxy))]), boxes)[0]
    valid = iou > min_iou
    if not bool(valid.any()):
        return 0.0
    best = iou[valid].max()
    return float(scores[valid][iou[valid] == best].max())


def score_weights(scores: Tensor, baseline: float = 0.0, mode: str = 'relu') -> Tensor:
    """Score-CAM's channel weights from the masked views' detection scores.

    Args:
        scores: ``(K,)`` score of the explained detection on each masked view.
        baseline: its score on a blank view (Score-CAM's "increase of confidence" is
            ``scores - baseline``).
        mode: ``'relu'``: ``max(scores - baseline, 0)`` normalised to sum 1 (all zeros
            when no mask raises the score); ``'softmax'``: ``softmax(scores -
            baseline)`` (the paper's; the baseline cancels).

    Returns:
        ``(K,)`` float32 weights >= 0.
    """
    gain = scores.float() - float(baseline)
    if mode == 'softmax':
        return torch.softmax(gain, dim=0)
    if mode != 'relu':
        raise ValueError(f"mode must be 'relu' or 'softmax', got {mode!r}")
    gain = gain.clamp(min=0)
    total = gain.sum()
    return gain / total if bool(total > 0) else gain


def weighted_activation_map(acts: Tensor, weights: Tensor) -> Tensor:
    """``ReLU(sum_k weights[k] acts[k])``: ``(K, h, w)`` and ``(K,)`` -> ``(h, w)``."""
    return torch.einsum('k,khw->hw', weights.float(), acts.float()).clamp(min=0)


# -- the CAMs -----------------------------------------------------------------------------
@torch.no_grad()
def eigen_cam(model: nn.Module, img: Tensor, box_xyxy: Optional[Sequence[float]] = None,
              level: Optional[int] = None) -> Tensor:
    """EigenCAM of one view on the FPN level of a detection.

    Args:
        model: ``MV2DXray`` or its ``base_detector``.
        img: ``(1, 3, H, W)`` preprocessed view.
        box_xyxy: a detection (img px) whose RoI level is used (:func:`roi_level`);
            None: the finest level.
        level: an explicit FPN level (overrides ``box_xyxy``).

    Returns:
        ``(H, W)`` float32 map in [0, 1] on the device of ``img``.
    """
    if level is None:
        level, _ = roi_level(model, box_xyxy)
    feat = view_features(model, img, level)
    projection = first_component_projection(feat).clamp(min=0)
    return normalise_map(upsample_map(projection, img.shape[-2:]))


@torch.no_grad()
def score_cam_scores(model: nn.Module, img: Tensor, masks: Tensor,
                     box_xyxy: Sequence[float], label: int,
                     det_cfg: Optional[dict] = None, batch_size: int = 8,
                     min_iou: float = 0.0) -> Tensor:
    """``(K,)`` score of the detection best overlapping ``box_xyxy`` (class ``label``) on
    the view masked by each of ``masks`` ``(K, H, W)`` (``img * mask``: masked pixels go
    to the data preprocessor's mean, 0)."""
    masked = img * masks[:, None].to(img)                            # (K, 3, H, W)
    dets = detect_views(model, masked, det_cfg or SCORE_CAM_DET_CFG, batch_size)
    return torch.tensor([best_overlap_score(d, box_xyxy, label, min_iou) for d in dets],
                        dtype=torch.float32)


@torch.no_grad()
def score_cam(model: nn.Module, img: Tensor, box_xyxy: Sequence[float], label: int,
              num_channels: int = 32, channels: str = 'top', seed: int = 0,
              weighting: str = 'relu', level: Optional[int] = None,
              det_cfg: Optional[dict] = None, batch_size: int = 8,
              min_iou: float = 0.0) -> Tensor:
    """Box-score-driven Score-CAM of one detection in one view.

    Steps: the activations ``(C, h, w)`` of the detection's FPN level
    (:func:`roi_level`); K channels (:func:`select_channels`, or K random ones); each
    channel upsampled and normalised into a mask (:func:`channel_masks`); the 2D stage
    re-run on every masked view and on a blank one (all pixels at the mean) with
    ``det_cfg``; each channel's score = the score of the re-run's detection of class
    ``label`` overlapping ``box_xyxy`` most (:func:`best_overlap_score`); weights
    (:func:`score_weights`); map = ``ReLU(sum_k w_k act_k)`` (:func:`weighted_activation_map`)
    upsampled and normalised. K + 1 forward passes of the 2D stage.

    Args:
        model: ``MV2DXray`` or its ``base_detector``.
        img: ``(1, 3, H, W)`` preprocessed view.
        box_xyxy: the explained detection, img px.
        label: its class (0-based).
        num_channels: K.
        channels: ``'top'`` (highest mean activation in and around the box) or
            ``'random'`` (K random channels drawn with ``seed``).
        seed: the random channels' seed.
        weighting: ``'relu'`` or ``'softmax'`` (see :func:`score_weights`).
        level: an explicit FPN level (default: the box's).
        det_cfg: R-CNN test settings of the re-runs (default :data:`SCORE_CAM_DET_CFG`).
        batch_size: masked views per forward pass.
        min_iou: see :func:`best_overlap_score`.

    Returns:
        ``(H, W)`` float32 map in [0, 1] on the device of ``img`` (zeros when no mask
        raises the score above the blank view's, with ``'relu'``).
    """
    _check_view(img)
    box_level, stride = roi_level(model, box_xyxy)
    if level is None:
        level = box_level
    else:
        stride = int(_roi_extractor(detector_2d(model)).featmap_strides[level])
    feat = view_features(model, img, level)
    if channels == 'top':
        index = select_channels(feat, box_xyxy, stride, num_channels)
    elif channels == 'random':
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(feat.shape[0], generator=generator)[:num_channels]
    else:
        raise ValueError(f"channels must be 'top' or 'random', got {channels!r}")
    acts = feat[index.to(feat.device)]                               # (K, h, w)
    masks = channel_masks(acts, img.shape[-2:])
    blank = torch.zeros_like(masks[:1])
    scores = score_cam_scores(model, img, torch.cat([blank, masks]), box_xyxy, label,
                              det_cfg, batch_size, min_iou)
    weights = score_weights(scores[1:], float(scores[0]), weighting)
    cam = weighted_activation_map(acts, weights.to(acts.device))
    return normalise_map(upsample_map(cam, img.shape[-2:]))

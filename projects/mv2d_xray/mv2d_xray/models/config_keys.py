"""Check the keys of the ``train_cfg`` / ``test_cfg`` dicts our modules read, so that a
misspelled key (``max_per_imgg``) stops the build instead of being ignored."""
import difflib
from typing import Iterable, Mapping, Optional

#: ``detection_proposal``: the R-CNN test settings of the detections that become queries
#: (mmdet's ``predict_by_feat``) and ``min_bbox_size`` (:meth:`MV2DXray.detect_2d`).
DETECTION_PROPOSAL_KEYS = ('score_thr', 'nms', 'max_per_img', 'min_bbox_size')
#: ``model.test_cfg.detection_proposal``: the keys above and ``flip_directions`` (the views
#: also detected flipped, :meth:`MV2DXray.detect_2d_flipped`; at test time only).
TEST_DETECTION_PROPOSAL_KEYS = DETECTION_PROPOSAL_KEYS + ('flip_directions', )
#: the values of ``flip_directions``: mmdet's flip directions (``bbox_flip``).
FLIP_DIRECTIONS = ('horizontal', 'vertical', 'diagonal')
#: ``model.train_cfg`` of :class:`MV2DXray` (``detections_file``: :class:`StoredDetections`).
MV2D_TRAIN_CFG_KEYS = ('detection_proposal', 'complement_2d_gt', 'rcnn', 'detections_file')
#: ``model.test_cfg`` of :class:`MV2DXray`.
MV2D_TEST_CFG_KEYS = ('detection_proposal', 'rcnn')
#: ``train_cfg.rcnn``: the RoI head's ``stage_loss_weights`` and ``ray_denoising``, the
#: cross-attention head's ``assigner``, ``extra_pos_radius``, ``max_match_dist_mm`` and
#: ``match_dist_from``.
RCNN_TRAIN_CFG_KEYS = ('assigner', 'stage_loss_weights', 'extra_pos_radius',
                       'max_match_dist_mm', 'match_dist_from', 'ray_denoising')
#: ``train_cfg.rcnn.ray_denoising``: :func:`.ray_denoising.sample_ray_points` and the weight
#: of :meth:`MV2DXrayCrossAttentionHead.denoising_loss`.
RAY_DENOISING_KEYS = ('num_rays', 'num_negatives', 'offset_mm', 'pos_noise_mm',
                      'loss_weight')
#: ``test_cfg.rcnn``: :meth:`MV2DXrayRoIHead.limit_refinement`,
#: :meth:`MV2DXrayRoIHead.refine_on_detections`, :meth:`MV2DXrayRoIHead.search_rays`,
#: :meth:`MV2DXrayRoIHead.rescore`, :meth:`MV2DXrayRoIHead.rescore_by_objectness` and
#: :meth:`MV2DXrayRoIHead.select`.
RCNN_TEST_CFG_KEYS = ('refine_radius_mm', 'refine_to_detections', 'view_support',
                      'objectness_support', 'score_thr', 'nms', 'max_per_scene')
#: ``test_cfg.rcnn.refine_to_detections``: :meth:`MV2DXrayRoIHead.refine_on_detections`.
REFINE_TO_DETECTIONS_KEYS = ('gate_px', 'gate_frac', 'min_views', 'max_move_mm')
#: ``test_cfg.rcnn.view_support``: :meth:`MV2DXrayRoIHead.rescore`.
VIEW_SUPPORT_KEYS = ('weight', 'margin_px', 'gate_px', 'gate_frac', 'per_class', 'class_support')
#: ``test_cfg.rcnn.objectness_support``: :meth:`MV2DXrayRoIHead.rescore_by_objectness` and
#: :meth:`MV2DXrayRoIHead.search_rays`.
OBJECTNESS_SUPPORT_KEYS = ('weight', 'levels', 'search_depths')
#: ``model.roi_head.support_embedding``: :meth:`MV2DXrayRoIHead.support_features`
#: (``logit_skip``: ``MV2DXrayRoIHead.support_logit``).
SUPPORT_EMBEDDING_KEYS = ('gate_px', 'gate_frac', 'top_views', 'logit_skip')
#: ``test_cfg.rcnn.nms``: ``type`` and :func:`centre_distance_nms`'s arguments.
CENTRE_NMS_KEYS = ('type', 'dist_thr_mm', 'inside_box', 'merge', 'class_agnostic',
                   'cross_class_ratio')


class XrayConfigError(ValueError):
    """A config names a key that the module it configures does not read."""


def unknown_key_message(key: str, valid: Iterable[str], where: str) -> str:
    """``"<where> has no key 'x' (did you mean 'y'?; valid keys: ...)"``."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ''
    return f"{where} has no key '{key}' ({hint}valid keys: {', '.join(valid)})"


def check_keys(cfg: Optional[Mapping], valid: Iterable[str], where: str) -> None:
    """Raise :class:`XrayConfigError` for the first key of ``cfg`` not in ``valid``
    (``None`` passes).

    Args:
        cfg (Mapping, optional): the config dict.
        valid (Iterable[str]): the keys the code reads.
        where (str): the dict's place in the config, e.g. ``model.test_cfg.rcnn``.
    """
    if cfg is None:
        return
    if not isinstance(cfg, Mapping):
        raise XrayConfigError(f'{where} must be a dict, got {type(cfg).__name__}')
    valid = tuple(valid)
    for key in cfg:
        if key not in valid:
            raise XrayConfigError(unknown_key_message(key, valid, where))

"""Ray denoising (after RayDN, Liu et al. 2024): training queries placed along the rays
through the findings.

A finding detected in one view is a line of candidate positions in 3D: every point of
the ray from that view's source through the detection projects onto the finding in that
view and off it (or onto something else) in the others. The queries of MV2D sit where
the 2D stage's detections triangulate, so the decoder is trained on few such
wrong-depth positions, and at test time a wrong pairing of detections yields exactly
one. Ray denoising adds, per training scene, *denoising queries* whose targets are
known without any matching: for each finding and each of ``num_rays`` views that see
it, one query at the finding's centre (jittered by ``pos_noise_mm``, a positive of
that finding) and ``num_negatives`` queries on the same view's ray, in front of or
behind the finding by its radius plus ``offset_mm`` (background). Only the other views
can tell them apart, so the decoder has to read them.

This module samples the points (:func:`sample_ray_points`); the RoI head gives them
their keys (a box at their projection in every view, :meth:`MV2DXrayRoIHead.ray_denoising_loss`)
and the head scores them (:meth:`MV2DXrayCrossAttentionHead.denoising_loss`). At test
time nothing changes. Ours, not MV2D's.
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from projects.mv2d_xray.core.geometry import project_points, seen_in_image, unproject_points
from projects.mv2d_xray.mv2d_xray.models.config_keys import RAY_DENOISING_KEYS, check_keys

#: ``model.train_cfg.rcnn.ray_denoising``'s defaults (see :func:`sample_ray_points`).
RAY_DENOISING_DEFAULTS = dict(num_rays=2, num_negatives=3, offset_mm=(10.0, 60.0),
                              pos_noise_mm=2.0, loss_weight=1.0)


class RayPoints(NamedTuple):
    """The denoising queries of one scene (:func:`sample_ray_points`), ``K`` of them."""
    #: ``(K, 3)`` ct mm.
    points: Tensor
    #: ``(K,)`` the finding each point belongs to (an index into the scene's GT boxes).
    gt_index: Tensor
    #: ``(K,)`` True for the point at the finding's centre, False along its ray.
    positive: Tensor
    #: ``(K,)`` the view whose ray the point lies on.
    source_view: Tensor


def check_ray_denoising(cfg: Optional[dict]) -> Optional[dict]:
    """``ray_denoising`` with its defaults filled in (None stays None); an unknown key or
    a value out of range is a ``ValueError`` naming the setting."""
    if cfg is None:
        return None
    where = 'model.train_cfg.rcnn.ray_denoising'
    check_keys(cfg, RAY_DENOISING_KEYS, where)
    cfg = dict(RAY_DENOISING_DEFAULTS, **cfg)
    for key, least in (('num_rays', 1), ('num_negatives', 0)):
        if int(cfg[key]) != cfg[key] or cfg[key] < least:
            raise ValueError(f'{where}.{key} must be an integer >= {least}, got '
                             f'{cfg[key]!r}')
        cfg[key] = int(cfg[key])
    low, high = (float(v) for v in cfg['offset_mm'])
    if not 0 <= low <= high:
        raise ValueError(f'{where}.offset_mm must be (low, high) with 0 <= low <= high, '
                         f"got {cfg['offset_mm']!r}")
    if not float(cfg['pos_noise_mm']) >= 0 or not float(cfg['loss_weight']) > 0:
        raise ValueError(f'{where}: pos_noise_mm must be >= 0 and loss_weight > 0, got '
                         f"{cfg['pos_noise_mm']!r} and {cfg['loss_weight']!r}")
    cfg['offset_mm'] = (low, high)
    return cfg


def sample_ray_points(gt_boxes: Tensor, lidar2img: Tensor, img_hw: Tuple[int, int],
                      num_rays: int, num_negatives: int, offset_mm: Sequence[float],
                      pos_noise_mm: float,
                      generator: Optional[torch.Generator] = None) -> RayPoints:
    """The denoising points of one scene.

    For each finding, ``num_rays`` distinct views among those that see its centre (all
    of them if fewer), drawn at random; per view one positive point, the centre plus
    isotropic Gaussian noise of ``pos_noise_mm`` per axis, and ``num_negatives`` points
    on the ray from the view's source through the centre, at cam depth ``d +- (r + o)``
    (``d`` the centre's depth, ``r`` half the finding's largest extent, ``o`` uniform in
    ``offset_mm``, the sign drawn at random): each projects onto the finding's centre in
    that view, and lies at least ``r + offset_mm[0]`` mm (along the depth axis; more along
    the ray) from it.

    Args:
        gt_boxes (Tensor): ``(M, 7)`` the scene's findings ``[x, y, z, dx, dy, dz,
            yaw]``, gravity centres, ct mm.
        lidar2img (Tensor): ``(V, 4, 4)`` ct -> img of the scene's views.
        img_hw (tuple[int, int]): ``(H, W)`` px.
        num_rays (int): Views per finding whose ray is sampled.
        num_negatives (int): Points per ray besides the positive.
        offset_mm (Sequence[float]): ``(low, high)`` of ``o``, mm.
        pos_noise_mm (float): Standard deviation of the positive's jitter, mm.
        generator (torch.Generator, optional): Random source (default: torch's global
            one, seeded by the run).

    Returns:
        RayPoints: ``K = sum over findings of rays x (1 + num_negatives)`` points in
        ``gt_boxes``' dtype; a finding no view sees gets none.
    """
    device = gt_boxes.device
    mats = lidar2img.double().to(device)
    centres = gt_boxes[:, :3].double()
    uv, depth = project_points(mats[:, None], centres[None, :, None])     # (V, M, 1, 2)
    uv, depth = uv[:, :, 0], depth[:, :, 0]                                # (V, M, 2)
    seen = seen_in_image(uv, depth, img_hw[0], img_hw[1])                  # (V, M)
    radius = gt_boxes[:, 3:6].double().amax(dim=1) / 2
    points, gt_index, positive, source = [], [], [], []
    for gt in range(len(gt_boxes)):
        views = seen[:, gt].nonzero(as_tuple=True)[0]
        if len(views) == 0:
            continue
        order = torch.randperm(len(views), generator=generator).to(device)
        for view in views[order[:num_rays]].tolist():
            noise = torch.randn(3, generator=generator, dtype=torch.float64).to(device)
            points.append((centres[gt] + noise * pos_noise_mm)[None])
            if num_negatives:
                offset = torch.empty(num_negatives, dtype=torch.float64).uniform_(
                    float(offset_mm[0]), float(offset_mm[1]), generator=generator)
                sign = torch.randint(0, 2, (num_negatives, ), generator=generator) * 2 - 1
                shift = (sign * (offset + float(radius[gt]))).to(device)
                points.append(unproject_points(
                    mats[view], uv[view, gt][None].expand(num_negatives, 2),
                    depth[view, gt] + shift))
            count = 1 + num_negatives
            gt_index.append(torch.full((count, ), gt, dtype=torch.long))
            positive.append(torch.arange(count) == 0)
            source.append(torch.full((count, ), view, dtype=torch.long))
    if not points:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return RayPoints(gt_boxes.new_zeros((0, 3)), empty, empty.bool(), empty)
    return RayPoints(torch.cat(points).to(gt_boxes.dtype),
                     torch.cat(gt_index).to(device), torch.cat(positive).to(device),
                     torch.cat(source).to(device))

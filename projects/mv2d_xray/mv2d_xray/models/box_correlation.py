"""Relevant-box selection across views (MV2D's sparse "box correlation").

Each query (one 2D detection) attends only to the RoI features of the detections that
can be the same object in the other views. For a detection in view ``a`` and a depth
interval ``[d_k, d_k+1]`` (camera depths in mm inside the patient), the set of ct points
it can be is a convex slab of its viewing frustum; its 8 corners project exactly to the
slab's image in view ``b`` (a projective map keeps convex hulls at positive depth), so
the axis-aligned box of those 8 projections bounds the slab's footprint. A detection
``j`` of view ``b`` scores ``max_k IoU(footprint_k, box_j)``: high when some depth puts
the frustum onto ``j``, and size-matched, unlike MV2D's IoU with the box of the whole
epipolar band (which favours large boxes). The points are mapped view to view with
``lidar2img_b @ inv(lidar2img_a)``, so mirror-image DRR geometry needs no special case.

Modes (``correlation_mode``):

* ``'topk_matched:k[:iou_thr[:ratio]]'`` -- in every other view keep the ``k``
  best-scoring detections with score > 0 and (score > ``ratio`` x the view's best or
  score > ``iou_thr``), as MV2D (``'topk_matched:1'`` is its LIDC/nuScenes setting);
* ``'all_matched'`` -- keep every detection whose score is > 0 (it overlaps the
  epipolar band within the depth range).
"""
from typing import Sequence, Tuple

import torch
from mmdet3d.registry import TASK_UTILS
from mmdet.structures.bbox import bbox_overlaps
from torch import Tensor

from projects.mv2d_xray.core.geometry import project_points, unproject_points
from projects.mv2d_xray.mv2d_xray.models.positional_encoding import depth_bins


@TASK_UTILS.register_module()
class MV2DXrayBoxCorrelation:
    """Select, for every detection, its candidate partners in the other views.

    Args:
        correlation_mode (str): See the module docstring. Defaults to
            ``'topk_matched:1'``.
        num_depth (int): Depth samples (``num_depth - 1`` slabs). Defaults to 64.
        depth_range (Sequence[float]): ``(near, far)`` camera depths in mm covering
            the patient (e.g. ``sod_mm -+ body radius``). Defaults to
            ``(100, 500)``.
        lid (bool): Linear-increasing depth spacing instead of uniform. Defaults to
            False.
        min_depth (float): Projections closer than this (mm) to a source are
            invalid. Defaults to 1.
    """

    def __init__(self,
                 correlation_mode: str = 'topk_matched:1',
                 num_depth: int = 64,
                 depth_range: Sequence[float] = (100., 500.),
                 lid: bool = False,
                 min_depth: float = 1.0) -> None:
        self.mode, self.topk, self.iou_thr, self.ratio = self._parse_mode(
            correlation_mode)
        if num_depth < 2:
            raise ValueError(f'num_depth must be >= 2, got {num_depth}')
        if not 0 < depth_range[0] < depth_range[1]:
            raise ValueError(f'depth_range must be (near, far) with 0 < near < '
                             f'far (mm), got {depth_range}')
        self.correlation_mode = correlation_mode
        self.num_depth = num_depth
        self.depth_range = tuple(float(d) for d in depth_range)
        self.lid = lid
        self.min_depth = min_depth

    @staticmethod
    def _parse_mode(mode: str) -> Tuple[str, int, float, float]:
        parts = mode.split(':')
        if parts[0] == 'all_matched' and len(parts) == 1:
            return 'all', 0, 0.0, 0.0
        if parts[0] == 'topk_matched' and 2 <= len(parts) <= 4:
            try:
                values = [int(parts[1])] + [float(p) for p in parts[2:]]
            except ValueError:
                values = None
            if values and values[0] >= 1:
                values += [0.0] * (3 - len(values))
                return 'topk', values[0], values[1], values[2]
        raise ValueError(f"correlation_mode must be 'all_matched' or "
                         f"'topk_matched:k[:iou_thr[:ratio]]' with k >= 1, "
                         f'got {mode!r}')

    def slab_corners(self, bboxes: Tensor, view_ids: Tensor,
                     lidar2img: Tensor) -> Tensor:
        """The 4 corners of every detection's box lifted to ct at each sampled depth of
        its own view (:func:`unproject_points`, float64).

        Args:
            bboxes (Tensor): ``(R, 4)`` boxes in px (img frame of their views).
            view_ids (Tensor): ``(R,)`` their views.
            lidar2img (Tensor): ``(V, 4, 4)`` ct -> img of the scene's views.

        Returns:
            Tensor: ``(R, num_depth, 4, 3)`` ct points in mm; slab ``k`` of a
            detection spans its depths ``k`` and ``k + 1``.
        """
        num_rois = len(bboxes)
        lidar2img = lidar2img.double()
        view_ids = view_ids.long()
        x1, y1, x2, y2 = bboxes.double().unbind(-1)
        corners = torch.stack([
            torch.stack([x1, y1], -1), torch.stack([x2, y1], -1),
            torch.stack([x1, y2], -1), torch.stack([x2, y2], -1)
        ], dim=1)                                                # (R, 4, 2)
        depth = depth_bins(self.depth_range, self.num_depth, self.lid,
                           dtype=torch.float64, device=bboxes.device)
        uv = corners[:, None].expand(-1, self.num_depth, -1, -1)  # (R, D, 4, 2)
        corner_depth = depth[None, :, None].expand(num_rois, -1, 4)
        points = unproject_points(
            lidar2img[view_ids], uv.reshape(num_rois, -1, 2),
            corner_depth.reshape(num_rois, -1),
            img2lidar=torch.linalg.inv(lidar2img)[view_ids])
        return points.view(num_rois, self.num_depth, 4, 3)

    def footprints(self, slab_corners: Tensor, lidar2img: Tensor,
                   img_shape: Tuple[int, int]) -> Tensor:
        """Images of every detection's frustum slabs in one view.

        Args:
            slab_corners (Tensor): ``(R, num_depth, 4, 3)`` ct mm, from
                :meth:`slab_corners`.
            lidar2img (Tensor): ``(4, 4)`` ct -> img of the view to project into.
            img_shape (tuple[int, int]): ``(H, W)``; footprints are clipped to it.

        Returns:
            Tensor: ``(R, num_depth - 1, 4)`` float32 boxes ``[x1, y1, x2, y2]`` (px);
            invalid slabs (a corner within ``min_depth`` mm of the view's source or
            behind it, or an empty footprint) are all zeros.
        """
        # a corner at (or behind) the source projects to inf / NaN: masked below
        uv, z = project_points(lidar2img.to(slab_corners), slab_corners)  # (R, D, 4, .)
        # slab k spans depths k and k + 1: 8 corners
        slab_uv = torch.cat([uv[:, :-1], uv[:, 1:]], dim=2)     # (R, D-1, 8, 2)
        slab_ok = torch.cat([z[:, :-1], z[:, 1:]], dim=2).gt(
            self.min_depth).all(-1)
        height, width = img_shape
        low = slab_uv.amin(dim=2)
        high = slab_uv.amax(dim=2)
        low = torch.stack([low[..., 0].clamp(0, width),
                           low[..., 1].clamp(0, height)], -1)
        high = torch.stack([high[..., 0].clamp(0, width),
                            high[..., 1].clamp(0, height)], -1)
        slab_ok &= (high > low).all(-1)
        boxes = torch.cat([low, high], dim=-1)
        return torch.where(slab_ok[..., None], boxes, 0.0).float()

    def scores(self, bboxes: Tensor, view_ids: Tensor, lidar2img: Tensor,
               img_shape: Tuple[int, int]) -> Tensor:
        """``(R, R)`` correspondence scores (0 within a view).

        Args:
            bboxes (Tensor): ``(R, 4)`` boxes in px, one scene.
            view_ids (Tensor): ``(R,)`` views.
            lidar2img (Tensor): ``(V, 4, 4)``.
            img_shape (tuple[int, int]): ``(H, W)``.
        """
        num_rois = len(bboxes)
        scores = bboxes.new_zeros((num_rois, num_rois), dtype=torch.float32)
        corners = self.slab_corners(bboxes, view_ids, lidar2img)
        for view in view_ids.unique().tolist():
            cols = (view_ids == view).nonzero(as_tuple=True)[0]
            prints = self.footprints(corners, lidar2img[view], img_shape)
            iou = bbox_overlaps(prints.flatten(0, 1), bboxes[cols].float())
            iou = iou.view(num_rois, -1, len(cols)).amax(dim=1)
            iou[view_ids == view] = 0
            scores[:, cols] = iou
        return scores

    @torch.no_grad()
    def __call__(self, bboxes: Tensor, view_ids: Tensor, lidar2img: Tensor,
                 img_shape: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """Correlated detections of one scene.

        Args:
            bboxes (Tensor): ``(R, 4)`` detection boxes in px.
            view_ids (Tensor): ``(R,)`` view of each detection.
            lidar2img (Tensor): ``(V, 4, 4)`` ct -> img of the scene's views.
            img_shape (tuple[int, int]): ``(H, W)`` of the unpadded images.

        Returns:
            tuple[Tensor, Tensor]: ``corr`` ``(R, M)`` indices into the scene's
            detections and ``mask`` ``(R, M)`` (True = valid). Column 0 is the
            detection itself; padding entries point at it too.
        """
        num_rois = len(bboxes)
        self_ids = torch.arange(num_rois, device=bboxes.device)
        if num_rois == 0:
            empty = self_ids.new_zeros((0, 1))
            return empty, empty.bool()
        scores = self.scores(bboxes, view_ids, lidar2img, img_shape)
        if self.mode == 'all':
            keep = scores > 0
            cand = self_ids[None].expand(num_rois, -1)
        else:
            ids, keeps = [], []
            for view in view_ids.unique().tolist():
                cols = (view_ids == view).nonzero(as_tuple=True)[0]
                k = min(self.topk, len(cols))
                best, index = scores[:, cols].topk(k, dim=1)
                ids.append(cols[index])
                keeps.append((best > 0) & ((best > self.ratio * best[:, :1])
                                           | (best > self.iou_thr)))
            cand, keep = torch.cat(ids, dim=1), torch.cat(keeps, dim=1)
        corr = torch.cat([self_ids[:, None], cand], dim=1)
        mask = torch.cat([keep.new_ones((num_rois, 1)), keep], dim=1)
        # valid entries first, then trim to the longest row
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True)[1]
        corr, mask = corr.gather(1, order), mask.gather(1, order)
        width = int(mask.sum(1).max())
        corr, mask = corr[:, :width], mask[:, :width]
        corr = torch.where(mask, corr, self_ids[:, None])
        return corr, mask

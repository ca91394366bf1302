"""A learned 3D fusion of the views' features before any decision: a heat map per class on
a voxel grid over the object, read off as 3D boxes.

MV2D lifts 2D *detections* to 3D: a finding that the 2D stage misses in most views has
few or no queries. This head adds the views' evidence first, as a tomosynthesis adds the
views: each view's feature map (the frozen 2D stage's finest FPN level) is sampled at the
projection (``lidar2img``) of every voxel centre of a grid over the object's CT box, the
samples are pooled over the views (mean, max and standard deviation: the pooled volume
does not depend on the views' order or number), a small 3D CNN turns the volume into a
heat map per class, trained as CenterNet's (a Gaussian per finding, mmdet's Gaussian focal
loss), and the heat map's 3D local maxima are the boxes.

On the blades benchmark it finds more of the defects that few views' detections hold
(README, blades ablations, "the views' features added in 3D"); its boxes are combined
with MV2D's by :func:`~projects.mv2d_xray.core.box_fusion.fuse_boxes`. On the chest
benchmark (4 mm voxels) it alone ranks the nodules better than MV2D and than
triangulation of the same 2D detections (README, chest ablations, "the volume fusion
head on the chest").
``tools/volume_fusion.py`` trains it on a trained MV2D's frozen 2D stage and predicts.

Frames and units: ``ct`` mm (x, y, z) for the grid and the boxes; ``img`` px of the
network input for the projections (a feature map of stride ``s`` covers img px
``[j s, (j + 1) s)`` with its cell ``j``).
"""
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from mmdet.models.losses.gaussian_focal_loss import gaussian_focal_loss
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmdet3d.registry import MODELS
from projects.mv2d_xray.core.geometry import project_points

#: Probabilities are clamped to ``[EPS, 1 - EPS]`` before the focal loss (as CenterNet's
#: reference code), so a confident wrong voxel costs at most ``-log(EPS)``.
EPS = 1e-4


def _conv_bn_relu(conv: type, norm: type, in_ch: int, out_ch: int, dilation: int = 1):
    return nn.Sequential(conv(in_ch, out_ch, 3, padding=dilation, dilation=dilation),
                         norm(out_ch), nn.ReLU(inplace=True))


def voxel_grid(ct_min: Sequence[float], ct_max: Sequence[float], voxel_mm: float,
               margin_mm: float) -> Tensor:
    """Voxel centres covering a ct box grown by ``margin_mm`` on each side.

    Args:
        ct_min, ct_max: ``(3,)`` the box's corners, ct mm (x, y, z).
        voxel_mm (float): the voxel's side, mm.
        margin_mm (float): added on each side, mm.

    Returns:
        Tensor: ``(X, Y, Z, 3)`` float32 ct mm; along each axis the first centre lies
        half a voxel inside the grown box. Built in float32 (``torch.arange``), as the
        session-65 probe's: a finding centred midway between two voxel centres (common:
        the converter writes 0.1 mm) has its target peak on whichever float32 rounding
        makes nearer; a grid built in float64 and cast breaks some of those ties the
        other way (README, blades ablations: heads trained on either).
    """
    axes = [torch.arange(float(lo) - margin_mm + voxel_mm / 2, float(hi) + margin_mm,
                         voxel_mm, dtype=torch.float32) for lo, hi in zip(ct_min, ct_max)]
    return torch.stack(torch.meshgrid(*axes, indexing='ij'), -1)


def heat_target(grid: Tensor, centres: Tensor, labels: Tensor, diameters_mm: Tensor,
                ignore: Tensor, num_classes: int, sigma_min_mm: float) -> Tuple[Tensor, Tensor]:
    """CenterNet's target on a voxel grid: per finding a Gaussian of its class.

    Args:
        grid (Tensor): ``(X, Y, Z, 3)`` voxel centres, ct mm.
        centres (Tensor): ``(G, 3)`` finding centres, ct mm.
        labels (Tensor): ``(G,)`` class indices.
        diameters_mm (Tensor): ``(G,)``.
        ignore (Tensor): ``(G,)`` bool, ignore regions (no target; their voxels within
            ``max(d / 2, sigma_min_mm)`` of the centre are left out of the loss).
        num_classes (int): channels of the heat map.
        sigma_min_mm (float): the smallest Gaussian's sigma; otherwise ``d / 6``.

    Returns:
        tuple: ``heat`` ``(num_classes, X, Y, Z)`` in [0, 1], exactly 1 at the voxel
        nearest each finding's centre when that voxel lies within ``0.75`` voxel of it (a
        crop of the grid may leave the centre out), and ``ignored`` ``(X, Y, Z)`` bool.
    """
    heat = grid.new_zeros((num_classes,) + grid.shape[:3])
    ignored = torch.zeros(grid.shape[:3], dtype=torch.bool, device=grid.device)
    voxel_mm = float(grid[1, 0, 0, 0] - grid[0, 0, 0, 0]) if grid.shape[0] > 1 else 0.0
    for centre, label, diameter, skip in zip(centres, labels.tolist(), diameters_mm.tolist(),
                                             ignore.tolist()):
        dist2 = ((grid - centre.to(grid)) ** 2).sum(-1)
        if skip:
            ignored |= dist2 <= max(diameter / 2, sigma_min_mm) ** 2
            continue
        sigma = max(sigma_min_mm, diameter / 6.0)
        heat[label] = torch.maximum(heat[label], torch.exp(-dist2 / (2 * sigma ** 2)))
        nearest = int(torch.argmin(dist2))
        if float(dist2.reshape(-1)[nearest]) <= 0.75 * voxel_mm ** 2:
            heat[label].view(-1)[nearest] = 1.0
    return heat, ignored


@MODELS.register_module()
class XrayVolumeFusionHead(BaseModule):
    """Heat maps per class on a voxel grid from the views' feature maps.

    Args:
        in_channels (int): channels of the views' feature maps (the 2D stage's FPN).
        view_channels (int): a 1x1 reduction per view before the sampling. Defaults to 16.
        volume_channels (int): channels of the 3D CNN (four 3x3x3 convolutions, the third
            dilated by 2). Defaults to 32.
        voxel_mm (float): voxel side. Defaults to 0.5 (on the blades benchmark 1.4 img px
            at the part).
        margin_mm (float): the grid's margin around the object's CT box. Defaults to 1.
        sigma_min_mm (float): the smallest target Gaussian. Defaults to 0.5.
        box_size_mm (Sequence[float]): per class the side of the cubic boxes its peaks
            are read as (the heat map has no size; FROC scores centres): one heat map
            per class. ``tools/volume_fusion.py`` sets the median diameter of each
            class's training findings.
        score_thr (float): peaks scoring below are dropped. Defaults to 0.01.
        max_num (int): boxes per object. Defaults to 100.
    """

    def __init__(self, in_channels: int, box_size_mm: Sequence[float],
                 view_channels: int = 16, volume_channels: int = 32, voxel_mm: float = 0.5,
                 margin_mm: float = 1.0, sigma_min_mm: float = 0.5, score_thr: float = 0.01,
                 max_num: int = 100, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if len(box_size_mm) == 0 or min(box_size_mm) <= 0:
            raise ValueError(f'box_size_mm needs one side > 0 per class, got '
                             f'{list(box_size_mm)}')
        if voxel_mm <= 0:
            raise ValueError(f'voxel_mm must be > 0, got {voxel_mm}')
        num_classes = self.num_classes = len(box_size_mm)
        self.voxel_mm, self.margin_mm = float(voxel_mm), float(margin_mm)
        self.sigma_min_mm = float(sigma_min_mm)
        self.box_size_mm = tuple(float(s) for s in box_size_mm)
        self.score_thr, self.max_num = float(score_thr), int(max_num)
        self.view_reduce = nn.Sequential(nn.Conv2d(in_channels, view_channels, 1),
                                         nn.BatchNorm2d(view_channels), nn.ReLU(inplace=True),
                                         nn.Conv2d(view_channels, view_channels, 1))
        conv3 = _conv_bn_relu
        self.volume_net = nn.Sequential(
            conv3(nn.Conv3d, nn.BatchNorm3d, 3 * view_channels, volume_channels),
            conv3(nn.Conv3d, nn.BatchNorm3d, volume_channels, volume_channels),
            conv3(nn.Conv3d, nn.BatchNorm3d, volume_channels, volume_channels, 2),
            conv3(nn.Conv3d, nn.BatchNorm3d, volume_channels, volume_channels))
        self.heat_head = nn.Conv3d(volume_channels, num_classes, 1)
        # the heat map starts at 0.01 everywhere (CenterNet's prior)
        nn.init.constant_(self.heat_head.bias, -math.log((1 - 0.01) / 0.01))

    def grid(self, ct_min: Sequence[float], ct_max: Sequence[float]) -> Tensor:
        """:func:`voxel_grid` with the head's voxel and margin: ``(X, Y, Z, 3)`` ct mm."""
        return voxel_grid(ct_min, ct_max, self.voxel_mm, self.margin_mm)

    @staticmethod
    def sample_views(feats: Tensor, lidar2img: Tensor, img_shape: Tuple[int, int],
                     points: Tensor) -> Tensor:
        """Each view's feature map read at the projections of ct points.

        Args:
            feats (Tensor): ``(V, C, h, w)`` covering the network input of ``img_shape``.
            lidar2img (Tensor): ``(V, 4, 4)`` ct -> img px of that input.
            img_shape (tuple[int, int]): ``(H, W)`` px.
            points (Tensor): ``(P, 3)`` ct mm.

        Returns:
            Tensor: ``(V, C, P)``, bilinear between cell centres; 0 outside the image.
        """
        height, width = img_shape
        uv, _ = project_points(lidar2img.to(points), points)             # (V, P, 2)
        norm = torch.stack([uv[..., 0] / width, uv[..., 1] / height], -1) * 2 - 1
        sampled = F.grid_sample(feats, norm[:, None].to(feats.dtype), mode='bilinear',
                                padding_mode='zeros', align_corners=False)  # (V, C, 1, P)
        return sampled[:, :, 0]

    def forward(self, feats: Tensor, lidar2img: Tensor, img_shape: Tuple[int, int],
                grid: Tensor) -> Tensor:
        """Heat-map logits of one object.

        Args:
            feats (Tensor): ``(V, C_in, h, w)`` the views' feature maps.
            lidar2img (Tensor): ``(V, 4, 4)``.
            img_shape (tuple[int, int]): ``(H, W)`` of the network input, px.
            grid (Tensor): ``(X, Y, Z, 3)`` voxel centres, ct mm.

        Returns:
            Tensor: ``(num_classes, X, Y, Z)`` logits.
        """
        views = self.view_reduce(feats)
        samples = self.sample_views(views, lidar2img, img_shape, grid.reshape(-1, 3))
        mean = samples.mean(0)
        std = (samples - mean).pow(2).mean(0).add(1e-6).sqrt()
        volume = torch.cat([mean, samples.amax(0), std], 0).reshape(1, -1, *grid.shape[:3])
        return self.heat_head(self.volume_net(volume))[0]

    def loss(self, logits: Tensor, heat: Tensor, ignored: Tensor) -> Tensor:
        """mmdet's Gaussian focal loss over the voxels not ignored, over the number of
        finding centres (at least 1).

        Args:
            logits (Tensor): ``(K, X, Y, Z)``.
            heat (Tensor): ``(K, X, Y, Z)`` from :func:`heat_target`.
            ignored (Tensor): ``(X, Y, Z)`` bool.
        """
        prob = logits.sigmoid().clamp(EPS, 1 - EPS)
        weight = (~ignored).to(prob).expand_as(prob)
        num_pos = heat.eq(1).sum().clamp(min=1).to(prob)
        return gaussian_focal_loss(prob, heat, weight=weight, reduction='mean',
                                   avg_factor=num_pos)

    @torch.no_grad()
    def predict(self, logits: Tensor, grid: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """3D boxes at the heat map's local maxima.

        A voxel is a peak when it is the largest of its 3x3x3 neighbourhood in its class
        and scores above ``score_thr``; the best ``max_num`` peaks are kept, each centred
        at the heat-weighted mean of its neighbourhood's voxel centres (sub-voxel). Our
        own decoding: mmdet's ``get_local_maximum`` / ``get_topk_from_heatmap`` are 2D.

        Args:
            logits (Tensor): ``(K, X, Y, Z)``.
            grid (Tensor): ``(X, Y, Z, 3)`` ct mm.

        Returns:
            tuple: ``boxes`` ``(N, 7)`` (x, y, z, dx, dy, dz, yaw = 0; ct mm,
            gravity-centred), ``scores`` ``(N,)``, ``labels`` ``(N,)`` int64, by
            decreasing score.
        """
        heat = logits.sigmoid()
        is_peak = (heat == F.max_pool3d(heat[None], 3, 1, 1)[0]) & (heat > self.score_thr)
        cls, ix, iy, iz = torch.nonzero(is_peak, as_tuple=True)
        scores = heat[cls, ix, iy, iz]
        order = torch.argsort(scores, descending=True, stable=True)[:self.max_num]
        cls, ix, iy, iz, scores = cls[order], ix[order], iy[order], iz[order], scores[order]
        # the 3x3x3 neighbourhood of each peak, clipped to the grid
        offsets = torch.stack(torch.meshgrid(*[torch.arange(-1, 2)] * 3, indexing='ij'),
                              -1).reshape(-1, 3).to(heat.device)                 # (27, 3)
        size = torch.tensor(heat.shape[1:], device=heat.device)
        near = torch.stack([ix, iy, iz], -1)[:, None] + offsets[None]           # (N, 27, 3)
        inside = ((near >= 0) & (near < size)).all(-1)                          # (N, 27)
        near = torch.minimum(near.clamp(min=0), size - 1)
        weights = heat[cls[:, None], near[..., 0], near[..., 1], near[..., 2]] * inside
        points = grid[near[..., 0], near[..., 1], near[..., 2]]                  # (N, 27, 3)
        centres = (points * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
        sides = torch.tensor(self.box_size_mm, dtype=grid.dtype, device=grid.device)[cls]
        boxes = torch.cat([centres, sides[:, None].expand(-1, 3),
                           centres.new_zeros((len(centres), 1))], -1)
        return boxes, scores, cls.long()

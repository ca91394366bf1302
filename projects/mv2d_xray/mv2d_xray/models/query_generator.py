"""Dynamic query generator: one 3D reference point per 2D detection.

From the RoI-aligned features of a detection and its "RoI intrinsics" the generator
regresses ``(u', v', delta)``: the object's centre in the RoI frame (``(0, 0)`` = box
centre, ``+-0.5`` = box edges) and a depth offset. The reference point is that pixel at
depth ``d = d0 + depth_scale_mm * delta`` mapped back to ``ct`` through the inverse of
``A_roi @ lidar2img`` (``A_roi`` = the image -> RoI-frame affine), so

* nothing decomposes ``lidar2img`` into K and [R|t]: reflections (DRRs are mirror
  images, det = -1) and flips from augmentation are handled as they are;
* ``d0`` is a depth prior given by the caller -- the RoI head triangulates it from the
  detection's partners in the other views -- or else the depth of a ct anchor point
  (the isocentre by default) in that view, read from ``lidar2img`` itself: at
  initialisation (``delta`` ~ 0, ``(u', v')`` ~ 0) every query lies on its detection's
  ray at that depth, inside the patient, instead of at depth ~0 (on the source) as a
  raw regression would start.
"""
from typing import Optional, Sequence

import torch
from mmcv.cnn import ConvModule
from mmdet3d.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

from projects.mv2d_xray.core.geometry import project_points, unproject_points


def roi_affine(bboxes: Tensor) -> Tensor:
    """Image -> RoI-frame affine of each box.

    Args:
        bboxes (Tensor): ``(R, 4)`` boxes ``[x1, y1, x2, y2]`` in px.

    Returns:
        Tensor: ``(R, 4, 4)`` float64 ``A`` with ``u_roi = (u - cx) / w`` and
        ``v_roi = (v - cy) / h``; compose as ``A @ lidar2img``.
    """
    bboxes = bboxes.double()
    size = (bboxes[:, 2:4] - bboxes[:, 0:2]).clamp(min=1e-3)
    centre = (bboxes[:, 2:4] + bboxes[:, 0:2]) / 2
    affine = torch.eye(4, dtype=torch.float64,
                       device=bboxes.device).repeat(len(bboxes), 1, 1)
    affine[:, 0, 0] = 1 / size[:, 0]
    affine[:, 1, 1] = 1 / size[:, 1]
    # ``lidar2img`` yields (u d, v d, d, 1): the shift scales with d (column 2)
    affine[:, :2, 2] = -centre / size
    return affine


def lift_roi_points(bboxes: Tensor, lidar2img: Tensor, uv_roi: Tensor,
                    depth: Tensor) -> Tensor:
    """Lift RoI-frame points with known depth to ct (float64 internally).

    Args:
        bboxes (Tensor): ``(R, 4)`` boxes in px.
        lidar2img (Tensor): ``(R, 4, 4)`` ct -> img of each box's view.
        uv_roi (Tensor): ``(R, 2)`` points in the RoI frame (``(0, 0)`` = centre).
        depth (Tensor): ``(R,)`` camera depths in mm.

    Returns:
        Tensor: ``(R, 3)`` ct points in mm, in ``uv_roi``'s dtype.
    """
    lidar2roi = roi_affine(bboxes) @ lidar2img.double()
    points = unproject_points(lidar2roi, uv_roi.double()[:, None],
                              depth.double()[:, None])
    return points[:, 0].to(uv_roi.dtype)


@MODELS.register_module()
class MV2DXrayQueryGenerator(BaseModule):
    """RoI features + RoI intrinsics -> 3D reference points.

    Layers (MV2D's): ``num_shared_convs`` 3x3 convs -> average pool ->
    ``num_shared_fcs`` fcs -> concat the 6-d RoI-intrinsics feature -> MLP
    ``extra_encoding_channels`` -> ``fc_center`` (3 outputs, std 0.001 init).

    The RoI-intrinsics feature is the top two rows of ``A_roi @ cam2img``
    (``f/w``, skew, ``(c_x - cx)/w``, ... : focal length in box units and the box's
    offset from the principal point), times ``intrinsic_feat_scale``; it is zeroed for
    boxes smaller than ``min_box_size`` px, where it would be huge and meaningless.

    Args:
        in_channels (int): RoI feature channels. Defaults to 256.
        num_shared_convs (int): Defaults to 1.
        conv_out_channels (int): Defaults to 256.
        num_shared_fcs (int): Defaults to 1.
        fc_out_channels (int): Defaults to 1024.
        extra_encoding_channels (Sequence[int]): Hidden sizes of the MLP after the
            intrinsics are appended. Defaults to ``(512, 256)``.
        intrinsic_feat_scale (float): Defaults to 0.1.
        min_box_size (float): px. Defaults to 4.
        depth_anchor (Sequence[float]): ct point (mm) whose depth in each view is
            ``d0``. Defaults to the isocentre ``(0, 0, 0)``.
        depth_scale_mm (float): mm per unit of the regressed depth offset, about the
            body radius. Defaults to 100.
        conv_cfg (dict, optional): Defaults to None.
        norm_cfg (dict, optional): Defaults to None.
        init_cfg (dict | list[dict], optional): Defaults to Xavier on the fcs and
            Normal(std=0.001) on ``fc_center``.
    """

    #: Length of the RoI-intrinsics feature.
    intrinsic_feat_dims = 6

    def __init__(self,
                 in_channels: int = 256,
                 num_shared_convs: int = 1,
                 conv_out_channels: int = 256,
                 num_shared_fcs: int = 1,
                 fc_out_channels: int = 1024,
                 extra_encoding_channels: Sequence[int] = (512, 256),
                 intrinsic_feat_scale: float = 0.1,
                 min_box_size: float = 4.0,
                 depth_anchor: Sequence[float] = (0., 0., 0.),
                 depth_scale_mm: float = 100.0,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = None,
                 init_cfg=None) -> None:
        if init_cfg is None:
            init_cfg = [
                dict(type='Xavier', distribution='uniform', layer='Linear'),
                dict(type='Normal', std=0.001, override=dict(name='fc_center'))
            ]
        super().__init__(init_cfg=init_cfg)
        if len(extra_encoding_channels) == 0:
            raise ValueError('extra_encoding_channels must not be empty')
        self.intrinsic_feat_scale = intrinsic_feat_scale
        self.min_box_size = min_box_size
        self.depth_anchor = tuple(float(v) for v in depth_anchor)
        self.depth_scale_mm = depth_scale_mm

        channels = in_channels
        self.shared_convs = nn.ModuleList()
        for _ in range(num_shared_convs):
            self.shared_convs.append(
                ConvModule(channels, conv_out_channels, 3, padding=1,
                           conv_cfg=conv_cfg, norm_cfg=norm_cfg))
            channels = conv_out_channels
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.shared_fcs = nn.ModuleList()
        for _ in range(num_shared_fcs):
            self.shared_fcs.append(nn.Linear(channels, fc_out_channels))
            channels = fc_out_channels
        layers = []
        channels += self.intrinsic_feat_dims
        for out_channels in extra_encoding_channels:
            layers += [nn.Linear(channels, out_channels), nn.ReLU(inplace=True)]
            channels = out_channels
        self.extra_enc = nn.Sequential(*layers)
        # MV2D's layer name (an external API: its checkpoints and ours name this key)
        self.fc_center = nn.Linear(channels, 3)
        self.relu = nn.ReLU(inplace=True)

    def intrinsic_feats(self, bboxes: Tensor, cam2img: Tensor) -> Tensor:
        """``(R, 6)`` RoI-intrinsics feature (see the class docstring)."""
        roi_intrinsics = roi_affine(bboxes) @ cam2img.double()
        feats = roi_intrinsics[:, :2, :3].flatten(1).float()
        feats = feats * self.intrinsic_feat_scale
        size = bboxes[:, 2:4] - bboxes[:, 0:2]
        too_small = (size < self.min_box_size).any(dim=1)
        return feats.masked_fill(too_small[:, None], 0.0)

    def anchor_depth(self, lidar2img: Tensor) -> Tensor:
        """``(R,)`` depth (mm) of ``depth_anchor`` in each RoI's view."""
        anchor = lidar2img.new_tensor(self.depth_anchor)[None, None]
        _, depth = project_points(lidar2img, anchor.expand(len(lidar2img), 1, 3))
        return depth[:, 0]

    def forward(self, roi_feats: Tensor, bboxes: Tensor, lidar2img: Tensor,
                cam2img: Tensor, depth_prior: Optional[Tensor] = None) -> Tensor:
        """Generate reference points.

        Args:
            roi_feats (Tensor): ``(R, C, S, S)`` RoI features.
            bboxes (Tensor): ``(R, 4)`` detection boxes in px.
            lidar2img (Tensor): ``(R, 4, 4)`` ct -> img of each RoI's view.
            cam2img (Tensor): ``(R, 4, 4)`` intrinsics of each RoI's view.
            depth_prior (Tensor, optional): ``(R,)`` camera depth (mm) to use as
                ``d0`` instead of the anchor's, e.g. triangulated from the RoI's
                partners in other views (:class:`MV2DXrayRoIHead`).

        Returns:
            Tensor: ``(R, 3)`` reference points in ct mm: the regressed RoI-frame
            point at cam depth ``d0 + depth_scale_mm * delta`` (at least 1 mm).
        """
        x = roi_feats
        for conv in self.shared_convs:
            x = conv(x)
        x = self.avg_pool(x).flatten(1)
        for fc in self.shared_fcs:
            x = self.relu(fc(x))
        x = torch.cat([x, self.intrinsic_feats(bboxes, cam2img).to(x)], dim=1)
        x = self.extra_enc(x.clamp(min=-5e3, max=5e3))
        centre = self.fc_center(x)                      # (R, 3): u_roi, v_roi, delta
        if depth_prior is None:
            depth_prior = self.anchor_depth(lidar2img)
        depth = depth_prior.to(centre) + self.depth_scale_mm * centre[:, 2]
        return lift_roi_points(bboxes, lidar2img, centre[:, :2], depth.clamp(min=1.0))

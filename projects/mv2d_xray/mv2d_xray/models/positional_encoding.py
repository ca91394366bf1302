"""3D position encoding of RoI features (PETR's frustum PE, as MV2D uses it).

For every RoI cell MV2D encodes *where in 3D* that pixel could be: the ray through the
cell centre is sampled at ``depth_num`` depths, the points are mapped to ``ct`` through
the inverse of ``lidar2img``, normalised by ``position_range`` and embedded by an MLP.
Two optional terms follow MV2D: a feature-guided gate (``with_fpe``, PETRv2's FPE) and
an adapted sine encoding of (view, row, column) (``with_sine``).

Unlike the original, which encodes the whole feature map of every view, concatenates it
to the features and RoI-aligns both, the encoding here is computed only at the RoI
cells. All three terms are pointwise (1x1 convolutions in the original), so this gives
the same result up to the bilinear interpolation of the encoding, and it costs
``R x S^2 x D`` points instead of ``V x H x W x D``: with 20 views of 1024^2 px the
full-map version does not fit in memory at stride 8.
"""
import math
from typing import Optional, Sequence

import torch
from mmdet3d.registry import MODELS
from mmdet.models.layers.transformer import inverse_sigmoid
from mmengine.model import BaseModule
from torch import Tensor, nn

from projects.mv2d_xray.core.geometry import normalize_points, unproject_points


def depth_bins(depth_range: Sequence[float], num: int, lid: bool = False,
               dtype: torch.dtype = torch.float32,
               device: Optional[torch.device] = None) -> Tensor:
    """``(num,)`` camera depths (mm) sampled in ``depth_range = (near, far)``:
    uniformly from near to far, or linear-increasing (``lid``, PETR's: the gaps grow
    linearly with depth). Shared by the position encoding and the box correlation."""
    near, far = depth_range
    index = torch.arange(num, dtype=dtype, device=device)
    if lid:
        step = (far - near) / (num * (num + 1))
        return near + step * index * (index + 1)
    return near + (far - near) * index / max(num - 1, 1)


def sine_embedding(pos: Tensor, num_feats: int,
                   temperature: float = 10000.) -> Tensor:
    """Interleaved sin/cos embedding of a scalar field.

    Args:
        pos (Tensor): ``(...)`` positions (already scaled, e.g. by 2 pi).
        num_feats (int): Output channels (even).
        temperature (float): Frequency base. Defaults to 10000.

    Returns:
        Tensor: ``(..., num_feats)``.
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=pos.device)
    dim_t = temperature**(2 * torch.div(dim_t, 2, rounding_mode='floor') /
                          num_feats)
    angles = pos[..., None].float() / dim_t
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()),
                       dim=-1).flatten(-2)


def pos2posemb3d(pos: Tensor, num_feats: int = 128,
                 temperature: float = 10000.) -> Tensor:
    """Sine embedding of normalised 3D points (PETR's query embedding).

    Args:
        pos (Tensor): ``(..., 3)`` points normalised to ``[0, 1]`` (x, y, z).
        num_feats (int): Channels per axis. Defaults to 128.
        temperature (float): Frequency base. Defaults to 10000.

    Returns:
        Tensor: ``(..., 3 * num_feats)``, ordered (y, x, z) as in PETR.
    """
    pos = pos * (2 * math.pi)
    emb = [sine_embedding(pos[..., i], num_feats, temperature) for i in range(3)]
    return torch.cat([emb[1], emb[0], emb[2]], dim=-1)


@MODELS.register_module()
class MV2DXrayPositionalEncoding(BaseModule):
    """Frustum 3D position encoding at RoI cells.

    Args:
        embed_dims (int): Output channels (= RoI feature channels). Defaults to 256.
        depth_num (int): Depth samples per ray. Defaults to 64.
        depth_range (Sequence[float]): ``(near, far)`` camera depths in mm (distance
            from the source along the central ray) spanning the patient, e.g.
            ``(sod_mm - r, sod_mm + r)`` with r the body radius. Defaults to
            ``(100, 500)`` (source-isocentre 300 mm, radius 200 mm).
        position_range (Sequence[float]): ``[x0, y0, z0, x1, y1, z1]`` in mm,
            the ct region the encoding resolves. Defaults to +-250 mm.
        lid (bool): Linear-increasing depth bins (PETR's LID) instead of uniform
            ones. Uniform suits X-ray, where the patient fills the whole range.
            Defaults to False.
        with_fpe (bool): Gate the encoding with the RoI features (FPE). Defaults to
            True.
        with_sine (bool): Add the adapted sine encoding of (view, row, column).
            Defaults to True.
        sine_num_feats (int): Channels per axis of the sine encoding. Defaults to
            128.
        init_cfg (dict, optional): Initialisation config. Defaults to None.
    """

    def __init__(self,
                 embed_dims: int = 256,
                 depth_num: int = 64,
                 depth_range: Sequence[float] = (100., 500.),
                 position_range: Sequence[float] = (-250., -250., -250., 250.,
                                                    250., 250.),
                 lid: bool = False,
                 with_fpe: bool = True,
                 with_sine: bool = True,
                 sine_num_feats: int = 128,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not 0 < depth_range[0] < depth_range[1]:
            raise ValueError(f'depth_range must be (near, far) with 0 < near < '
                             f'far (mm), got {depth_range}')
        if len(position_range) != 6:
            raise ValueError(f'position_range needs 6 values, got {position_range}')
        self.embed_dims = embed_dims
        self.depth_num = depth_num
        self.depth_range = tuple(float(d) for d in depth_range)
        self.position_range = [float(v) for v in position_range]
        self.lid = lid
        self.with_fpe = with_fpe
        self.with_sine = with_sine
        self.sine_num_feats = sine_num_feats

        self.position_encoder = nn.Sequential(
            nn.Linear(3 * depth_num, 4 * embed_dims), nn.ReLU(inplace=True),
            nn.Linear(4 * embed_dims, embed_dims))
        if with_fpe:
            self.fpe = nn.Sequential(
                nn.Linear(embed_dims, embed_dims), nn.ReLU(inplace=True),
                nn.Linear(embed_dims, embed_dims))
        if with_sine:
            self.adapt_pos3d = nn.Sequential(
                nn.Linear(3 * sine_num_feats, 4 * embed_dims),
                nn.ReLU(inplace=True), nn.Linear(4 * embed_dims, embed_dims))

    def frustum_points(self, cell_uv: Tensor, img2lidar: Tensor) -> Tensor:
        """ct points along the rays through RoI cells, at the ``depth_num`` depths.

        Each cell is lifted to ct (:func:`unproject_points`) at the two ends of
        ``depth_range``; the samples in between lie on that segment, at the same
        fractions of it as their depths (a ray is affine in the cam depth). Two
        unprojections per cell instead of ``depth_num``.

        Args:
            cell_uv (Tensor): ``(R, P, 2)`` img coordinates (px) of the cells.
            img2lidar (Tensor): ``(R, 4, 4)`` inverse of each RoI's ``lidar2img``.

        Returns:
            Tensor: ``(R, P, depth_num, 3)`` ct points in mm (computed in
            ``cell_uv``'s dtype).
        """
        num_rois, num_cells = cell_uv.shape[:2]
        near, far = self.depth_range
        end_uv = cell_uv[:, :, None].expand(-1, -1, 2, -1)       # (R, P, 2 ends, 2)
        end_depth = cell_uv.new_tensor([near, far]).expand(num_rois, num_cells, 2)
        ends = unproject_points(lidar2img=None, uv=end_uv.reshape(num_rois, -1, 2),
                                depth=end_depth.reshape(num_rois, -1),
                                img2lidar=img2lidar.to(cell_uv.dtype))
        ends = ends.view(num_rois, num_cells, 2, 3)              # ct mm
        depth = depth_bins(self.depth_range, self.depth_num, self.lid,
                           dtype=cell_uv.dtype, device=cell_uv.device)
        frac = ((depth - near) / (far - near))[:, None]         # (D, 1)
        return ends[:, :, :1] + frac * (ends[:, :, 1:] - ends[:, :, :1])

    def forward(self, roi_feats: Tensor, cell_uv: Tensor, img2lidar: Tensor,
                view_ids: Tensor, num_views: int, img_hw: Tensor) -> Tensor:
        """Encode the RoI cells.

        Args:
            roi_feats (Tensor): ``(R, P, C)`` RoI features, one row per cell.
            cell_uv (Tensor): ``(R, P, 2)`` image coordinates ``(u, v)`` of the cell
                centres (px).
            img2lidar (Tensor): ``(R, 4, 4)`` inverse ``lidar2img`` of each RoI's
                view.
            view_ids (Tensor): ``(R,)`` view index of each RoI.
            num_views (int): Number of views per scene.
            img_hw (Tensor): ``(R, 2)`` ``(H, W)`` of each RoI's (unpadded) image.

        Returns:
            Tensor: ``(R, P, C)`` position encoding.
        """
        num_rois, num_cells = cell_uv.shape[:2]
        points = normalize_points(self.frustum_points(cell_uv, img2lidar),
                                  self.position_range)
        points = inverse_sigmoid(points.clamp(0, 1))
        pe = self.position_encoder(points.reshape(num_rois, num_cells, -1))
        if self.with_fpe:
            pe = pe * self.fpe(roi_feats).sigmoid()
        if self.with_sine:
            height, width = img_hw[:, None, 0], img_hw[:, None, 1]
            scale = 2 * math.pi
            view_pos = (view_ids.to(cell_uv.dtype) + 1) / num_views * scale
            sine = torch.cat([
                sine_embedding(view_pos[:, None].expand(num_rois, num_cells),
                               self.sine_num_feats),
                sine_embedding(cell_uv[..., 1] / height * scale,
                               self.sine_num_feats),
                sine_embedding(cell_uv[..., 0] / width * scale,
                               self.sine_num_feats)
            ], dim=-1)
            pe = pe + self.adapt_pos3d(sine)
        return pe

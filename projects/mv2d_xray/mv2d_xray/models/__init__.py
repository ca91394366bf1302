"""mv2d-xray plugin: models (imported by the plugin package; each module registers
itself in mmdet3d's registries)."""
from .box_correlation import MV2DXrayBoxCorrelation
from .cross_attention_head import MV2DXrayCrossAttentionHead
from .grid_mask import XrayGridMask
from .hungarian_assigner_3d import MV2DXrayHungarianAssigner3D
from .match_cost import MV2DXrayBBox3DL1Cost
from .mv2d import MV2DXray
from .mv2d_roi_head import MV2DXrayRoIHead
from .nms_free_coder import MV2DXrayNMSFreeCoder
from .positional_encoding import MV2DXrayPositionalEncoding
from .post_processing import center_distance_nms
from .query_generator import MV2DXrayQueryGenerator
from .transformer import MV2DXrayTransformer
from .two_stage_2d import MV2DXrayTwoStage2D

__all__ = [
    'MV2DXray', 'MV2DXrayTwoStage2D', 'MV2DXrayRoIHead', 'MV2DXrayQueryGenerator',
    'MV2DXrayBoxCorrelation', 'MV2DXrayPositionalEncoding',
    'MV2DXrayCrossAttentionHead', 'MV2DXrayTransformer',
    'MV2DXrayHungarianAssigner3D', 'MV2DXrayBBox3DL1Cost', 'MV2DXrayNMSFreeCoder',
    'XrayGridMask', 'center_distance_nms'
]

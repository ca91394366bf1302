"""mv2d-xray plugin: models (imported by the plugin package; each module registers
itself in mmdet3d's registries)."""
from projects.mv2d_xray.mv2d_xray.models.box_correlation import MV2DXrayBoxCorrelation
from projects.mv2d_xray.mv2d_xray.models.context_roi_extractor import XrayContextRoIExtractor
from projects.mv2d_xray.mv2d_xray.models.cross_attention_head import MV2DXrayCrossAttentionHead
from projects.mv2d_xray.mv2d_xray.models.grid_mask import XrayGridMask
from projects.mv2d_xray.mv2d_xray.models.hungarian_assigner_3d import MV2DXrayHungarianAssigner3D
from projects.mv2d_xray.mv2d_xray.models.match_cost import MV2DXrayBBox3DL1Cost
from projects.mv2d_xray.mv2d_xray.models.mv2d import MV2DXray
from projects.mv2d_xray.mv2d_xray.models.mv2d_roi_head import MV2DXrayRoIHead
from projects.mv2d_xray.mv2d_xray.models.nms_free_coder import MV2DXrayNMSFreeCoder
from projects.mv2d_xray.mv2d_xray.models.positional_encoding import MV2DXrayPositionalEncoding
from projects.mv2d_xray.mv2d_xray.models.post_processing import (ObjectnessMaps,
                                                                 centre_distance_nms,
                                                                 objectness_at_projections,
                                                                 objectness_support,
                                                                 objectness_support_by_size,
                                                                 view_support, view_support_scores)
from projects.mv2d_xray.mv2d_xray.models.query_generator import MV2DXrayQueryGenerator
from projects.mv2d_xray.mv2d_xray.models.transformer import MV2DXrayTransformer
from projects.mv2d_xray.mv2d_xray.models.two_stage_2d import MV2DXrayTwoStage2D
from projects.mv2d_xray.mv2d_xray.models.volume_fusion_head import (XrayVolumeFusionHead,
                                                                   heat_target, voxel_grid)

__all__ = [
    'MV2DXray', 'MV2DXrayTwoStage2D', 'MV2DXrayRoIHead', 'MV2DXrayQueryGenerator',
    'MV2DXrayBoxCorrelation', 'MV2DXrayPositionalEncoding',
    'MV2DXrayCrossAttentionHead', 'MV2DXrayTransformer',
    'MV2DXrayHungarianAssigner3D', 'MV2DXrayBBox3DL1Cost', 'MV2DXrayNMSFreeCoder',
    'XrayGridMask', 'XrayContextRoIExtractor', 'ObjectnessMaps', 'centre_distance_nms',
    'objectness_at_projections',
    'objectness_support', 'objectness_support_by_size', 'view_support', 'view_support_scores',
    'XrayVolumeFusionHead', 'heat_target', 'voxel_grid'
]

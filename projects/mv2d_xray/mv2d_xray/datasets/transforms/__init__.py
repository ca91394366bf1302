"""Data pipeline of the multi-view X-ray views (registered in mmdet3d's ``TRANSFORMS``)."""
from projects.mv2d_xray.mv2d_xray.datasets.transforms.contrast import XrayLocalContrast
from projects.mv2d_xray.mv2d_xray.datasets.transforms.formatting import PackMV2DXrayInputs
from projects.mv2d_xray.mv2d_xray.datasets.transforms.geometric import XrayResizeCropFlip
from projects.mv2d_xray.mv2d_xray.datasets.transforms.loading import (LoadXrayAnnotations3D,
                                                                      LoadXrayMultiViewImages)
from projects.mv2d_xray.mv2d_xray.datasets.transforms.photometric import XrayPhotoMetricDistortion

__all__ = [
    'LoadXrayMultiViewImages', 'LoadXrayAnnotations3D', 'XrayPhotoMetricDistortion',
    'XrayResizeCropFlip', 'XrayLocalContrast', 'PackMV2DXrayInputs'
]

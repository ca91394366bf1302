"""Data pipeline of the multi-view X-ray views (registered in mmdet3d's ``TRANSFORMS``)."""
from .formatting import PackMV2DXrayInputs
from .geometric import XrayResizeCropFlip
from .loading import LoadXrayAnnotations3D, LoadXrayMultiViewImages
from .photometric import XrayPhotoMetricDistortion

__all__ = [
    'LoadXrayMultiViewImages', 'LoadXrayAnnotations3D', 'XrayPhotoMetricDistortion',
    'XrayResizeCropFlip', 'PackMV2DXrayInputs'
]

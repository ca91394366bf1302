"""mv2d-xray plugin: datasets (imported by the plugin package; each module registers itself)."""
from projects.mv2d_xray.mv2d_xray.datasets.transforms import (LoadXrayAnnotations3D,
                                                              LoadXrayMultiViewImages,
                                                              PackMV2DXrayInputs,
                                                              XrayLocalContrast,
                                                              XrayPhotoMetricDistortion,
                                                              XrayResizeCropFlip)
from projects.mv2d_xray.mv2d_xray.datasets.xray_dataset import MV2DXrayDataset, XrayDataError

__all__ = [
    'MV2DXrayDataset', 'XrayDataError', 'LoadXrayMultiViewImages', 'LoadXrayAnnotations3D',
    'XrayPhotoMetricDistortion', 'XrayResizeCropFlip', 'XrayLocalContrast', 'PackMV2DXrayInputs'
]

"""Running a trained model outside the training loop:
:class:`~projects.mv2d_xray.mv2d_xray.apis.xray_inferencer.MV2DXrayInferencer` predicts
study folders (images + ``calibration.json``; README "Running on your own studies").
Importing this package registers nothing and loads no checkpoint."""
from projects.mv2d_xray.mv2d_xray.apis.xray_inferencer import MV2DXrayInferencer

__all__ = ['MV2DXrayInferencer']

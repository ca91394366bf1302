"""mv2d-xray plugin: evaluation (imported by the plugin package; each module registers itself).

* :mod:`.xray_eval` -- the 3D metric core as plain functions (FROC / CPM, centre-distance
  AP, 3D IoU AP, centre error, size bands);
* :mod:`.formats` -- ground truth from info pickles, predictions in the README format;
* :mod:`.coco2d` -- per-view COCO AP / AR of 2D detections (pycocotools);
* :mod:`.xray_metric` -- :class:`XrayDet3DMetric`, the registered mmengine metric;
* :mod:`.triangulation` -- the triangulation baseline (2D detections -> 3D boxes);
* :mod:`.visualization` -- pictures of views with projected boxes, FROC curves.
"""
from . import coco2d, formats, triangulation, visualization, xray_eval  # noqa: F401
from .xray_metric import XrayDet3DMetric

__all__ = ['XrayDet3DMetric', 'coco2d', 'formats', 'triangulation', 'visualization',
           'xray_eval']

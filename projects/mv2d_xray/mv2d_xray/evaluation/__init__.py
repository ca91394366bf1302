"""mv2d-xray plugin: evaluation (imported by the plugin package; each module registers itself).

* :mod:`.xray_metric` -- :class:`XrayDet3DMetric`, the registered mmengine metric, on the
  metric core :mod:`projects.mv2d_xray.core.metric`;
* :mod:`.coco2d` -- per-view COCO AP / AR of 2D detections (pycocotools);
* :mod:`.pointing_game` -- the pointing game of per-view saliency maps against the
  findings' 2D boxes (hit rate, random floor, per size band and view; numpy only, not
  imported here);
* :mod:`.recall_2d` -- where the 2D stage loses the findings: the rank of the first RPN
  proposal overlapping each box and whether a detection does, per box width (not
  imported here);
* :mod:`.views_detected` -- the 3D methods' figures on the findings grouped by how many
  views' 2D detections hold them (not imported here).
* :mod:`.class_confusion_2d` -- the class the 2D stage names each finding in each view
  (its nearest detection in the triangulation gate; not imported here).

The triangulation baseline is in :mod:`projects.mv2d_xray.mv2d_xray.baselines`, the
pictures in :mod:`projects.mv2d_xray.mv2d_xray.visualization`.
"""
from projects.mv2d_xray.mv2d_xray.evaluation import coco2d  # noqa
from projects.mv2d_xray.mv2d_xray.evaluation.xray_metric import XrayDet3DMetric

__all__ = ['XrayDet3DMetric', 'coco2d']

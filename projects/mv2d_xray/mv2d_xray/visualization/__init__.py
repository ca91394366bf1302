"""mv2d-xray pictures: what a detector does, drawn for people (matplotlib, PNG).

* :mod:`~projects.mv2d_xray.mv2d_xray.visualization.case_views` -- a case's views with the
  ground-truth and predicted 2D boxes and the 3D boxes projected into every view;
* :mod:`~projects.mv2d_xray.mv2d_xray.visualization.metric_plots` -- FROC curves and
  per-size-band bars from metrics JSON files;
* :mod:`~projects.mv2d_xray.mv2d_xray.visualization.saliency` -- gradient-free saliency maps
  of the 2D stage per view (EigenCAM on a detection's FPN level, box-score-driven
  Score-CAM of one detection; torch, no gradients);
* :mod:`~projects.mv2d_xray.mv2d_xray.visualization.saliency_views` -- a case's views with
  their saliency maps overlaid, detections and ground-truth boxes;
* :mod:`~projects.mv2d_xray.mv2d_xray.visualization.figures` -- the Agg backend and the one
  (atomic) PNG writer they share.

How well the maps point at the findings is scored by
:mod:`projects.mv2d_xray.mv2d_xray.evaluation.pointing_game`. Nothing here is registered in
mmdet3d; this package itself imports nothing (matplotlib is imported when a picture is
drawn, torch and mmdet when ``saliency`` is imported).
"""

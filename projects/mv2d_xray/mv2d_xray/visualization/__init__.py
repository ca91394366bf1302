"""mv2d-xray pictures: what a detector does, drawn for people (matplotlib, PNG).

* :mod:`~projects.mv2d_xray.mv2d_xray.visualization.case_views` -- a case's views with the
  ground-truth and predicted 2D boxes and the 3D boxes projected into every view;
* :mod:`~projects.mv2d_xray.mv2d_xray.visualization.metric_plots` -- FROC curves and
  per-size-band bars from metrics JSON files;
* :mod:`~projects.mv2d_xray.mv2d_xray.visualization.figures` -- the Agg backend and the one
  (atomic) PNG writer they share.

Explainability maps will live here too. Nothing here is registered in mmdet3d; this
package itself imports nothing (matplotlib is imported when a picture is drawn).
"""

"""mv2d-xray baselines: methods without a learned 3D head, to judge the model against.

* :mod:`~projects.mv2d_xray.mv2d_xray.baselines.triangulation` -- 3D boxes triangulated
  from per-view 2D detections through each view's ``lidar2img`` (``tools/triangulate.py``).

Nothing here is registered in mmdet3d; this package itself imports nothing.
"""

"""mv2d-xray: MV2D multi-view X-ray 3D detection (an MMDetection3D 1.4 project).

* :mod:`projects.mv2d_xray.mv2d_xray` -- the mmdet3d plugin. Importing it registers its
  datasets, transforms, models and metrics in mmdet3d's registries; configs load it with
  ``custom_imports = dict(imports=['projects.mv2d_xray.mv2d_xray'])``.
* :mod:`projects.mv2d_xray.geometry` -- the camera model (the single source of truth for
  camera matrices), shared by the data converter, the plugin and the tools.
* :mod:`projects.mv2d_xray.compat` -- fixes for the third-party stack.

This package itself imports nothing heavy, so the converter can use the geometry without
loading mmdet3d.
"""

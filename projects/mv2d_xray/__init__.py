"""mv2d-xray: MV2D multi-view X-ray 3D detection (an MMDetection3D 1.4 project).

* :mod:`projects.mv2d_xray.core` -- what the converter, the plugin and the tools stand on:
  the camera geometry (the single source of truth for camera matrices), the data format,
  the 3D metric and file I/O; plain numpy, no torch or mmengine.
* :mod:`projects.mv2d_xray.mv2d_xray` -- the mmdet3d plugin. Importing it registers its
  datasets, transforms, models and metrics in mmdet3d's registries; configs load it with
  ``custom_imports = dict(imports=['projects.mv2d_xray.mv2d_xray'])``.

This package itself imports nothing.
"""

"""The core both sides stand on: the dataset converter, the plugin
(``projects.mv2d_xray.mv2d_xray``) and the tools import these modules; these import
nothing of ours above them, nor torch or mmengine (torch only when a tensor is passed to
the geometry).

* :mod:`~projects.mv2d_xray.core.geometry` -- the camera model, the only place camera
  matrices are built, and the projection helpers (numpy or torch);
* :mod:`~projects.mv2d_xray.core.acquisition` -- acquisitions of any shape (per-view
  matrices) and the calibration file that describes them (explicit ``P`` or ``K`` + ``Rt``
  per view, or the ring shorthand);
* :mod:`~projects.mv2d_xray.core.data_format` -- the info pickles, COCO files and
  prediction files: format version, builders, readers;
* :mod:`~projects.mv2d_xray.core.metric` -- the 3D metric as plain functions (FROC / CPM,
  centre-distance AP, IoU AP, centre error, size bands);
* :mod:`~projects.mv2d_xray.core.bootstrap` -- confidence intervals of the metric by the case
  bootstrap, and paired intervals of the difference between two methods;
* :mod:`~projects.mv2d_xray.core.clustering` -- greedy clustering of scored points by
  distance (query merging and duplicate suppression);
* :mod:`~projects.mv2d_xray.core.io` -- one atomic writer, one JSON reader, one reader for
  data pickles that cannot run code.
"""

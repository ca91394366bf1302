"""Dataset converters: CT + annotations -> multi-view DRRs, info pickles and COCO JSON.

Run ``python -m data_converters --help`` (``lidc``, ``demo``, ``merge``).

Modules:

* ``infos`` -- the output format (:data:`~projects.mv2d_xray.core.data_format.FORMAT_VERSION`, info
  items, metainfo, COCO, the patient split); light to import (the plugin uses it);
* ``volume`` -- CT volumes in pylidc's index order, the ``ct`` frame, DICOM and NIfTI
  readers;
* ``findings`` -- nodules as voxel masks, their 3D / 2D boxes, pylidc labels;
* ``render`` -- DRR rendering (DiffDRR), one linear operator of the CT's densities (a
  block of a volume renders on its own: the demo's linearity trick);
* ``lidc`` / ``demo`` -- the two sources of cases; ``runner`` -- parallel, resumable,
  sharded runs and the split files; ``storage`` -- atomic writes and per-case results.
"""

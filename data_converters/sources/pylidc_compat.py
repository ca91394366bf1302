"""pylidc 0.2.3 on current numpy / setuptools / Python, for the LIDC-based sources.

Import pylidc from here instead of the raw package:

* ``from data_converters.sources.pylidc_compat import pylidc`` -- pylidc 0.2.3 with
  - numpy >= 1.24: it uses the removed aliases ``np.int`` / ``np.float`` at call time
    (``Contour.to_matrix``, ``Annotation.boolean_mask``, ``surface_area``...); they are
    restored as the builtins they aliased;
  - setuptools >= 82: ``import pkg_resources`` (only used for ``resource_filename`` of its
    bundled database) is stubbed when the real module is missing;
  - Python >= 3.12: ``configparser.SafeConfigParser`` is restored;
  - :func:`set_pylidc_dicom_root` points pylidc at a DICOM folder without ``~/.pylidcrc``
    (pylidc would otherwise write a template config file into the user's home).

The fixes are applied when pylidc is first used, not when this module is imported.
"""
import configparser
import importlib
import os
import sys
import types

import numpy as np

__all__ = ['pylidc', 'set_pylidc_dicom_root']


def _install_pkg_resources_stub() -> None:
    """Provide the one ``pkg_resources`` function pylidc uses when setuptools lacks it."""
    import warnings
    try:
        with warnings.catch_warnings():  # its own "pkg_resources is deprecated" warning
            warnings.simplefilter('ignore')
            import pkg_resources  # noqa: F401
        return
    except ImportError:
        pass
    stub = types.ModuleType('pkg_resources')

    def resource_filename(package: str, resource: str) -> str:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f'cannot locate package {package!r}')
        return os.path.join(list(spec.submodule_search_locations)[0], resource)

    stub.resource_filename = resource_filename
    stub.__mv2d_xray_stub__ = True
    sys.modules['pkg_resources'] = stub


def _import_pylidc():
    """Import pylidc with the fixes above (done lazily: pylidc costs ~3 s to import and
    only the converter needs it)."""
    for alias, builtin in (('int', int), ('float', float), ('bool', bool)):
        if alias not in np.__dict__:
            setattr(np, alias, builtin)
    if not hasattr(configparser, 'SafeConfigParser'):
        configparser.SafeConfigParser = configparser.ConfigParser
    _install_pkg_resources_stub()
    import warnings
    with warnings.catch_warnings():
        # pkg_resources / sqlalchemy deprecation chatter from pylidc's import.
        warnings.simplefilter('ignore')
        import pylidc as module
    return module


def __getattr__(name: str):
    # PEP 562: ``from data_converters.sources.pylidc_compat import pylidc`` imports it on first use.
    if name == 'pylidc':
        module = _import_pylidc()
        globals()['pylidc'] = module
        return module
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def set_pylidc_dicom_root(path: str) -> None:
    """Make pylidc look for DICOM series under ``path`` (``<path>/LIDC-IDRI-xxxx/...``)
    instead of reading (or writing) ``~/.pylidcrc``."""
    root = os.path.abspath(os.fspath(path))
    __getattr__('pylidc')
    scan_module = sys.modules['pylidc.Scan']
    scan_module._get_dicom_file_path_from_config_file = lambda: root

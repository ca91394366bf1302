"""The mv2d-xray mmdet3d plugin: importing it registers every module below in mmdet3d's
registries (scope ``mmdet3d``). Configs load it with
``custom_imports = dict(imports=['projects.mv2d_xray.mv2d_xray'])``."""
from ..compat import enable_trusted_checkpoint_loading
from . import datasets, evaluation, models  # noqa: F401  (registers the modules)

enable_trusted_checkpoint_loading()

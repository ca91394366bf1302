"""The mv2d-xray mmdet3d plugin: importing it registers every module below in mmdet3d's
registries (scope ``mmdet3d``) and changes nothing else. Configs load it with
``custom_imports = dict(imports=['projects.mv2d_xray.mv2d_xray'])``."""
from projects.mv2d_xray.mv2d_xray import datasets, engine, evaluation, models  # noqa: F401

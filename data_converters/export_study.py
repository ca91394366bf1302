"""``python -m data_converters export-study``: one converted case as a study folder.

A study folder (:mod:`projects.mv2d_xray.core.study`) is what ``tools/infer.py`` reads: the
case's view images copied byte for byte (``<view name>.png``) and ``calibration.json`` in
the explicit ``K`` + ``Rt`` form with the info pickle's matrices exactly, and the
detector pitch of the conversion. So any converted case is a complete example of the
format, and the round trip (``tools/test.py`` on the case, ``tools/infer.py`` on the
study) can be checked.
"""
from __future__ import annotations

import os
import os.path as osp

import numpy as np

from data_converters.errors import ConverterError
from projects.mv2d_xray.core.acquisition import Acquisition
from projects.mv2d_xray.core.data_format import load_infos
from projects.mv2d_xray.core.study import write_study

#: The matrices a view of an info item carries (4x4; README "Data format").
VIEW_MATRICES = ('cam2img', 'lidar2cam', 'lidar2img')


def case_acquisition(infos: dict, token: str, infos_path: str):
    """The :class:`Acquisition` of case ``token`` of a loaded info pickle (its views in the
    metainfo's order, images named ``<view><suffix>``) and the source image paths.

    Raises:
        ConverterError: no such case, or an image path outside the dataset folder.
    """
    items = {item['token']: item for item in infos['data_list']}
    if token not in items:
        some = ', '.join(list(items)[:5])
        raise ConverterError(f'{infos_path}: no case {token!r} (cases: {some}'
                             f'{", ..." if len(items) > 5 else ""})')
    geometry = infos['metainfo']['geometry']
    names = list(geometry['view_names'])
    views = items[token]['images']
    root = osp.realpath(osp.dirname(osp.abspath(infos_path)))
    sources = []
    for name in names:
        path = osp.realpath(osp.join(root, str(views[name]['img_path'])))
        if not path.startswith(osp.join(root, '')):
            raise ConverterError(f'{infos_path}: case {token} view {name}: image path '
                                 f'{views[name]["img_path"]!r} is outside {root}')
        if not osp.isfile(path):
            raise ConverterError(f'{infos_path}: case {token} view {name}: image not '
                                 f'found: {path}')
        sources.append(path)
    mats = {key: np.array([views[n][key] for n in names], np.float64) for key in VIEW_MATRICES}
    height, width = int(views[names[0]]['height']), int(views[names[0]]['width'])
    spacing = geometry.get('pixel_spacing_mm')
    acquisition = Acquisition(names, (height, width), **mats,
                              images=[name + osp.splitext(src)[1].lower()
                                      for name, src in zip(names, sources)],
                              pixel_spacing_mm=[spacing] * len(names))
    return acquisition, sources


def export_study(infos_path: str, token: str, out: str) -> str:
    """Write case ``token`` of the info pickle ``infos_path`` as a study folder ``out``.

    Returns:
        str: the calibration file written.

    Raises:
        ConverterError: a missing or unreadable pickle, no such case, an ``out`` that is a
            file or a folder that is not empty.
    """
    try:
        infos = load_infos(infos_path)
    except (OSError, ValueError) as err:
        raise ConverterError(str(err)) from None
    acquisition, sources = case_acquisition(infos, token, infos_path)
    if osp.exists(out) and (not osp.isdir(out) or os.listdir(out)):
        raise ConverterError(f'--out {out} exists and is not an empty folder (a study folder '
                             'holds only its images and calibration.json)')
    return write_study(out, acquisition, sources, form='K_Rt')

"""Writing one converted case: the PNG of every view and the case's info item.

A source calls :func:`finish_case` at the end of its ``convert`` with the case's renders
and findings; the runner then records the returned info item as a finished case
(:meth:`~data_converters.storage.CaseStore.write_case`).
"""
from __future__ import annotations

import os.path as osp
from typing import Callable, Optional, Sequence

import numpy as np

from data_converters.findings import Finding
from data_converters.storage import write_png
from projects.mv2d_xray.core.acquisition import Acquisition
from projects.mv2d_xray.core.data_format import build_case_info


def image_path(token: str, view_name: str) -> str:
    """Path of a view's PNG relative to the dataset folder."""
    return f'images/{token}/{view_name}.png'


def finish_case(out_dir: str, token: str, patient_id: str, source: str, ct_meta: dict,
                geometry: Acquisition, line_integrals: np.ndarray,
                findings: Sequence[Finding],
                encode: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> dict:
    """Write a case's PNGs and return its info item (boxes from the findings' masks).

    Args:
        out_dir (str): dataset folder.
        token, patient_id, source: see
            :func:`~projects.mv2d_xray.core.data_format.build_case_info`.
        ct_meta (dict): ``shape``, ``spacing_mm``, ``series_uid`` of the volume.
        geometry (Acquisition): the views; their ``lidar2img`` place the 2D boxes.
        line_integrals (np.ndarray): ``(num_views, H, W)`` renders (mm of water).
        findings (Sequence[Finding]): in the volume's index grid.
        encode (callable, optional): one view's ``(H, W)`` line integrals -> the PNG's
            pixels. Defaults to :func:`~data_converters.render.to_uint8` (8-bit); a 16-bit
            source passes :func:`~data_converters.image_encoding.to_uint16` with its window.
    """
    from data_converters.render import to_uint8
    encode = to_uint8 if encode is None else encode
    paths = []
    for view, name in enumerate(geometry.view_names):
        paths.append(image_path(token, name))
        write_png(osp.join(out_dir, paths[-1]), encode(line_integrals[view]))
    lidar2img = geometry.view_matrices()['lidar2img']
    shape, spacing = ct_meta['shape'], ct_meta['spacing_mm']
    instances, boxes2d = [], []
    for finding in findings:
        instances.append(dict(bbox_3d=finding.box3d(shape, spacing), **finding.attributes()))
        boxes2d.append(finding.boxes2d(geometry, lidar2img, shape, spacing))
    return build_case_info(token, patient_id, source, ct_meta, geometry, paths, instances,
                           boxes2d)

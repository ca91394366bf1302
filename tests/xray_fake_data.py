"""Tiny converted datasets written in a test's tmp dir, following README's *Data format*.

Views are rendered from :class:`~projects.mv2d_xray.core.geometry.XrayGeometry`: a dark
background with one Gaussian blob per finding, centred on the projection of the finding's
centre; the 2D boxes are the projected 3D boxes clipped to the image, so tests can compare
the pipeline's 2D boxes and images with 3D -> 2D projections.
"""
import os
import os.path as osp
from typing import Optional, Sequence

import cv2
import mmengine
import numpy as np

from projects.mv2d_xray.core.data_format import FORMAT_VERSION
from projects.mv2d_xray.core.geometry import XrayGeometry, project_boxes3d, project_points

#: A finding: ct centre and size (mm), label, ignore flag.
DEFAULT_CASES = (
    [dict(centre=(10.0, -5.0, 8.0), size=(10.0, 12.0, 8.0), label=0, ignore=0),
     dict(centre=(-20.0, 15.0, -12.0), size=(6.0, 6.0, 6.0), label=0, ignore=1),
     dict(centre=(-8.0, 20.0, 15.0), size=(14.0, 12.0, 10.0), label=0, ignore=0)],
    [],                                                              # a negative case
    [dict(centre=(0.0, 0.0, 0.0), size=(16.0, 16.0, 16.0), label=0, ignore=0)],
)


def fake_geometry(num_views: int = 3, image_size=(48, 64)) -> XrayGeometry:
    """Small views: 4 mm pixels, so ct points within about +-45 mm stay in the image."""
    return XrayGeometry(num_views=num_views, image_size=image_size,
                        pixel_spacing_mm=256.0 / max(image_size))


def render_view(lidar2img: np.ndarray, findings: Sequence[dict], image_size,
                sigma_px: float = 2.5, color: bool = False) -> np.ndarray:
    """8-bit view: background 20, a blob of peak 220 at each finding's projected centre."""
    height, width = image_size
    rows = np.arange(height)[:, None] + 0.5
    cols = np.arange(width)[None, :] + 0.5
    img = np.full((height, width), 20.0)
    for finding in findings:
        (u, v), = project_points(lidar2img, np.array([finding['centre']]))[0]
        img += 200.0 * np.exp(-((cols - u) ** 2 + (rows - v) ** 2) / (2 * sigma_px ** 2))
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2) if color else img


def write_fake_dataset(root: str,
                       cases: Sequence[Sequence[dict]] = DEFAULT_CASES,
                       num_views: int = 3,
                       image_size=(48, 64),
                       classes: Sequence[str] = ('nodule',),
                       split: str = 'train',
                       prefix: str = 'fake',
                       format_version: Optional[int] = FORMAT_VERSION,
                       sigma_px: float = 2.5,
                       color_views: Sequence[int] = ()) -> str:
    """Write images and ``<prefix>_infos_<split>.pkl`` under ``root``; returns the pickle's
    file name (relative to ``root``). ``color_views`` are saved as 3-channel PNGs."""
    geometry = fake_geometry(num_views, image_size)
    mats = geometry.view_matrices()
    height, width = geometry.image_size
    data_list = []
    for idx, findings in enumerate(cases):
        token = f'fake-{split}-{idx:04d}'
        instances = [dict(bbox_3d=[*f['centre'], *f['size'], 0.0],
                          bbox_label_3d=int(f['label']), ignore_flag=int(f['ignore']),
                          nodule_id=i, num_readers=4 - int(f['ignore']) * 3,
                          diameter_mm=float(np.mean(f['size'])),
                          volume_mm3=float(np.prod(f['size'])), characteristics={})
                     for i, f in enumerate(findings)]
        images, cam_instances = {}, {}
        for view, name in enumerate(geometry.view_names):
            rel_path = osp.join('images', token, f'{name}.png')
            os.makedirs(osp.join(root, 'images', token), exist_ok=True)
            cv2.imwrite(osp.join(root, rel_path),
                        render_view(mats['lidar2img'][view], findings, image_size, sigma_px,
                                    color=view in color_views))
            images[name] = dict(img_path=rel_path, height=height, width=width,
                                theta_rad=geometry.angles_rad[view],
                                **{k: mats[k][view].tolist() for k in mats})
            boxes = []
            for i, inst in enumerate(instances):
                box = project_boxes3d(mats['lidar2img'][view], np.array([inst['bbox_3d']]))[0]
                box = np.clip(box, 0, [width, height, width, height])
                if box[2] > box[0] and box[3] > box[1]:
                    boxes.append(dict(bbox=box.tolist(), bbox_label=inst['bbox_label_3d'],
                                      instance_id=i, ignore_flag=inst['ignore_flag']))
            cam_instances[name] = boxes
        data_list.append(dict(sample_idx=idx, token=token, patient_id=token,
                              source='synthetic', ct=dict(shape=[64, 64, 32],
                                                          spacing_mm=[1.0, 1.0, 2.0],
                                                          series_uid=f'uid-{idx}'),
                              images=images, instances=instances,
                              cam_instances=cam_instances))
    metainfo = dict(dataset='mv2d-xray', info_version='2.0', classes=tuple(classes),
                    categories={c: i for i, c in enumerate(classes)},
                    geometry=geometry.to_metainfo(), converter=dict(source='test'))
    if format_version is not None:
        metainfo['format_version'] = format_version
    ann_file = f'{prefix}_infos_{split}.pkl'
    mmengine.dump(dict(metainfo=metainfo, data_list=data_list), osp.join(root, ann_file))
    return ann_file

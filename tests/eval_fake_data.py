"""A small converted dataset with *exact* 2D ground truth, for the evaluation tests.

Findings are ellipsoids; their 2D boxes are the exact tight boxes of their perspective
silhouettes (from the projected dual quadric, not from the projected 3D box), as the
converter's boxes are the tight boxes of the projected voxels. So the 2D box centres are
not exactly the projections of the 3D centres, as with real data. Writes README's *Data
format*: images, ``<prefix>_infos_<split>.pkl`` and ``<prefix>_infos_<split>_2d.coco.json``.
"""
import json
import os
import os.path as osp
from typing import Optional, Sequence

import cv2
import mmengine
import numpy as np

from projects.mv2d_xray.core.geometry import XrayGeometry, project_points

#: Per case a list of findings: ct centre (mm), semi-axes (mm), label, ignore flag.
DEFAULT_EVAL_CASES = (
    [dict(centre=(20.0, -30.0, 10.0), semi=(3.0, 2.5, 2.0), label=0, ignore=0),
     dict(centre=(-40.0, 10.0, -20.0), semi=(4.0, 3.5, 3.0), label=0, ignore=0),
     dict(centre=(0.0, 45.0, 25.0), semi=(15.0, 12.0, 10.0), label=0, ignore=0)],
    [],                                                               # negative case
    [dict(centre=(35.0, 20.0, -5.0), semi=(2.5, 2.5, 2.5), label=0, ignore=0),
     dict(centre=(-25.0, -35.0, 30.0), semi=(1.2, 1.2, 1.2), label=0, ignore=1)],
)


def silhouette_box(lidar2img: np.ndarray, centre, semi) -> np.ndarray:
    """Exact ``[x1, y1, x2, y2]`` of an axis-aligned ellipsoid's perspective silhouette.

    The ellipsoid's dual quadric ``Q* = H diag(a^2, b^2, c^2, -1) H^T`` projects to the dual
    conic ``C* = P Q* P^T``; the image lines ``u = x`` tangent to the silhouette solve
    ``C*_00 - 2 x C*_02 + x^2 C*_22 = 0`` (and likewise for ``v``).
    """
    h = np.eye(4)
    h[:3, 3] = centre
    dual = h @ np.diag([*(np.asarray(semi, np.float64) ** 2), -1.0]) @ h.T
    p = np.asarray(lidar2img, np.float64)[:3]
    conic = p @ dual @ p.T
    bounds = []
    for axis in (0, 1):
        a, b, c = conic[2, 2], -2 * conic[axis, 2], conic[axis, axis]
        disc = np.sqrt(b * b - 4 * a * c)
        bounds.append(sorted(((-b - disc) / (2 * a), (-b + disc) / (2 * a))))
    return np.array([bounds[0][0], bounds[1][0], bounds[0][1], bounds[1][1]])


def eval_geometry(num_views: int = 10, image_size=(192, 192)) -> XrayGeometry:
    """Views of the paper's geometry at a small size (pixel 800 / 192 mm at the detector)."""
    return XrayGeometry(num_views=num_views, image_size=image_size)


def write_eval_dataset(root: str, cases: Sequence[Sequence[dict]] = DEFAULT_EVAL_CASES,
                       num_views: int = 10, image_size=(192, 192), prefix: str = 'evalfake',
                       split: str = 'val', classes: Sequence[str] = ('nodule',),
                       tokens: Optional[Sequence[str]] = None) -> dict:
    """Write the dataset; returns ``dict(root, infos, coco)`` (absolute paths)."""
    geometry = eval_geometry(num_views, image_size)
    mats = geometry.view_matrices()
    height, width = geometry.image_size
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    data_list, images, annotations = [], [], []
    for idx, findings in enumerate(cases):
        token = tokens[idx] if tokens else f'evalfake-{idx:04d}'
        instances = []
        for i, f in enumerate(findings):
            size = [2.0 * s for s in f['semi']]
            instances.append(dict(
                bbox_3d=[*map(float, f['centre']), *size, 0.0],
                bbox_label_3d=int(f['label']), ignore_flag=int(f['ignore']), nodule_id=i,
                num_readers=1 if f['ignore'] else 4, diameter_mm=float(max(size)),
                volume_mm3=float(4 / 3 * np.pi * np.prod(f['semi'])), characteristics={}))
        info_images, cam_instances = {}, {}
        os.makedirs(osp.join(root, 'images', token), exist_ok=True)
        for view, name in enumerate(geometry.view_names):
            lidar2img = mats['lidar2img'][view]
            rel_path = osp.join('images', token, f'{name}.png')
            img = np.full((height, width), 40.0)
            boxes = []
            for i, (f, inst) in enumerate(zip(findings, instances)):
                box = silhouette_box(lidar2img, f['centre'], f['semi'])
                (u, v), = project_points(lidar2img, np.array([f['centre']]))[0]
                ru, rv = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
                img += 150.0 * np.exp(-((cols - u) / max(ru, 0.7)) ** 2
                                      - ((rows - v) / max(rv, 0.7)) ** 2)
                box = np.clip(box, 0, [width, height, width, height])
                if box[2] > box[0] and box[3] > box[1]:
                    boxes.append(dict(bbox=box.tolist(), bbox_label=inst['bbox_label_3d'],
                                      instance_id=i, ignore_flag=inst['ignore_flag']))
            cv2.imwrite(osp.join(root, rel_path), np.clip(img, 0, 255).astype(np.uint8))
            matrices = {k: mats[k][view].tolist() for k in mats}
            info_images[name] = dict(img_path=rel_path, height=height, width=width,
                                     theta_rad=geometry.angles_rad[view], **matrices)
            cam_instances[name] = boxes
            image_id = len(images) + 1
            images.append(dict(id=image_id, file_name=rel_path, width=width, height=height,
                               token=token, view=name, view_index=view,
                               theta_rad=geometry.angles_rad[view], **matrices))
            for b in boxes:
                x1, y1, x2, y2 = b['bbox']
                inst = instances[b['instance_id']]
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id,
                    category_id=b['bbox_label'] + 1, bbox=[x1, y1, x2 - x1, y2 - y1],
                    area=(x2 - x1) * (y2 - y1), iscrowd=b['ignore_flag'],
                    instance_id=b['instance_id'], nodule_id=inst['nodule_id'],
                    bbox_3d=inst['bbox_3d'], diameter_mm=inst['diameter_mm'],
                    num_readers=inst['num_readers'], characteristics={}))
        data_list.append(dict(sample_idx=idx, token=token, patient_id=token,
                              source='synthetic',
                              ct=dict(shape=[128, 128, 64], spacing_mm=[1.0, 1.0, 2.0],
                                      series_uid=f'uid-{idx}'),
                              images=info_images, instances=instances,
                              cam_instances=cam_instances))
    metainfo = dict(dataset='mv2d-xray', info_version='2.0', format_version=1,
                    classes=tuple(classes), categories={c: i for i, c in enumerate(classes)},
                    geometry=geometry.to_metainfo(), converter=dict(source='tests'))
    infos = osp.join(root, f'{prefix}_infos_{split}.pkl')
    mmengine.dump(dict(metainfo=metainfo, data_list=data_list), infos)
    coco = osp.join(root, f'{prefix}_infos_{split}_2d.coco.json')
    with open(coco, 'w') as f:
        json.dump(dict(images=images, annotations=annotations,
                       categories=[dict(id=i + 1, name=c) for i, c in enumerate(classes)]), f)
    return dict(root=osp.abspath(root), infos=osp.abspath(infos), coco=osp.abspath(coco))


def run_tool(name: str, *argv: str) -> int:
    """Run ``tools/<name>.py`` in this process with ``argv``; returns its exit status (0
    when ``main()`` returns). Output goes to the caller's (captured) stdout / stderr."""
    import importlib.util
    import sys
    tools = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')
    if tools not in sys.path:
        sys.path.insert(0, tools)
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', osp.join(tools, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    old_argv = sys.argv
    sys.argv = [f'{name}.py', *argv]
    try:
        module.main()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        sys.argv = old_argv
    return 0

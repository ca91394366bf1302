"""A case at a glance (matplotlib, Agg backend, PNG): :func:`draw_case` draws a case's N
views in a grid, each view twice -- whole, and zoomed on the findings -- with the
ground-truth 2D boxes, the predicted 2D boxes, and the ground-truth and predicted 3D boxes
projected through the view's ``lidar2img`` (as wireframes): if the magenta wireframes sit on
the green ones in every view, the 3D boxes are right.
"""
from __future__ import annotations

import math
import os.path as osp
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from projects.mv2d_xray.core.data_format import view_box_ignored
from projects.mv2d_xray.core.geometry import box3d_corners, project_points
from projects.mv2d_xray.mv2d_xray.visualization.figures import pyplot, save_png

#: Colours: ground truth green (drawn wide, under the predictions), ignore regions yellow,
#: predictions magenta (3D) / cyan (2D): a 3D box on its finding shows as magenta in green.
GT_COLOR, IGNORE_COLOR, PRED3D_COLOR, PRED2D_COLOR = '#2ee62e', '#ffcc00', '#ff33cc', '#33ccff'
#: The 12 edges of a box from :func:`box3d_corners` (corner index = 4 ix + 2 iy + iz).
BOX_EDGES = [(i, j) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count('1') == 1]


def project_box_edges(lidar2img: np.ndarray, box: Sequence[float]) -> Optional[np.ndarray]:
    """``(12, 2, 2)`` image segments of a 3D box's edges, or None if a corner is behind
    the source."""
    corners = box3d_corners(np.asarray(box, np.float64))                 # (8, 3)
    uv, depth = project_points(np.asarray(lidar2img, np.float64), corners)
    if (depth <= 0).any():
        return None
    return np.stack([uv[[i, j]] for i, j in BOX_EDGES])


def _read_view(path: str) -> np.ndarray:
    """A view image as ``(H, W)`` uint8; ``FileNotFoundError`` naming ``path``."""
    import cv2
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(f'cannot read view image {path}')
    return img


def _zoom_window(info: dict, preds: List[dict], lidar2img: np.ndarray,
                 image_hw: Tuple[int, int], min_half_px: float,
                 finding: Optional[int] = None) -> Tuple[float, float, float]:
    """``(u, v, half)`` of a square window in one view: around finding ``finding`` if
    given, else around all findings (ignore regions only without findings, else the top
    prediction), or around the largest finding when they spread over half the image."""
    instances = info.get('instances') or []
    if finding is not None:
        boxes = [instances[finding]['bbox_3d']]
    else:
        boxes = [i['bbox_3d'] for i in instances if not i.get('ignore_flag')] or \
            [i['bbox_3d'] for i in instances] or [p['bbox_3d'] for p in preds[:1]]
    h, w = image_hw
    if not boxes:
        return w / 2, h / 2, max(w, h) / 2

    def window(selected):
        corners = box3d_corners(np.asarray(selected, np.float64)).reshape(-1, 3)
        uv, _ = project_points(lidar2img, corners)
        lo, hi = uv.min(0), uv.max(0)
        centre = (lo + hi) / 2
        return float(centre[0]), float(centre[1]), \
            max(min_half_px, 1.2 * float((hi - lo).max()))

    u, v, half = window(boxes)
    if half > max(h, w) / 4 and len(boxes) > 1:
        u, v, half = window([max(boxes, key=lambda b: float(np.prod(b[3:6])))])
    return u, v, half


@dataclass
class _CaseLayers:
    """What is drawn over every view of a case.

    Attributes:
        info: the case's info pickle item (``instances``: findings and ignore regions,
            ``bbox_3d`` in ``ct`` mm; ``cam_instances``: per view name the ground-truth
            2D boxes, ``bbox`` xyxy in original ``img`` pixels).
        preds: the 3D predictions drawn, by descending score (``bbox_3d`` ct mm, ``score``).
        dets2d: the 2D detections drawn (``view`` name, ``bbox`` ``[x, y, w, h]`` img px).
        top_score: the highest drawn 3D score (the opaque one; others fade relative to it).
    """
    info: dict
    preds: List[dict]
    dets2d: List[dict]
    top_score: float

    @property
    def instances(self) -> List[dict]:
        return self.info.get('instances') or []


def _case_layers(info: dict, preds3d: Sequence[dict], dets2d: Sequence[dict],
                 score_thr: float, max_preds: int) -> _CaseLayers:
    """The predictions scoring ``>= score_thr``: the ``max_preds`` best 3D ones and all 2D
    ones."""
    preds = sorted([p for p in preds3d if p['score'] >= score_thr],
                   key=lambda p: -p['score'])[:max_preds]
    return _CaseLayers(info=info, preds=preds,
                       dets2d=[d for d in dets2d if d['score'] >= score_thr],
                       top_score=max([float(p['score']) for p in preds] + [1e-12]))


def _view_grid(plt, num_views: int, columns: int):
    """A figure with two rows of axes (whole view, zoom) per row of ``columns`` views;
    returns ``(fig, axes)``, ``axes`` ``(2 * rows, min(columns, num_views))``."""
    num_rows = math.ceil(num_views / columns)
    cols = min(columns, num_views)
    return plt.subplots(2 * num_rows, cols, figsize=(3.1 * cols, 6.4 * num_rows),
                        squeeze=False)


def _draw_boxes(ax, name: str, lidar2img: np.ndarray, layers: _CaseLayers,
                lw: float) -> None:
    """Draw on one axes of view ``name``, bottom to top: the ground-truth 2D boxes, the
    ground-truth 3D boxes projected through ``lidar2img`` (``(4, 4)`` ct -> img), the 2D
    detections, the predicted 3D boxes. ``lw``: the line width, points."""
    from matplotlib.patches import Rectangle
    instances = layers.instances
    for cam in (layers.info.get('cam_instances') or {}).get(name, []):
        x1, y1, x2, y2 = cam['bbox']
        inst_id = int(cam.get('instance_id', -1))
        ignored = view_box_ignored(cam, instances[inst_id]
                                   if 0 <= inst_id < len(instances) else {})
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                               ec=IGNORE_COLOR if ignored else GT_COLOR, lw=lw,
                               ls=':' if ignored else '--'))
    for inst in layers.instances:
        edges = project_box_edges(lidar2img, inst['bbox_3d'])
        if edges is not None:
            color = IGNORE_COLOR if inst.get('ignore_flag') else GT_COLOR
            for seg in edges:
                ax.plot(seg[:, 0], seg[:, 1], color=color, lw=lw * 2.2, alpha=0.8,
                        solid_capstyle='round')
    for det in layers.dets2d:
        if det.get('view') == name:
            x, y, w, h = det['bbox']
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec=PRED2D_COLOR, lw=lw,
                                   ls='--'))
    for p in layers.preds:
        edges = project_box_edges(lidar2img, p['bbox_3d'])
        if edges is None:
            continue
        for seg in edges:
            ax.plot(seg[:, 0], seg[:, 1], color=PRED3D_COLOR, lw=lw,
                    alpha=0.35 + 0.65 * float(p['score']) / layers.top_score)


def _draw_view(ax_full, ax_zoom, name: str, view: dict, img: np.ndarray,
               layers: _CaseLayers, window: Tuple[float, float, float]) -> None:
    """One view twice: whole (with the zoom window outlined) and zoomed on ``window``
    ``(u, v, half)`` (img px) with the scores of the three best 3D predictions."""
    from matplotlib.patches import Rectangle
    lidar2img = np.asarray(view['lidar2img'], np.float64)
    zu, zv, half = window
    for ax, lw in ((ax_full, 0.8), (ax_zoom, 1.4)):
        ax.imshow(img, cmap='gray', vmin=0, vmax=255, interpolation='nearest',
                  extent=(0, img.shape[1], img.shape[0], 0))
        _draw_boxes(ax, name, lidar2img, layers, lw)
        ax.set_xticks([])
        ax.set_yticks([])
    ax_full.set_xlim(0, img.shape[1])
    ax_full.set_ylim(img.shape[0], 0)
    ax_full.add_patch(Rectangle((zu - half, zv - half), 2 * half, 2 * half, fill=False,
                                ec='white', lw=0.6, ls='-', alpha=0.6))
    for p in layers.preds[:3]:   # score labels on the zoom
        (u, v), = project_points(lidar2img, np.asarray([p['bbox_3d'][:3]]))[0]
        ax_zoom.text(u, v - 0.15 * half, f'{p["score"]:.2f}', color=PRED3D_COLOR,
                     fontsize=7, ha='center', va='bottom', clip_on=True)
    ax_zoom.set_xlim(zu - half, zu + half)
    ax_zoom.set_ylim(zv + half, zv - half)
    theta = view.get('theta_rad')
    ax_full.set_title(f'{name}' + (f'  {math.degrees(theta):.0f}°'
                                   if theta is not None else ''), fontsize=9)
    ax_zoom.set_title(f'zoom ×{img.shape[1] / (2 * half):.1f}', fontsize=8)


def _hide_unused_axes(axes, num_views: int, columns: int) -> None:
    """Blank the grid cells after the last view."""
    cols = axes.shape[1]
    for n in range(num_views, axes.shape[0] // 2 * columns):
        row, col = divmod(n, columns)
        if col < cols:
            axes[2 * row, col].axis('off')
            axes[2 * row + 1, col].axis('off')


def _title_lines(info: dict, num_views: int, layers: _CaseLayers, score_thr: float,
                 summary: dict, title: Optional[str]) -> List[str]:
    """The figure title: ``title`` (default: case id and counts), then a line per finding
    with its nearest drawn prediction (mm) -- at most 6 lines."""
    lines = [title or f'{info.get("token", "")}: {num_views} views, '
             f'{sum(1 for i in layers.instances if not i.get("ignore_flag"))} finding(s), '
             f'{len(layers.preds)} prediction(s) drawn (score >= {score_thr:g})']
    for k, s in summary.items():
        if s['nearest_mm'] is None:
            lines.append(f'finding {k} (⌀ {s["diameter_mm"]:.1f} mm): no prediction drawn')
        else:
            lines.append(f'finding {k} (⌀ {s["diameter_mm"]:.1f} mm): nearest drawn '
                         f'prediction {s["nearest_mm"]:.1f} mm away (score {s["score"]:.2f})')
    return lines[:6]


def _add_title_and_legend(fig, lines: List[str], with_gt: bool = True,
                          with_dets2d: bool = True) -> None:
    """The title lines on top, the legend of the colours at the bottom (without the
    ground-truth entries when ``with_gt`` is False, without the 2D detections' when
    ``with_dets2d`` is False), then the layout."""
    from matplotlib.lines import Line2D
    fig.suptitle('\n'.join(lines), fontsize=10)
    handles = [Line2D([], [], color=GT_COLOR, lw=1.5, ls='--', label='ground-truth 2D box'),
               Line2D([], [], color=GT_COLOR, lw=3, label='ground-truth 3D box'),
               Line2D([], [], color=IGNORE_COLOR, lw=1.5, ls=':', label='ignore region'),
               Line2D([], [], color=PRED3D_COLOR, lw=1.5, label='predicted 3D box'),
               Line2D([], [], color=PRED2D_COLOR, lw=1.5, ls='--', label='predicted 2D box')]
    handles = (handles[:3] if with_gt else []) + handles[3:4] + \
        (handles[4:] if with_dets2d else [])
    fig.legend(handles=handles, loc='lower center', ncol=len(handles), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.02, 1, 1 - 0.14 * len(lines) / fig.get_figheight()))


def draw_case(info: dict, data_root: str, out_file: str,
              preds3d: Sequence[dict] = (), dets2d: Sequence[dict] = (),
              score_thr: float = 0.1, max_preds: int = 5, columns: int = 5,
              zoom_min_half_px: Optional[float] = None, zoom_finding: Optional[int] = None,
              title: Optional[str] = None,
              images: Optional[Sequence[np.ndarray]] = None) -> dict:
    """Draw a case's views with ground truth and predictions (see the module docstring).

    Args:
        info: the case's info pickle item (``images`` with ``img_path`` and ``lidar2img``
            ``(4, 4)`` ct -> img, ``instances``, ``cam_instances``).
        data_root: the dataset directory (``img_path`` is relative to it).
        out_file: PNG path.
        preds3d: README-format predictions of the case (``bbox_3d`` ``[x, y, z, dx, dy,
            dz, yaw]`` in ct mm, ``score``, ``label``).
        dets2d: 2D detections: ``view`` (name), ``bbox`` ``[x, y, w, h]`` (original
            pixels), ``score``.
        score_thr: predictions (3D and 2D) below are not drawn.
        max_preds: at most this many 3D predictions (highest scores) are drawn; the
            highest is opaque, lower ones fade with their score relative to it.
        columns: views per row.
        zoom_min_half_px: smallest half-size of the zoom windows, px (default: 4 % of the
            image's larger side, at least 6 px).
        zoom_finding: index (into ``info['instances']``) of the finding to zoom on;
            default: all findings, or the largest one when they are far apart.
        title: figure title (default: the case id and a summary).
        images: per view of ``info['images']`` (in its order) the ``(H, W)`` grey image
            to draw (shown 0..255), instead of reading ``img_path`` (a study's images,
            whatever their file format).

    Returns:
        dict: ``{finding index: dict(diameter_mm, nearest_mm, score)}``: per finding (not
        the ignore regions) its diameter, the distance (mm) from its centre to the nearest
        drawn prediction's centre and that prediction's score (``None`` without
        predictions).

    Raises:
        IndexError: ``zoom_finding`` is not a finding of the case.
        FileNotFoundError: a view image cannot be read (naming it).
    """
    layers = _case_layers(info, preds3d, dets2d, score_thr, max_preds)
    if zoom_finding is not None and not 0 <= zoom_finding < len(layers.instances):
        raise IndexError(f'case {info.get("token")} has no finding {zoom_finding} '
                         f'({len(layers.instances)} findings)')
    views = list(info['images'].items())
    plt = pyplot()
    fig, axes = _view_grid(plt, len(views), columns)
    try:
        for n, (name, view) in enumerate(views):
            row, col = divmod(n, columns)
            img = images[n] if images is not None else \
                _read_view(osp.join(data_root, view['img_path']))
            min_half = zoom_min_half_px or max(6.0, 0.04 * max(img.shape[:2]))
            window = _zoom_window(info, layers.preds, np.asarray(view['lidar2img'], np.float64),
                                  img.shape[:2], min_half, zoom_finding)
            _draw_view(axes[2 * row, col], axes[2 * row + 1, col], name, view, img, layers,
                       window)
        _hide_unused_axes(axes, len(views), columns)
        summary = _finding_summary(layers.instances, layers.preds)
        with_gt = bool(layers.instances or info.get('cam_instances'))
        _add_title_and_legend(fig, _title_lines(info, len(views), layers, score_thr, summary,
                                                title), with_gt, bool(dets2d) or with_gt)
        save_png(fig, out_file)
    finally:
        plt.close(fig)
    return summary


def _finding_summary(instances: Sequence[dict], preds: Sequence[dict]) -> dict:
    """Per finding (ignore regions skipped) its diameter (mm; the largest box extent when
    the info has none), and the distance (mm) to the nearest prediction's centre and its
    score (``None`` without predictions)."""
    out = {}
    for k, inst in enumerate(instances):
        if inst.get('ignore_flag'):
            continue
        box = np.asarray(inst['bbox_3d'], np.float64)
        diameter = inst.get('diameter_mm') or float(box[3:6].max())
        if preds:
            dist = [float(np.linalg.norm(np.asarray(p['bbox_3d'][:3]) - box[:3]))
                    for p in preds]
            j = int(np.argmin(dist))
            out[k] = dict(diameter_mm=float(diameter), nearest_mm=dist[j],
                          score=float(preds[j]['score']))
        else:
            out[k] = dict(diameter_mm=float(diameter), nearest_mm=None, score=None)
    return out

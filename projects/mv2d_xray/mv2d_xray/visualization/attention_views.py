"""One 3D finding and the evidence it came from (matplotlib, Agg backend, PNG):
:func:`draw_finding_evidence` draws every view of a case with

* the finding's 3D box projected through the view's ``lidar2img`` (magenta wireframe,
  as in :mod:`~projects.mv2d_xray.mv2d_xray.visualization.case_views`);
* the 2D detection its query was lifted from (orange, thick);
* the detections the query cross-attended to, filled in blue with an opacity that grows
  with their attention weight (last decoder layer) and labelled with it;

and, below the views, a bar chart of the share of the cross-attention each view received
(last layer, and averaged over the layers).

The explanation is one dict of ``Det3DDataSample.explanations``
(``MV2DXray.predict(..., explain=True)``, format in
:mod:`projects.mv2d_xray.mv2d_xray.models.explanation`). Its boxes are in the ``img`` frame
of the network input: draw it on the network-input images (``inputs['img']`` of the
pipeline) with ``metainfo['lidar2img']``, or on the original images with
``metainfo['ori_lidar2img']`` after ``explanation_to_original(explanation,
metainfo['img_aug_matrix'])``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from projects.mv2d_xray.core.geometry import project_boxes3d, view_name
from projects.mv2d_xray.mv2d_xray.models.explanation import view_probe_mask
from projects.mv2d_xray.mv2d_xray.visualization.case_views import PRED3D_COLOR, project_box_edges
from projects.mv2d_xray.mv2d_xray.visualization.figures import pyplot, save_png

#: Colours: the source detection orange, the attended detections blue (filled, opacity
#: by weight); the projected 3D box is case_views' magenta.
SOURCE_COLOR, ATTENDED_COLOR = '#ff8c1a', '#3d7eff'
#: The explanation fields the picture reads.
REQUIRED_KEYS = ('source_view', 'source_bbox', 'attended_views', 'attended_bboxes',
                 'attention', 'view_attention')
#: Inches per view panel, and the height of the bar-chart row.
PANEL_INCHES, BAR_INCHES = 3.0, 2.6

Images = Union[np.ndarray, Sequence[str]]


def evidence_figure_size(num_views: int, columns: int = 5) -> Tuple[float, float]:
    """``(width, height)`` in inches of the figure of :func:`draw_finding_evidence` for
    ``num_views`` views in rows of ``columns`` (the PNG is that times ``DEFAULT_DPI``)."""
    cols = min(columns, num_views)
    rows = math.ceil(num_views / cols)
    return max(PANEL_INCHES * cols, 6.0), PANEL_INCHES * rows + BAR_INCHES


def load_views(images: Images) -> np.ndarray:
    """The views as an ``(N, H, W)`` array: from an ``(N, H, W)`` array (uint8 kept,
    other types as float32), ``(N, 3, H, W)`` or ``(N, H, W, 3)`` arrays (tensors on the
    CPU too; colour channels averaged, float32) or from N image paths (read in grayscale,
    uint8; ``FileNotFoundError`` naming the path)."""
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], str):
        import cv2
        views = []
        for path in images:
            img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise FileNotFoundError(f'cannot read view image {path}')
            views.append(img)
        return np.stack(views)
    views = np.asarray(images)
    if views.ndim == 4 and views.shape[1] in (1, 3):
        views = views.mean(axis=1)
    elif views.ndim == 4 and views.shape[3] in (1, 3):
        views = views.mean(axis=3)
    if views.ndim != 3:
        raise ValueError(f'images must be (N, H, W), (N, 3, H, W) or (N, H, W, 3), got '
                         f'shape {views.shape}')
    return views if views.dtype == np.uint8 else views.astype(np.float32)


def box_array(box_3d) -> np.ndarray:
    """``(7,)`` float64 ``[x, y, z, dx, dy, dz, yaw]`` (gravity centre, ct mm) from such an
    array or from an mmdet3d boxes object holding one box (``pred_instances_3d.bboxes_3d[k]``,
    read through ``gravity_center`` / ``dims`` / ``yaw``: its ``tensor`` holds the bottom
    centre)."""
    if hasattr(box_3d, 'gravity_center'):
        if len(box_3d) != 1:
            raise ValueError(f'box_3d must hold one box, got {len(box_3d)}')
        parts = (box_3d.gravity_center, box_3d.dims, box_3d.yaw[:, None])
        return np.concatenate([np.asarray(p.detach().cpu(), np.float64)
                               for p in parts], axis=1)[0]
    return np.asarray(box_3d, np.float64).reshape(7)


def _as_numpy(explanation: dict) -> dict:
    """The fields of ``explanation`` the picture needs, as numpy arrays / ints."""
    missing = [key for key in REQUIRED_KEYS if key not in explanation]
    if missing:
        raise KeyError(f'explanation lacks {missing}')
    out = dict(source_view=int(explanation['source_view']),
               source_score=float(explanation.get('source_score', float('nan'))))
    for key in ('source_bbox', 'attended_bboxes', 'attended_views', 'attention',
                'attention_mean', 'view_attention'):
        if key in explanation:
            out[key] = np.asarray(explanation[key], dtype=np.float64)
    out['source_bbox'] = out['source_bbox'].reshape(4)
    out['attended_bboxes'] = out['attended_bboxes'].reshape(-1, 4)
    out['attended_views'] = out['attended_views'].astype(np.int64).reshape(-1)
    out['probes'] = view_probe_mask(explanation)
    return out


def _window(lidar2img: np.ndarray, box_3d: np.ndarray, boxes: np.ndarray,
            image_hw: Tuple[int, int]) -> Tuple[float, float, float]:
    """``(u, v, half)``: a square window (img px) around the finding's projected box and
    the attended ``boxes`` ``(K, 4)`` of one view, at least 6 % of the image wide."""
    height, width = image_hw
    proj = project_boxes3d(lidar2img, box_3d[None])[0]              # (4,)
    lo = np.minimum(proj[:2], boxes[:, :2].min(0)) if len(boxes) else proj[:2]
    hi = np.maximum(proj[2:], boxes[:, 2:].max(0)) if len(boxes) else proj[2:]
    centre = (lo + hi) / 2
    half = max(0.06 * max(height, width), 8.0, 0.75 * float((hi - lo).max()))
    return float(centre[0]), float(centre[1]), half


def _draw_view(ax, img: np.ndarray, lidar2img: np.ndarray, box_3d: np.ndarray,
               evidence: dict, view: int, zoom: bool, display_range: Tuple[float, float]
               ) -> None:
    """One view: the image, the attended detections of ``view`` (filled by weight,
    labelled), its source detection and the projected 3D box; zoomed on them if
    ``zoom``."""
    from matplotlib.patches import Rectangle
    vmin, vmax = display_range
    ax.imshow(img, cmap='gray', vmin=vmin, vmax=vmax, interpolation='nearest',
              extent=(0, img.shape[1], img.shape[0], 0))
    weights = evidence['attention']
    top = max(float(weights.max()), 1e-12) if len(weights) else 1.0
    in_view = np.nonzero(evidence['attended_views'] == view)[0]
    probes = evidence['probes']
    for k in in_view:
        x1, y1, x2, y2 = evidence['attended_bboxes'][k]
        alpha = 0.08 + 0.42 * float(weights[k]) / top
        if probes[k]:       # a view probe (no 2D detection there): dashed outline
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=ATTENDED_COLOR,
                                   ls='--', lw=1.2))
        else:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fc=ATTENDED_COLOR,
                                   ec=ATTENDED_COLOR, alpha=alpha, lw=1.0))
        ax.text(x2, y1, f'{weights[k]:.2f}', color=ATTENDED_COLOR, fontsize=7, ha='left',
                va='bottom', clip_on=True)
    if evidence['source_view'] == view:
        x1, y1, x2, y2 = evidence['source_bbox']
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=SOURCE_COLOR,
                               lw=2.0))
    edges = project_box_edges(lidar2img, box_3d)
    if edges is not None:
        for seg in edges:
            ax.plot(seg[:, 0], seg[:, 1], color=PRED3D_COLOR, lw=1.0)
    if zoom:
        u, v, half = _window(lidar2img, box_3d, evidence['attended_bboxes'][in_view],
                             img.shape)
        ax.set_xlim(u - half, u + half)
        ax.set_ylim(v + half, v - half)
    else:
        ax.set_xlim(0, img.shape[1])
        ax.set_ylim(img.shape[0], 0)
    ax.set_xticks([])
    ax.set_yticks([])


def _mean_view_attention(evidence: dict, num_views: int) -> Optional[np.ndarray]:
    """``(num_views,)`` view shares of the layer-averaged attention, if present."""
    if 'attention_mean' not in evidence:
        return None
    return np.bincount(evidence['attended_views'], weights=evidence['attention_mean'],
                       minlength=num_views)[:num_views]


def _draw_view_bars(ax, evidence: dict, names: Sequence[str]) -> None:
    """Bars of ``view_attention`` (last layer) and, lighter, of the layer average per
    view; the source view's bars orange."""
    from matplotlib.patches import Patch
    num_views = len(names)
    x = np.arange(num_views)
    colors = [SOURCE_COLOR if v == evidence['source_view'] else ATTENDED_COLOR
              for v in range(num_views)]
    mean = _mean_view_attention(evidence, num_views)
    width = 0.4 if mean is not None else 0.7
    offset = width / 2 if mean is not None else 0.0
    bars = ax.bar(x - offset, evidence['view_attention'], width, color=colors)
    handles = [Patch(fc='0.35', label='last layer')]
    if mean is not None:
        ax.bar(x + offset, mean, width, color=colors, alpha=0.4)
        handles.append(Patch(fc='0.35', alpha=0.4, label='mean over layers'))
    for bar, share in zip(bars, evidence['view_attention']):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f'{share:.2f}',
                ha='center', va='bottom', fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=7, rotation=90 if num_views > 10 else 0)
    ax.set_xlim(-0.6, num_views - 0.4)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel('share of cross-attention', fontsize=8)
    ax.grid(axis='y', alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc='upper right')


def _title(box_3d: np.ndarray, evidence: dict, names: Sequence[str],
           score: Optional[float]) -> str:
    x, y, z = box_3d[:3]
    line = f'finding at ({x:.1f}, {y:.1f}, {z:.1f}) mm ct, ' \
           f'{box_3d[3]:.1f} x {box_3d[4]:.1f} x {box_3d[5]:.1f} mm'
    if score is not None:
        line += f', score {score:.2f}'
    source = f'lifted from {names[evidence["source_view"]]}'
    if not math.isnan(evidence['source_score']):
        source += f' (2D score {evidence["source_score"]:.2f})'
    attended = len(evidence['attention'])
    probes = int(evidence['probes'].sum())
    what = f'{attended - probes} detection(s)' + (f' and {probes} view probe(s)' if probes
                                                  else '')
    return f'{line}\n{source}; attends to {what}'


def _legend(fig) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Line2D([], [], color=PRED3D_COLOR, lw=1.5, label='3D box, projected'),
               Line2D([], [], color=SOURCE_COLOR, lw=2.5, label='source detection'),
               Patch(fc=ATTENDED_COLOR, alpha=0.5,
                     label='attended detection (opacity, label: attention weight)'),
               Patch(fill=False, ec=ATTENDED_COLOR, ls='--', label='view probe (no detection)')]
    fig.legend(handles=handles, loc='lower center', ncol=4, fontsize=8, frameon=False)


def draw_finding_evidence(images: Images, lidar2img, explanation: dict, box_3d,
                          out_file: str, view_names: Optional[Sequence[str]] = None,
                          score: Optional[float] = None, columns: int = 5,
                          zoom: bool = True, title: Optional[str] = None) -> None:
    """Draw one 3D finding's cross-view evidence (see the module docstring).

    Args:
        images: the case's ``N`` views in the frame of the explanation's boxes: an
            ``(N, H, W)``, ``(N, 3, H, W)`` or ``(N, H, W, 3)`` array or N image paths
            (see :func:`load_views`). uint8 images are shown on 0..255, others on
            their 1st..99th percentiles.
        lidar2img: ``(N, 4, 4)`` ct -> img of the views (that frame).
        explanation: one dict of ``Det3DDataSample.explanations``
            (:func:`~projects.mv2d_xray.mv2d_xray.models.explanation.explain_query`;
            needs ``source_view``, ``source_bbox``, ``attended_views``,
            ``attended_bboxes``, ``attention``, ``view_attention``; uses
            ``source_score`` and ``attention_mean`` if present).
        box_3d: the finding's box: ``(7,)`` ``[x, y, z, dx, dy, dz, yaw]`` (gravity
            centre and extents, ct mm; the README's prediction format) or the mmdet3d
            box ``pred_instances_3d.bboxes_3d[k]`` (see :func:`box_array`).
        out_file: PNG path, written atomically.
        view_names: ``N`` names (default ``VIEW_00``...).
        score: the finding's 3D score, for the title.
        columns: views per row.
        zoom: zoom every view on the finding and its attended detections (default);
            False shows the whole views.
        title: figure title (default: the box, its score and its source).

    Raises:
        KeyError: the explanation lacks a field.
        ValueError: images, matrices and ``view_attention`` disagree on ``N``.
        FileNotFoundError: an image path cannot be read.
    """
    evidence = _as_numpy(explanation)
    views = load_views(images)
    lidar2img = np.asarray(lidar2img, np.float64).reshape(-1, 4, 4)
    box_3d = box_array(box_3d)
    num_views = len(views)
    names = list(view_names) if view_names is not None else [
        view_name(v, num_views) for v in range(num_views)]
    if not len(lidar2img) == len(evidence['view_attention']) == len(names) == num_views:
        raise ValueError(f'{num_views} images, {len(lidar2img)} lidar2img, '
                         f'{len(evidence["view_attention"])} view_attention entries and '
                         f'{len(names)} view names: they must agree')
    if views.dtype == np.uint8:
        display_range = (0.0, 255.0)
    else:
        display_range = tuple(float(p) for p in np.percentile(views, [1, 99]))
    cols = min(columns, num_views)
    rows = math.ceil(num_views / cols)
    plt = pyplot()
    fig = plt.figure(figsize=evidence_figure_size(num_views, columns))
    try:
        grid = fig.add_gridspec(rows + 1, cols,
                                height_ratios=[PANEL_INCHES] * rows + [BAR_INCHES])
        share = evidence['view_attention']
        for v in range(num_views):
            ax = fig.add_subplot(grid[v // cols, v % cols])
            _draw_view(ax, views[v], lidar2img[v], box_3d, evidence, v, zoom,
                       display_range)
            ax.set_title(f'{names[v]}: {share[v]:.0%}' +
                         (' (source)' if v == evidence['source_view'] else ''),
                         fontsize=8, color=SOURCE_COLOR if v == evidence['source_view']
                         else 'black')
        _draw_view_bars(fig.add_subplot(grid[rows, :]), evidence, names)
        fig.suptitle(title or _title(box_3d, evidence, names, score), fontsize=9)
        _legend(fig)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        save_png(fig, out_file)
    finally:
        plt.close(fig)

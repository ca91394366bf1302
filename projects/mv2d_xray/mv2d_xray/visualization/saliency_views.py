"""Saliency maps at a glance (matplotlib, Agg backend, PNG): :func:`draw_saliency_views`
draws every view of a case with its saliency map overlaid (a colour map at some opacity),
the 2D detections and, if given, the ground-truth 2D boxes -- e.g. the maps of
:mod:`projects.mv2d_xray.mv2d_xray.visualization.saliency`. Numpy in, PNG out (through
:func:`~projects.mv2d_xray.mv2d_xray.visualization.figures.save_png`, atomic).

All arrays are on the network input's grid (``img`` px); :func:`display_view` turns a
preprocessed view back into grey levels.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from projects.mv2d_xray.mv2d_xray.visualization.case_views import GT_COLOR, PRED2D_COLOR
from projects.mv2d_xray.mv2d_xray.visualization.figures import pyplot, save_png


def display_view(img, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A preprocessed view ``(3, H, W)`` (``(x - mean) / std``) back to grey levels: the
    channel mean of ``x``, ``(H, W)`` float in 0..255 (clipped)."""
    img = np.asarray(img, np.float64)
    mean = np.asarray(mean, np.float64).reshape(-1, 1, 1)
    std = np.asarray(std, np.float64).reshape(-1, 1, 1)
    return np.clip((img * std + mean).mean(axis=0), 0, 255)


def draw_saliency_views(images: Sequence[np.ndarray], maps: Sequence[np.ndarray],
                        out_file: str, dets: Optional[Sequence[np.ndarray]] = None,
                        scores: Optional[Sequence[np.ndarray]] = None,
                        gt_boxes: Optional[Sequence[np.ndarray]] = None,
                        view_names: Optional[Sequence[str]] = None, columns: int = 5,
                        alpha: float = 0.45, cmap: str = 'jet',
                        title: Optional[str] = None) -> None:
    """Every view with its map overlaid, its detections and ground truth.

    Args:
        images: per view ``(H, W)`` grey levels 0..255 (e.g. :func:`display_view`).
        maps: per view ``(H, W)`` saliency in [0, 1] (same grid), drawn with ``cmap``
            (0 blue, 1 red for ``'jet'``) at opacity ``alpha``.
        out_file: PNG path.
        dets: per view ``(K, 4)`` detections ``[x1, y1, x2, y2]`` img px (cyan, dashed).
        scores: per view ``(K,)`` their scores (written above the boxes).
        gt_boxes: per view ``(G, 4)`` ground-truth boxes, img px (green, dashed).
        view_names: per view title (default ``view i``).
        columns: views per row.
        alpha: opacity of the maps.
        cmap: matplotlib colour map of the maps.
        title: figure title.
    """
    if len(images) != len(maps):
        raise ValueError(f'{len(images)} images but {len(maps)} maps')
    num = len(images)
    cols = max(1, min(columns, num))
    rows = max(1, math.ceil(num / cols))
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.3 * rows), squeeze=False)
    try:
        for n in range(rows * cols):
            ax = axes[n // cols, n % cols]
            if n >= num:
                ax.axis('off')
                continue
            _draw_view(ax, images[n], maps[n], alpha, cmap,
                       None if dets is None else dets[n],
                       None if scores is None else scores[n],
                       None if gt_boxes is None else gt_boxes[n])
            ax.set_title(view_names[n] if view_names is not None else f'view {n}',
                         fontsize=9)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        save_png(fig, out_file)
    finally:
        plt.close(fig)


def _draw_view(ax, image: np.ndarray, saliency: np.ndarray, alpha: float, cmap: str,
               dets: Optional[np.ndarray], scores: Optional[np.ndarray],
               gt_boxes: Optional[np.ndarray]) -> None:
    """One view: grey image, the map over it, ground truth under the detections."""
    from matplotlib.patches import Rectangle
    image, saliency = np.asarray(image), np.asarray(saliency)
    if image.shape[:2] != saliency.shape:
        raise ValueError(f'image {image.shape[:2]} and map {saliency.shape} differ')
    height, width = saliency.shape
    extent = (0, width, height, 0)
    ax.imshow(image, cmap='gray', vmin=0, vmax=255, interpolation='nearest', extent=extent)
    ax.imshow(saliency, cmap=cmap, vmin=0, vmax=1, alpha=alpha, interpolation='bilinear',
              extent=extent)
    for box in np.asarray(gt_boxes if gt_boxes is not None else [], float).reshape(-1, 4):
        x1, y1, x2, y2 = box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=GT_COLOR,
                               lw=1.4, ls='--'))
    det_boxes = np.asarray(dets if dets is not None else [], float).reshape(-1, 4)
    for k, (x1, y1, x2, y2) in enumerate(det_boxes):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=PRED2D_COLOR,
                               lw=1.0, ls='--'))
        if scores is not None:
            ax.text(x1, y1, f'{float(scores[k]):.2f}', color=PRED2D_COLOR, fontsize=6,
                    va='bottom', clip_on=True)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])

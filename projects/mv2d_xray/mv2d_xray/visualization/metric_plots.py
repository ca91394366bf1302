"""Metrics at a glance (matplotlib, Agg backend, PNG): :func:`plot_metrics` draws FROC
curves and per-size-band bars from metrics JSON files (``tools/evaluate.py`` /
``tools/test.py``'s ``metrics.json``).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from projects.mv2d_xray.mv2d_xray.visualization.figures import pyplot, save_png


def plot_metrics(metrics: Sequence[Tuple[str, dict]], out_file: str) -> None:
    """FROC curves and per-size-band bars from one or more metrics JSON results.

    Left: FROC (sensitivity against FPs per scan, log2 axis from 1/8 to 8; dotted where
    the curve ends and its last sensitivity is held). With one result: the overall curve
    and each size band's; with several: each result's overall curve. Markers: the
    sensitivities of the CPM. Right: CPM, mAP_dist and AP_iou at the smallest IoU per size
    band (bars; absent bands are left empty and marked 'n/a').

    Args:
        metrics: ``(label, result)`` pairs, ``result`` as written by ``tools/evaluate.py``.
        out_file: PNG path.
    """
    plt = pyplot()
    fig, (ax_froc, ax_bar) = plt.subplots(1, 2, figsize=(13, 5))
    curves = []
    if len(metrics) == 1:
        label, result = metrics[0]
        curves.append((f'all (CPM {_fmt(result.get("CPM"))})', result))
        for band, block in (result.get('by_size') or {}).items():
            if block is not None:
                curves.append((f'{band} (CPM {_fmt(block.get("CPM"))})', block))
    else:
        curves = [(f'{label} (CPM {_fmt(result.get("CPM"))})', result)
                  for label, result in metrics]
    rates = [float(r) for r in metrics[0][1]['settings']['froc_fp_rates']]
    lo, hi = min(rates), max(rates)
    for n, (label, block) in enumerate(curves):
        color = f'C{n}'
        curve = block.get('froc_curve')
        if curve:
            fps = np.asarray(curve['fp_per_scan'], np.float64)
            sens = np.asarray(curve['sensitivity'], np.float64)
            xs = np.clip(fps, lo / 2, None)
            ax_froc.step(xs, sens, where='post', color=color, label=label)
            if fps[-1] < hi:
                ax_froc.plot([max(fps[-1], lo / 2), hi * 1.5], [sens[-1]] * 2, ':',
                             color=color)
        froc = block.get('FROC') or {}
        pts = [(float(r), froc[k]) for k, r in zip(froc, rates) if froc.get(k) is not None]
        if pts:
            ax_froc.plot(*zip(*pts), 'o', color=color, ms=4,
                         label=None if curve else label)
    ax_froc.set_xscale('log', base=2)
    ax_froc.set_xlim(lo / 2, hi * 1.5)
    ax_froc.set_ylim(0, 1.02)
    ax_froc.set_xticks(rates)
    ax_froc.set_xticklabels([_rate_label(r) for r in rates])
    ax_froc.set_xlabel('false positives per scan')
    ax_froc.set_ylabel('sensitivity')
    ax_froc.set_title('FROC')
    ax_froc.grid(alpha=0.3)
    ax_froc.legend(fontsize=8, loc='lower right')

    iou_key = f'AP_iou@{metrics[0][1]["settings"]["iou_thrs"][0]:g}'
    keys = ['CPM', 'mAP_dist', iou_key]
    bands = ['all'] + list(metrics[0][1].get('by_size') or {})
    width = 0.8 / (len(keys) * len(metrics))
    x = np.arange(len(bands))
    for m, (label, result) in enumerate(metrics):
        for k, key in enumerate(keys):
            offset = (m * len(keys) + k - (len(keys) * len(metrics) - 1) / 2) * width
            values = []
            for band in bands:
                block = result if band == 'all' else (result.get('by_size') or {}).get(band)
                values.append(None if block is None else block.get(key))
            heights = [v if v is not None else 0.0 for v in values]
            name = key if len(metrics) == 1 else f'{label}: {key}'
            bars = ax_bar.bar(x + offset, heights, width, label=name, color=f'C{k}',
                              alpha=1.0 - 0.35 * m)
            for bar, v in zip(bars, values):
                ax_bar.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01,
                            'n/a' if v is None else f'{v:.2f}', ha='center', va='bottom',
                            fontsize=7, rotation=90)
    counts = []
    for band in bands:
        block = metrics[0][1] if band == 'all' else (metrics[0][1].get('by_size') or {}).get(band)
        counts.append(0 if block is None else block.get('num_gt', 0))
    ax_bar.set_xticks(x)
    ax_bar.set_xticklabels([f'{b}\n(n={c})' for b, c in zip(bands, counts)])
    ax_bar.set_ylim(0, 1.3)
    ax_bar.set_title('by size band')
    ax_bar.legend(fontsize=8, loc='upper center', ncol=len(keys))
    ax_bar.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    save_png(fig, out_file)
    plt.close(fig)


def _fmt(value) -> str:
    return 'n/a' if value is None else f'{value:.3f}'


def _rate_label(rate: float) -> str:
    return f'1/{round(1 / rate)}' if rate < 1 else f'{rate:g}'

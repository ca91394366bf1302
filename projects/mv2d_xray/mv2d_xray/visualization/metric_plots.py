"""Metrics at a glance (matplotlib, Agg backend, PNG): :func:`plot_metrics` draws FROC
curves and per-size-band bars from metrics JSON files (``tools/evaluate.py`` /
``tools/test.py``'s ``metrics.json``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from projects.mv2d_xray.mv2d_xray.visualization.figures import pyplot, save_png

#: ``(label, result)``: a metrics JSON result (``tools/evaluate.py``) and its legend name.
LabelledResult = Tuple[str, dict]


def plot_metrics(metrics: Sequence[LabelledResult], out_file: str) -> None:
    """FROC curves and per-size-band bars from one or more metrics JSON results.

    Left: FROC (sensitivity against FPs per scan, log2 axis from 1/8 to 8; dotted where
    the curve ends and its last sensitivity is held). With one result: the overall curve
    and each size band's; with several: each result's overall curve. Markers: the
    sensitivities of the CPM. Right: CPM, mAP_dist and AP_iou at the smallest IoU per size
    band (bars; absent bands are left empty and marked 'n/a').

    Args:
        metrics: ``(label, result)`` pairs, ``result`` as written by ``tools/evaluate.py``;
            the FP rates, IoU thresholds and size bands are the first result's.
        out_file: PNG path.
    """
    plt = pyplot()
    fig, (ax_froc, ax_bar) = plt.subplots(1, 2, figsize=(13, 5))
    try:
        rates = [float(r) for r in metrics[0][1]['settings']['froc_fp_rates']]
        for n, (label, block) in enumerate(_froc_curves(metrics)):
            _draw_froc(ax_froc, label, block, rates, color=f'C{n}')
        _style_froc_axes(ax_froc, rates)
        _draw_band_bars(ax_bar, metrics)
        fig.tight_layout()
        save_png(fig, out_file)
    finally:
        plt.close(fig)


# -- FROC ----------------------------------------------------------------------------------
def _froc_curves(metrics: Sequence[LabelledResult]) -> List[Tuple[str, dict]]:
    """``(legend label, figures block)`` of each curve: with one result its overall block
    and each size band that has ground truth, with several each result's overall block."""
    if len(metrics) == 1:
        label, result = metrics[0]
        curves = [(f'all (CPM {_fmt(result.get("CPM"))})', result)]
        for band, block in (result.get('by_size') or {}).items():
            if block is not None:
                curves.append((f'{band} (CPM {_fmt(block.get("CPM"))})', block))
        return curves
    return [(f'{label} (CPM {_fmt(result.get("CPM"))})', result) for label, result in metrics]


def _draw_froc(ax, label: str, block: dict, rates: Sequence[float], color: str) -> None:
    """One block's FROC: its curve (``froc_curve``, FPs per scan against sensitivity) as
    a 'post' step, held dotted past its end up to the largest rate, and its sensitivities
    at ``rates`` (FPs per scan) as markers."""
    lo, hi = min(rates), max(rates)
    curve = block.get('froc_curve')
    if curve:
        fps = np.asarray(curve['fp_per_scan'], np.float64)
        sens = np.asarray(curve['sensitivity'], np.float64)
        ax.step(np.clip(fps, lo / 2, None), sens, where='post', color=color, label=label)
        if fps[-1] < hi:
            ax.plot([max(fps[-1], lo / 2), hi * 1.5], [sens[-1]] * 2, ':', color=color)
    froc = block.get('FROC') or {}
    pts = [(float(r), froc[k]) for k, r in zip(froc, rates) if froc.get(k) is not None]
    if pts:
        ax.plot(*zip(*pts), 'o', color=color, ms=4, label=None if curve else label)


def _style_froc_axes(ax, rates: Sequence[float]) -> None:
    """log2 FP-per-scan axis labelled at ``rates`` (``1/8`` ...), sensitivity 0 to 1."""
    lo, hi = min(rates), max(rates)
    ax.set_xscale('log', base=2)
    ax.set_xlim(lo / 2, hi * 1.5)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(rates)
    ax.set_xticklabels([_rate_label(r) for r in rates])
    ax.set_xlabel('false positives per scan')
    ax.set_ylabel('sensitivity')
    ax.set_title('FROC')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')


# -- bars by size band ---------------------------------------------------------------------
def _band_block(result: dict, band: str) -> Optional[dict]:
    """The figures of ``band`` (``'all'``: the overall figures); ``None`` when absent."""
    return result if band == 'all' else (result.get('by_size') or {}).get(band)


def _draw_band_bars(ax, metrics: Sequence[LabelledResult]) -> None:
    """Bars of CPM, mAP_dist and AP_iou at the smallest IoU threshold per size band, one
    group per band and one shade per result (opaque to 0.3), each bar labelled with its
    value ('n/a' where the band has no ground truth); the x labels give the first result's
    ``n_gt``."""
    first = metrics[0][1]
    keys = ['CPM', 'mAP_dist', f'AP_iou@{first["settings"]["iou_thrs"][0]:g}']
    bands = ['all'] + list(first.get('by_size') or {})
    width = 0.8 / (len(keys) * len(metrics))
    # one shade per result, from opaque to 0.3 whatever their number
    fade = 0.7 / max(len(metrics) - 1, 1)
    x = np.arange(len(bands))
    for m, (label, result) in enumerate(metrics):
        for k, key in enumerate(keys):
            offset = (m * len(keys) + k - (len(keys) * len(metrics) - 1) / 2) * width
            values = []
            for band in bands:
                block = _band_block(result, band)
                values.append(None if block is None else block.get(key))
            heights = [v if v is not None else 0.0 for v in values]
            name = key if len(metrics) == 1 else f'{label}: {key}'
            bars = ax.bar(x + offset, heights, width, label=name, color=f'C{k}',
                          alpha=1.0 - fade * m)
            for bar, v in zip(bars, values):
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01,
                        'n/a' if v is None else f'{v:.2f}', ha='center', va='bottom',
                        fontsize=7, rotation=90)
    counts = []
    for band in bands:
        block = _band_block(first, band)
        counts.append(0 if block is None else block.get('num_gt', 0))
    ax.set_xticks(x)
    ax.set_xticklabels([f'{b}\n(n={c})' for b, c in zip(bands, counts)])
    ax.set_ylim(0, 1.15)        # headroom for the value labels
    ax.set_title('by size band')
    # below the bars (above them it hid the bars of 1.0); with several results one column
    # each (matplotlib fills the columns first, in the order the bars were drawn)
    ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.14),
              ncol=len(keys) if len(metrics) == 1 else len(metrics))
    ax.grid(axis='y', alpha=0.3)


def _fmt(value) -> str:
    return 'n/a' if value is None else f'{value:.3f}'


def _rate_label(rate: float) -> str:
    return f'1/{round(1 / rate)}' if rate < 1 else f'{rate:g}'

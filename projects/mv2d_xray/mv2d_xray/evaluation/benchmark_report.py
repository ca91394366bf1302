"""The held-out benchmark's report: several methods on the same test cases, each figure
with its 95 % case-bootstrap interval, and the paired intervals of MV2D minus each
triangulation of its 2D detections (``tools/benchmark_detection.py`` writes it as
``benchmark.json`` and a markdown table).

Methods (their names in ``benchmark.json``):

* ``mv2d`` -- the model's 3D boxes;
* ``triangulation`` -- the same model's 2D detections triangulated without the learned 3D
  head (:mod:`projects.mv2d_xray.mv2d_xray.baselines.triangulation`), NMSed as MV2D's
  test step NMSes them (the blades config: across classes, so a box of one class beside a
  higher box of another at one place is suppressed);
* ``triangulation_nms_per_class`` -- the same, from the 2D detections NMSed per class (a
  second test run, of MV2D's 2D stage alone, with
  ``detection_proposal.nms.class_agnostic=False``): with several classes the stronger
  baseline (blades test +0.119 CPM over ``triangulation``, README "A stronger
  baseline"); with one class the same as ``triangulation``, so not run;
* ``triangulation_gt2d`` -- the exact 2D boxes triangulated: the ceiling of associating
  and triangulating per-view boxes;
* ``volume_head`` -- the volume fusion head's 3D boxes (``XrayVolumeFusionHead`` on
  MV2D's frozen 2D stage, ``tools/volume_fusion.py``; the benchmark's ``--volume-head``),
  paired with each triangulation of MV2D's 2D detections and with MV2D.

All lengths are mm in the ``ct`` frame; sensitivities are per finding, FP rates per scan.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

from projects.mv2d_xray.core.bootstrap import format_interval
from projects.mv2d_xray.core.metric import markdown_table

#: The methods in report order.
METHODS = ('mv2d', 'volume_head', 'triangulation', 'triangulation_nms_per_class',
           'triangulation_gt2d')
#: The paired comparison the benchmark exists for.
PAIR = ('mv2d', 'triangulation')
#: The same against the baseline of the 2D detections NMSed per class (several classes).
PAIR_NMS_PER_CLASS = ('mv2d', 'triangulation_nms_per_class')
#: The volume fusion head against the same baselines, and against MV2D (where it was run).
VOLUME_HEAD_PAIRS = (('volume_head', 'triangulation'),
                     ('volume_head', 'triangulation_nms_per_class'), ('volume_head', 'mv2d'))
#: The paired comparisons in report order.
PAIRS = (PAIR, PAIR_NMS_PER_CLASS, *VOLUME_HEAD_PAIRS)


def diff_key(pair: Sequence[str]) -> str:
    """A paired difference's key in ``benchmark.json`` (``mv2d_minus_triangulation``)."""
    return f'{pair[0]}_minus_{pair[1]}'


#: The key of :data:`PAIR`'s difference.
DIFF_KEY = diff_key(PAIR)
#: The key of :data:`PAIR_NMS_PER_CLASS`'s difference.
DIFF_KEY_NMS_PER_CLASS = diff_key(PAIR_NMS_PER_CLASS)
#: Columns of the markdown tables: ``(figure, heading)``.
TABLE_FIGURES = (('CPM', 'CPM'), ('FROC@0.125', 'sens@1/8'), ('FROC@1', 'sens@1'),
                 ('FROC@8', 'sens@8'), ('AP_dist@2mm', 'AP@2mm'), ('AP_dist@4mm', 'AP@4mm'),
                 ('AP_dist@8mm', 'AP@8mm'), ('centre_error_mm', 'centre err (mm)'))
#: Columns of the class-agnostic table.
CLASS_AGNOSTIC_FIGURES = (('CPM', 'CPM'), ('FROC@0.125', 'sens@1/8'), ('FROC@1', 'sens@1'),
                          ('FROC@8', 'sens@8'))
#: The row names of the paired differences in the tables, in :data:`PAIRS`' order.
PAIRED_LABELS = {diff_key(pair): label for pair, label in zip(
    PAIRS, ('MV2D - triangulation (paired)', 'MV2D - triangulation, NMS per class (paired)',
            'volume head - triangulation (paired)',
            'volume head - triangulation, NMS per class (paired)',
            'volume head - MV2D (paired)'))}


def _figures(intervals: Mapping[str, dict], suffix: str, bands: Sequence[str]) -> dict:
    """``{figure: value, figure_ci: [low, high]}`` of the figures with ``suffix`` (the
    overall ones when ``suffix`` is empty: no band suffix)."""
    out = {}
    for key, entry in intervals.items():
        if suffix:
            if not key.endswith(suffix):
                continue
            name = key[:-len(suffix)]
        else:
            if any(key.endswith(f'_{band}') for band in bands):
                continue
            name = key
        out[name] = entry['value']
        out[f'{name}_ci'] = entry['ci']
    return out


def _grouped(intervals: Mapping[str, dict], bands: Sequence[str]) -> dict:
    block = _figures(intervals, '', bands)
    block['by_size'] = {band: _figures(intervals, f'_{band}', bands) for band in bands}
    return block


def summarise(boot: dict, bands: Sequence[str],
              metrics_2d: Optional[Mapping] = None) -> dict:
    """One split's entry of ``benchmark.json`` from
    :func:`~projects.mv2d_xray.core.bootstrap.bootstrap_metrics`.

    Args:
        boot: the bootstrap result (methods named as :data:`METHODS`; the pairs of
            :data:`PAIRS` whose methods it holds bootstrapped).
        bands: size band names, in report order.
        metrics_2d: the 2D stage's per-view COCO AP / AR (``tools/evaluate_2d.py``'s
            result; its ``overall`` figures are kept), if measured.

    Returns:
        dict: ``{method: {CPM, CPM_ci, FROC@r, AP_dist@dmm, centre_error_mm, ... (each
        with ``_ci``), by_size: {band: ...}}}``, ``mv2d_minus_triangulation`` (the paired
        differences, same layout; ``mv2d_minus_triangulation_nms_per_class`` too where that
        baseline was run), ``2d_stage`` and ``bootstrap`` (its settings). The
        benchmark adds ``by_views_detected`` (:mod:`.views_detected`) and ``verdict``.
    """
    entry = {name: _grouped(method['intervals'], bands)
             for name, method in boot['methods'].items()}
    for pair in PAIRS:
        diff = boot['differences'].get(f'{pair[0]} - {pair[1]}')
        if diff is not None:
            entry[diff_key(pair)] = _grouped(diff, bands)
    if metrics_2d is not None:
        entry['2d_stage'] = dict(metrics_2d.get('overall', metrics_2d))
    entry['bootstrap'] = dict(boot['settings'])
    return entry


def _row_names(entry: Mapping) -> List[str]:
    """The methods of :data:`METHODS` in ``entry``, then the paired differences there."""
    return [m for m in METHODS if m in entry] + [k for k in PAIRED_LABELS if k in entry]


def _row_label(name: str) -> str:
    return PAIRED_LABELS.get(name, name)


def _cell(block: Mapping, figure: str) -> str:
    if block.get(figure) is None:
        return '-'
    digits = 2 if figure == 'centre_error_mm' else 3
    return format_interval(dict(value=block[figure], ci=block.get(f'{figure}_ci')), digits)


def markdown_report(entry: Mapping, bands: Sequence[str], title: str,
                    split: str = 'test') -> str:
    """The split's entry as markdown: the methods overall, then per size band, then the
    paired difference; each cell ``value [95 % CI]``."""
    header = ['method', 'band'] + [head for _, head in TABLE_FIGURES]
    rows: List[List[str]] = [header]
    for band in [None] + list(bands):
        for name in _row_names(entry):
            block = entry[name] if band is None else entry[name]['by_size'].get(band, {})
            rows.append([_row_label(name), band or 'all']
                        + [_cell(block, f) for f, _ in TABLE_FIGURES])
    lines = [f'### {title}', '', markdown_table(rows), '']
    settings = entry.get('bootstrap', {})
    if settings:
        lines.append(f"{settings['num_cases']} {split} cases; 95 % intervals from "
                     f"{settings['num_resamples']} case-bootstrap resamples (seed "
                     f"{settings['seed']}); sens@r = sensitivity at r FPs per scan.")
    agnostic = entry.get('class_agnostic')
    if agnostic:
        lines += ['', class_agnostic_table(agnostic)]
    by_views = entry.get('by_views_detected')
    if by_views:
        lines += ['', views_detected_table(by_views)]
    stage = entry.get('2d_stage')
    if stage:
        figures = ', '.join(f'{k} {v:.3f}' if isinstance(v, float) else f'{k} {v}'
                            for k, v in stage.items() if isinstance(v, (int, float)))
        lines += ['', f'2D stage alone, per view (COCO): {figures}']
    return '\n'.join(lines) + '\n'


def class_agnostic_table(block: Mapping) -> str:
    """The ``class_agnostic`` block (a :func:`summarise` of the methods scored with every
    box against every finding: :func:`~projects.mv2d_xray.core.metric.class_agnostic_cases`)
    as a markdown table of the overall figures, each ``value [95 % CI]``."""
    rows: List[List[str]] = [['method, classes ignored']
                             + [head for _, head in CLASS_AGNOSTIC_FIGURES]]
    for name in _row_names(block):
        rows.append([_row_label(name)]
                    + [_cell(block[name], f) for f, _ in CLASS_AGNOSTIC_FIGURES])
    return ('Without classes (a finding is hit by a box of any class whose centre lies within '
            'its radius; the figures above are per class, then averaged):\n\n'
            + markdown_table(rows))


def views_detected_table(by_views: Mapping[str, Mapping]) -> str:
    """The ``by_views_detected`` block
    (:func:`~projects.mv2d_xray.mv2d_xray.evaluation.views_detected.by_views_detected`) as
    a markdown table: per group of findings, their number and each method's CPM and
    sensitivity at the highest FP rate read (point figures; no intervals), under a line
    naming the association's gate."""
    groups = by_views['groups']
    names = [m for m in METHODS if any(m in group for group in groups.values())]
    rates = next((list(group[m]['FROC']) for group in groups.values() for m in names
                  if m in group), ['8'])
    rate = rates[-1]
    rows: List[List[str]] = [['views detecting the finding', 'findings']
                             + [f'{name} CPM / sens@{rate}' for name in names]]
    for group, block in groups.items():
        cells = ['-' if block.get(name) is None else
                 f"{block[name]['CPM']:.3f} / {block[name]['FROC'][rate]:.3f}"
                 for name in names]
        rows.append([group, str(block['findings'])] + cells)
    gate = by_views['settings']
    return (f"Findings by the views whose 2D detections hold them (a detection scoring >= "
            f"{gate['score_thr']:g} whose gate, max({gate['gate_px']:g} px, "
            f"{gate['gate_frac']:g} x its larger side), holds the finding's projected "
            f'centre), each group scored alone:\n\n' + markdown_table(rows))


def result_curves(boot: dict) -> List[tuple]:
    """``(method, result)`` pairs for :func:`~..visualization.metric_plots.plot_metrics`
    (one FROC curve per method)."""
    return [(name, boot['methods'][name]['result']) for name in METHODS
            if name in boot['methods']]


def band_names(result: Mapping) -> List[str]:
    """The size bands of an :func:`~projects.mv2d_xray.core.metric.evaluate_detections`
    result, in its order."""
    return [str(band[0]) for band in result['settings']['size_bands_mm']]


def pair_verdict(entry: Mapping, pair: Sequence[str]) -> Dict[str, object]:
    """Whether ``pair[0]`` beats ``pair[1]`` on CPM: their paired difference and whether its
    interval excludes 0 (``winner``: ``pair[0]``, ``pair[1]`` or ``'undecided'``)."""
    diff = entry.get(diff_key(pair), {})
    value, ci = diff.get('CPM'), diff.get('CPM_ci')
    if value is None or ci is None:
        return dict(winner='undecided', CPM_difference=value, CPM_difference_ci=ci)
    winner = pair[0] if ci[0] > 0 else pair[1] if ci[1] < 0 else 'undecided'
    return dict(winner=winner, CPM_difference=value, CPM_difference_ci=ci)


def verdict(entry: Mapping) -> Dict[str, object]:
    """Whether MV2D beats triangulation on CPM (:func:`pair_verdict` of :data:`PAIR`); where
    the per-class-NMS baseline was run, its verdict too, under ``nms_per_class``; where the
    volume fusion head was, those of :data:`VOLUME_HEAD_PAIRS` it holds, under
    ``volume_head`` (keyed by :func:`diff_key`)."""
    out = pair_verdict(entry, PAIR)
    if DIFF_KEY_NMS_PER_CLASS in entry:
        out['nms_per_class'] = pair_verdict(entry, PAIR_NMS_PER_CLASS)
    head = {diff_key(pair): pair_verdict(entry, pair) for pair in VOLUME_HEAD_PAIRS
            if diff_key(pair) in entry}
    if head:
        out['volume_head'] = head
    return out


def verdict_lines(title: str, result: Mapping) -> List[str]:
    """The lines printed for a :func:`verdict`, one per paired comparison it holds, each
    named by its row in the tables (:data:`PAIRED_LABELS`): ``<title>: MV2D -
    triangulation (paired), CPM 0.090 [0.040, 0.140]: mv2d``."""
    head = result.get('volume_head', {})
    pairs = ((PAIR, result), (PAIR_NMS_PER_CLASS, result.get('nms_per_class')),
             *((pair, head.get(diff_key(pair))) for pair in VOLUME_HEAD_PAIRS))
    return [f"{title}: {PAIRED_LABELS[diff_key(pair)]}, CPM "
            f"{format_interval(dict(value=v['CPM_difference'], ci=v['CPM_difference_ci']))}"
            f": {v['winner']}" for pair, v in pairs if v is not None]

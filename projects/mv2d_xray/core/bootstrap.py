"""Confidence intervals for the 3D metric by bootstrapping over cases (numpy only).

A benchmark's figures (CPM, FROC sensitivities, APs, centre error, each per size band)
come from one finite set of cases; how much they would move on another set of the same
size is estimated by the **case bootstrap**: draw ``len(cases)`` cases with replacement,
evaluate, repeat ``num_resamples`` times, and take the ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` percentiles of each figure (the percentile interval). Cases, not
findings, are resampled, because the false positives per scan and the findings of one
case are not independent.

Two methods evaluated on the same cases are compared with the **paired bootstrap**: each
resample draws one set of cases and evaluates both methods on it, so the interval of the
difference ``a - b`` reflects only how the methods differ case by case (an interval that
excludes 0 means the difference is unlikely to be an accident of the case sample).

Several such pairs on the same cases -- a model and its baseline from each of several
trainings -- are **pooled** as the mean of their differences, resample by resample: its
interval is over the cases for these trainings (it does not treat them as a sample of all
trainings; their spread shows in the pairs' own figures).

A resampled case keeps its findings and predictions; repeated draws of a case are
evaluated as distinct scans (``token#k``). A figure that is undefined in a resample (a
size band without findings in it) leaves that resample out of its interval; the number of
resamples that defined it is reported as ``n``.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from projects.mv2d_xray.core.data_format import CaseGT, CasePred
from projects.mv2d_xray.core.metric import evaluate_detections

#: The single-number figures of a result block that get intervals (besides ``FROC@rate``).
FIGURE_PREFIXES = ('CPM', 'mAP_dist', 'AP_dist@', 'AP_iou@', 'centre_error_mm')


def all_figures(result: dict) -> Dict[str, float]:
    """Every figure of an :func:`~.metric.evaluate_detections` result, flat: ``CPM``,
    ``mAP_dist``, ``AP_dist@{d}mm``, ``AP_iou@{t}``, ``centre_error_mm``, ``FROC@{rate}``,
    and the same for each size band with the suffix ``_{band}`` (``CPM_3-6mm``) and each
    class with the prefix ``{class}/`` (several classes). Absent figures have no key."""
    flat: Dict[str, float] = {}

    def add(block: Optional[dict], prefix: str = '', suffix: str = '') -> None:
        if block is None:
            return
        for key, value in block.items():
            if key.startswith(FIGURE_PREFIXES) and isinstance(value, (int, float)):
                flat[f'{prefix}{key}{suffix}'] = float(value)
        for rate, sens in (block.get('FROC') or {}).items():
            flat[f'{prefix}FROC@{rate}{suffix}'] = float(sens)
        if not suffix:
            for band, sub in (block.get('by_size') or {}).items():
                add(sub, prefix, f'_{band}')

    add(result)
    for name, block in (result.get('by_class') or {}).items():
        add(block, prefix=f'{name}/')
    return flat


def resample_tokens(tokens: Sequence[str], num_resamples: int, seed: int) -> np.ndarray:
    """``(num_resamples, len(tokens))`` indices into ``tokens``, drawn with replacement
    (numpy's PCG64 with ``seed``: the same seed gives the same resamples)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, len(tokens), size=(int(num_resamples), len(tokens)))


def _resampled(cases: Mapping[str, CaseGT], preds: Mapping[str, CasePred],
               tokens: Sequence[str], draw: np.ndarray):
    """The cases of one draw as distinct scans ``token#k``."""
    new_cases, new_preds = {}, {}
    for k, index in enumerate(draw):
        token = tokens[index]
        key = f'{token}#{k}'
        new_cases[key] = cases[token]
        if token in preds:
            new_preds[key] = preds[token]
    return new_cases, new_preds


def _interval(values: np.ndarray, confidence: float) -> dict:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return dict(ci=None, n=0)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return dict(ci=[float(low), float(high)], n=int(len(values)))


def bootstrap_metrics(cases: Mapping[str, CaseGT],
                      preds_by_method: Mapping[str, Mapping[str, CasePred]],
                      classes: Sequence[str],
                      pairs: Sequence[Sequence[str]] = (),
                      pooled: Optional[Mapping[str, Sequence[Sequence[str]]]] = None,
                      num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                      progress=None, **evaluate_kwargs) -> dict:
    """Figures of several methods on the same cases, with bootstrap intervals over cases
    and paired intervals of differences.

    Args:
        cases: ``{token: CaseGT}``, the scans (negatives included).
        preds_by_method: ``{method: {token: CasePred}}``; boxes in ``ct`` mm.
        classes: class names, index = label.
        pairs: ``(a, b)`` method pairs whose difference ``a - b`` gets a paired interval.
        pooled: ``{name: [(a, b), ...]}``: the mean of those pairs' differences ``a - b``
            gets a paired interval, under ``name`` (module docstring). Optional.
        num_resamples: bootstrap resamples. Defaults to 1000.
        confidence: interval coverage. Defaults to 0.95.
        seed: of the resampling; every method sees the same resamples.
        progress: wraps the range of resamples (e.g. ``tqdm``). Optional.
        **evaluate_kwargs: passed to :func:`~.metric.evaluate_detections` (thresholds,
            FP rates, size bands).

    Returns:
        dict: ``methods`` ``{method: {'result': evaluate_detections' result,
        'intervals': {figure: {'value', 'ci': [low, high] or None, 'n'}}}}`` with the
        figures of :func:`all_figures` (``CPM``, ``FROC@1``, ``CPM_3-6mm``,
        ``AP_dist@4mm_3-6mm``, ...); ``differences`` ``{'a - b': {figure: {'value', 'ci',
        'n'}}}``; ``pooled`` ``{name: {figure: {'value', 'ci', 'n'}}}`` (the figures every
        pooled method has); and ``settings`` (resamples, confidence, seed, number of
        cases).
    """
    tokens = sorted(cases)
    if not tokens:
        raise ValueError('no cases to bootstrap')
    pooled = dict(pooled or {})
    for a, b in list(pairs) + [pair for members in pooled.values() for pair in members]:
        for name in (a, b):
            if name not in preds_by_method:
                raise KeyError(f'pair ({a}, {b}): no predictions for method {name!r}')
    for name, members in pooled.items():
        if not members:
            raise ValueError(f'pooled {name!r}: no pairs')
    point = {name: evaluate_detections(cases, preds, classes, **evaluate_kwargs)
             for name, preds in preds_by_method.items()}
    flat_point = {name: all_figures(result) for name, result in point.items()}
    draws = resample_tokens(tokens, num_resamples, seed)
    # each scan is matched once per method; the resamples only pool the matches
    memos: Dict[str, dict] = {name: {} for name in preds_by_method}
    samples: Dict[str, List[Dict[str, float]]] = {name: [] for name in preds_by_method}
    for i in (range(len(draws)) if progress is None else progress(range(len(draws)))):
        for name, preds in preds_by_method.items():
            sub_cases, sub_preds = _resampled(cases, preds, tokens, draws[i])
            samples[name].append(all_figures(
                evaluate_detections(sub_cases, sub_preds, classes, memo=memos[name],
                                    **evaluate_kwargs)))

    def column(name: str, key: str) -> np.ndarray:
        return np.array([s.get(key, np.nan) for s in samples[name]], dtype=np.float64)

    methods = {}
    for name in preds_by_method:
        intervals = {key: dict(value=value, **_interval(column(name, key), confidence))
                     for key, value in flat_point[name].items()}
        methods[name] = dict(result=point[name], intervals=intervals)

    def mean_difference(members: Sequence[Sequence[str]]) -> Dict[str, dict]:
        """The mean of the pairs' differences ``a - b``, resample by resample, for the
        figures every member has (one pair: its own difference)."""
        shared = [k for k in flat_point[members[0][0]]
                  if all(k in flat_point[m] for pair in members for m in pair)]
        return {key: dict(value=float(np.mean([flat_point[a][key] - flat_point[b][key]
                                               for a, b in members])),
                          **_interval(np.mean([column(a, key) - column(b, key)
                                               for a, b in members], axis=0), confidence))
                for key in shared}

    differences = {f'{a} - {b}': mean_difference([(a, b)]) for a, b in pairs}
    pooled_out = {name: mean_difference(members) for name, members in pooled.items()}
    return dict(methods=methods, differences=differences, pooled=pooled_out,
                settings=dict(num_resamples=int(num_resamples), confidence=float(confidence),
                              seed=int(seed), num_cases=len(tokens),
                              resampling='cases, with replacement; percentile intervals'))


def format_interval(entry: Optional[dict], digits: int = 3) -> str:
    """``0.512 [0.430, 0.601]`` for one figure of :func:`bootstrap_metrics` (``-`` when
    absent)."""
    if entry is None or entry.get('value') is None:
        return '-'
    text = f"{entry['value']:.{digits}f}"
    if entry.get('ci') is not None:
        low, high = entry['ci']
        text += f' [{low:.{digits}f}, {high:.{digits}f}]'
    return text

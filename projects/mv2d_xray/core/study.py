"""Study folders: the images of one acquisition and its calibration file, as the inferencer
reads them and the converter's ``export-study`` command writes them.

A study folder ``DIR`` holds::

    DIR/calibration.json     the acquisition (projects.mv2d_xray.core.acquisition)
    DIR/<image of each view> one grey radiograph per view

Each view's image is the file its calibration entry names (``image`` of an explicit view,
``images`` of the ring shorthand); without names, the file whose stem is the view's name
(``VIEW_00.png``, ``VIEW_00.dcm``, ...). Any other image file in ``DIR`` is an error (an
extra view the calibration does not describe), as is a missing one.

Readable images (:data:`IMAGE_SUFFIXES`): 8- and 16-bit PNG, TIFF (integer or float),
DICOM radiographs (``DX`` / ``CR``: the stored values with their rescale slope and
intercept, ``MONOCHROME1`` inverted so that more attenuation is brighter, as in the
converter's DRRs; the pixel spacing of the header is checked against the calibration) and
``.npy`` (read with ``allow_pickle=False``). Every image is one ``(H, W)`` array in
``img`` pixels (row, column); a colour image is made grey the way OpenCV does.

The model was trained on one intensity convention (:class:`IntensityConvention`; the
converter's DRRs are 8-bit PNGs, 0..255): :func:`check_intensity` names a study whose
values do not fit it (a 16-bit study given to an 8-bit model, a float image normalised
to 0..1) in one line rather than letting the model see numbers it never saw.

Every problem is one :class:`StudyError` line naming the folder or file and the setting
(calibration problems are :class:`~projects.mv2d_xray.core.acquisition.CalibrationError`).
Plain Python and numpy; OpenCV, tifffile and pydicom are imported when an image needs them.
"""
from __future__ import annotations

import os
import os.path as osp
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from projects.mv2d_xray.core.acquisition import Acquisition, check_image_sizes, load_acquisition
from projects.mv2d_xray.core.io import atomic_write, json_bytes

#: The calibration file of a study folder.
CALIBRATION_FILE = 'calibration.json'
#: File suffixes read as images (lower case); other files in a study folder are ignored.
IMAGE_SUFFIXES = ('.png', '.tif', '.tiff', '.dcm', '.dicom', '.npy')
#: DICOM modalities that are projection radiographs.
DICOM_MODALITIES = ('DX', 'CR')
#: Largest relative difference between a DICOM header's pixel spacing and the
#: calibration's ``pixel_spacing_mm``.
PIXEL_SPACING_TOLERANCE = 0.01


class StudyError(ValueError):
    """A study folder that cannot be used: a missing, extra or unreadable image, a pixel
    spacing or an intensity range that does not fit. One line naming the file and the
    setting."""


@dataclass
class StudyImage:
    """One view's image as stored.

    Attributes:
        pixels (np.ndarray): ``(H, W)`` grey values (uint8, uint16, int, or float32 for
            float files and rescaled DICOM), ``img`` frame (row, column).
        bit_depth (int): bits per stored value (8, 16, 12 for a 12-bit DICOM, 32 / 64 for
            float files).
        kind (str): ``'png'``, ``'tiff'``, ``'dicom'`` or ``'npy'``.
        path (str): the file.
        pixel_spacing_mm (tuple[float, float], optional): ``(row, column)`` detector pitch
            in mm from a DICOM header (``ImagerPixelSpacing``, else ``PixelSpacing``).
    """
    pixels: np.ndarray
    bit_depth: int
    kind: str
    path: str
    pixel_spacing_mm: Optional[Tuple[float, float]] = None

    @property
    def is_float(self) -> bool:
        return self.pixels.dtype.kind == 'f'

    def describe(self) -> str:
        """``'16-bit png'``, ``'float32 tiff'``: how the values are stored."""
        kind = str(self.pixels.dtype) if self.is_float else f'{self.bit_depth}-bit'
        return f'{kind} {self.kind}'

    def values(self) -> 'ImageValues':
        """How the values are stored and their range (what :func:`check_intensity`
        needs, without the pixels)."""
        return ImageValues(file=osp.basename(self.path), stored=self.describe(),
                           low=float(self.pixels.min()), high=float(self.pixels.max()),
                           is_float=self.is_float)


@dataclass(frozen=True)
class ImageValues:
    """The grey values of one image: ``file`` (name), ``stored`` (e.g. ``'16-bit png'``),
    their range ``low..high`` and whether they are floats."""
    file: str
    stored: str
    low: float
    high: float
    is_float: bool


@dataclass
class Study:
    """A study folder, found and checked (the images are read by :func:`read_images`).

    Attributes:
        folder (str): the folder.
        token (str): the study's id in predictions (the folder's name).
        acquisition (Acquisition): its views, in the calibration's order.
        image_paths (tuple[str, ...]): per view, the image file.
        calibration_path (str): the calibration file read.
    """
    folder: str
    token: str
    acquisition: Acquisition
    image_paths: Tuple[str, ...]
    calibration_path: str

    @property
    def num_views(self) -> int:
        return self.acquisition.num_views


@dataclass(frozen=True)
class IntensityConvention:
    """The grey values a model was trained on.

    Attributes:
        low, high (float): the range of the training images' values.
        bit_depth (int): bits per value of the training images.
        description (str): how to name it in messages.
    """
    low: float = 0.0
    high: float = 255.0
    bit_depth: int = 8
    description: str = "8-bit PNG, 0..255 (the converter's DRRs)"


    @classmethod
    def from_setting(cls, setting: Optional[dict]) -> 'IntensityConvention':
        """A config's ``image_intensity`` (``dict(low, high, bit_depth, description)``),
        or :data:`DRR_INTENSITY` when it has none."""
        return cls(**setting) if setting else DRR_INTENSITY


#: The converter's DRRs: what the project's configs train on.
DRR_INTENSITY = IntensityConvention()


# -- finding a study ------------------------------------------------------------------------
def is_image_file(name: str) -> bool:
    """Whether ``name`` has an image suffix (:data:`IMAGE_SUFFIXES`) and is not hidden."""
    return not name.startswith('.') and osp.splitext(name)[1].lower() in IMAGE_SUFFIXES


def find_study(folder: str, calibration: Optional[str] = None) -> Study:
    """Read a study folder's calibration and find each view's image.

    Args:
        folder (str): the study folder.
        calibration (str, optional): a calibration file to use instead of
            ``folder/calibration.json``.

    Raises:
        StudyError: no such folder or no calibration file, a view's image missing (or
            two files for one view), an image file that is no view of the calibration.
        CalibrationError: the calibration file itself.
    """
    if not osp.isdir(folder):
        raise StudyError(f'study folder not found: {folder}')
    path = calibration or osp.join(folder, CALIBRATION_FILE)
    if not osp.isfile(path):
        raise StudyError(f'{folder}: no {CALIBRATION_FILE} (the acquisition of the views: '
                         'README "Running on your own studies"); give one with --calibration')
    acquisition = load_acquisition(path)
    files = sorted(n for n in os.listdir(folder)
                   if is_image_file(n) and osp.isfile(osp.join(folder, n)))
    named = [acquisition.images[v] is not None for v in range(acquisition.num_views)]
    paths = []
    for view, name in enumerate(acquisition.view_names):
        if named[view]:
            image = acquisition.images[view]
            if osp.basename(image) != image or image in ('.', '..'):
                raise StudyError(f'{path}: view {name}: image {image!r} must be a file name '
                                 f'in the study folder {folder} (no folders)')
            if not osp.isfile(osp.join(folder, image)):
                raise StudyError(f'{folder}: the image {image} of view {name} (named in '
                                 f'{osp.basename(path)}) is missing')
            paths.append(image)
            continue
        candidates = [n for n in files if osp.splitext(n)[0] == name]
        if not candidates:
            raise StudyError(f'{folder}: no image for view {name} (expected {name}.png, '
                             f'.tif, .dcm or .npy, or an "image" name in '
                             f'{osp.basename(path)})')
        if len(candidates) > 1:
            raise StudyError(f'{folder}: view {name} has {len(candidates)} images '
                             f'({", ".join(candidates)}); keep one')
        paths.append(candidates[0])
    extra = [n for n in files if n not in paths]
    if extra:
        more = f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''
        raise StudyError(f'{folder}: image {extra[0]}{more} is not a view of '
                         f'{osp.basename(path)} ({acquisition.num_views} views): remove it '
                         'or describe its view in the calibration')
    return Study(folder=folder, token=osp.basename(osp.normpath(osp.abspath(folder))),
                 acquisition=acquisition,
                 image_paths=tuple(osp.join(folder, p) for p in paths),
                 calibration_path=path)


def find_studies(folder: str) -> List[str]:
    """The study folders directly under ``folder`` (those holding a calibration file),
    sorted by name; ``folder`` itself when it is one.

    Raises:
        StudyError: ``folder`` is missing or holds no study.
    """
    if not osp.isdir(folder):
        raise StudyError(f'study folder not found: {folder}')
    if osp.isfile(osp.join(folder, CALIBRATION_FILE)):
        return [folder]
    found = sorted(osp.join(folder, n) for n in os.listdir(folder)
                   if not n.startswith('.')
                   and osp.isfile(osp.join(folder, n, CALIBRATION_FILE)))
    if not found:
        raise StudyError(f'{folder}: no study folders in it (sub-folders with a '
                         f'{CALIBRATION_FILE})')
    return found


# -- reading images ------------------------------------------------------------------------
def _grey(pixels: np.ndarray, path: str) -> np.ndarray:
    """``(H, W)`` from ``(H, W)``, ``(H, W, 1)`` or a colour ``(H, W, 3|4)`` (OpenCV's
    BGR -> grey weights; TIFF colour is turned to BGR before)."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    elif pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        import cv2
        code = cv2.COLOR_BGR2GRAY if pixels.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        pixels = cv2.cvtColor(pixels, code)
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise StudyError(f'cannot read image {path}: expected a grey (H, W) image, got '
                         f'shape {list(pixels.shape)}')
    return pixels


def _read_png(path: str) -> Tuple[np.ndarray, int]:
    import cv2
    pixels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise StudyError(f'cannot read image {path}: not a valid PNG (corrupt, truncated '
                         'or empty)')
    if pixels.ndim == 3:    # colour: made grey by the decoder, as the training loader does
        pixels = cv2.imread(path, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    return pixels, pixels.dtype.itemsize * 8


def _read_tiff(path: str) -> Tuple[np.ndarray, int]:
    import tifffile
    try:
        pixels = tifffile.imread(path)
    except Exception as exc:  # noqa: BLE001 -- any decoder error: one line
        raise StudyError(f'cannot read image {path}: not a valid TIFF ({type(exc).__name__}: '
                         f'{str(exc).splitlines()[0] if str(exc) else ""})') from None
    if pixels.size == 0:
        raise StudyError(f'cannot read image {path}: not a valid TIFF (no image in it)')
    if pixels.ndim == 3 and pixels.shape[0] in (3, 4) and pixels.shape[2] not in (3, 4):
        pixels = np.moveaxis(pixels, 0, -1)     # planar colour
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        pixels = pixels[:, :, 2::-1] if pixels.shape[2] == 3 else pixels   # RGB -> BGR
    return pixels, pixels.dtype.itemsize * 8


def _read_npy(path: str) -> Tuple[np.ndarray, int]:
    try:
        pixels = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 -- truncated or pickled: one line
        raise StudyError(f'cannot read image {path}: not a plain .npy array '
                         f'({type(exc).__name__}: {exc})') from None
    if pixels.dtype.kind not in 'uif' or pixels.dtype == bool:
        raise StudyError(f'cannot read image {path}: values of type {pixels.dtype} (numbers '
                         'are needed)')
    return pixels, pixels.dtype.itemsize * 8


def _read_dicom(path: str) -> Tuple[np.ndarray, int, Optional[Tuple[float, float]]]:
    import pydicom
    try:
        ds = pydicom.dcmread(path)
        modality = str(ds.get('Modality', ''))
        if modality not in DICOM_MODALITIES:
            raise StudyError(f'{path}: DICOM modality {modality or "(none)"!r} is not a '
                             f'projection radiograph ({" or ".join(DICOM_MODALITIES)})')
        stored = ds.pixel_array
    except StudyError:
        raise
    except Exception as exc:  # noqa: BLE001 -- not DICOM, no pixel data, codec missing
        raise StudyError(f'cannot read image {path}: not a readable DICOM radiograph '
                         f'({type(exc).__name__}: {str(exc).splitlines()[0]})') from None
    bits = int(ds.get('BitsStored', stored.dtype.itemsize * 8))
    slope = float(ds.get('RescaleSlope', 1) or 1)
    intercept = float(ds.get('RescaleIntercept', 0) or 0)
    pixels = stored
    if slope != 1 or intercept != 0:
        pixels = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if str(ds.get('PhotometricInterpretation', '')).upper() == 'MONOCHROME1':
        top = (2 ** bits - 1) * slope + intercept
        pixels = (np.float32(top) - pixels.astype(np.float32)) if pixels.dtype.kind == 'f' \
            else (2 ** bits - 1 - pixels.astype(np.int64)).astype(stored.dtype)
    spacing = ds.get('ImagerPixelSpacing') or ds.get('PixelSpacing')
    spacing = (float(spacing[0]), float(spacing[1])) if spacing else None
    return pixels, bits, spacing


def read_image(path: str) -> StudyImage:
    """Read one view's image (see the module text for the formats).

    Raises:
        StudyError: an unknown suffix, or a file that cannot be decoded (naming it).
    """
    suffix = osp.splitext(path)[1].lower()
    if not osp.isfile(path):
        raise StudyError(f'image not found: {path}')
    spacing = None
    if suffix == '.png':
        pixels, bits, kind = *_read_png(path), 'png'
    elif suffix in ('.tif', '.tiff'):
        pixels, bits, kind = *_read_tiff(path), 'tiff'
    elif suffix == '.npy':
        pixels, bits, kind = *_read_npy(path), 'npy'
    elif suffix in ('.dcm', '.dicom'):
        (pixels, bits, spacing), kind = _read_dicom(path), 'dicom'
    else:
        raise StudyError(f'cannot read image {path}: unknown suffix {suffix!r} (known: '
                         f'{", ".join(IMAGE_SUFFIXES)})')
    pixels = _grey(np.asarray(pixels), path)
    if pixels.dtype.kind == 'f' and not np.isfinite(pixels).all():
        raise StudyError(f'image {path} has non-finite values (NaN or infinity)')
    return StudyImage(pixels=pixels, bit_depth=int(bits), kind=kind, path=path,
                      pixel_spacing_mm=spacing)


def read_images(study: Study) -> List[StudyImage]:
    """Read every view's image and check it against the calibration: its ``(H, W)``
    and, for DICOM, its header's pixel spacing.

    Raises:
        StudyError: an unreadable image, a pixel spacing that differs by more than
            :data:`PIXEL_SPACING_TOLERANCE`.
        CalibrationError: an image size that differs from the calibration's.
    """
    acq = study.acquisition
    images = [read_image(path) for path in study.image_paths]
    check_image_sizes(acq, [img.pixels.shape for img in images], study.calibration_path)
    for view, img in enumerate(images):
        expected = acq.pixel_spacing[view]
        if img.pixel_spacing_mm is None or expected is None:
            continue
        if max(abs(s - expected) for s in img.pixel_spacing_mm) > \
                PIXEL_SPACING_TOLERANCE * expected:
            raise StudyError(
                f'{img.path}: the DICOM pixel spacing {img.pixel_spacing_mm[0]:g} x '
                f'{img.pixel_spacing_mm[1]:g} mm differs from pixel_spacing_mm '
                f'{expected:g} of view {acq.view_names[view]} in {study.calibration_path}')
    return images


def check_intensity(values: Sequence[ImageValues], convention: IntensityConvention,
                    where: str) -> None:
    """Refuse images whose values do not fit the training convention: values outside
    ``[low, high]`` (a 16-bit or 12-bit study given to an 8-bit model), or float values
    within 0..1 for a model trained on a larger range (a normalised image).

    Args:
        values (Sequence[ImageValues]): per image, :meth:`StudyImage.values`.
        convention (IntensityConvention): the model's.
        where (str): how messages name the study.

    Raises:
        StudyError: one line naming ``where``, the image, how it is stored, its range and
            the model's convention.
    """
    for img in values:
        found = f'{img.stored} with values {img.low:g}..{img.high:g}'
        if img.low < convention.low or img.high > convention.high:
            raise StudyError(
                f'{where}: {img.file} is a {found}, the model was trained on '
                f'{convention.description}: convert the study to that range (the window '
                'the model was trained with), or use a model trained on such images')
        if img.is_float and convention.high > 1 and img.low < img.high <= 1.0:
            raise StudyError(
                f'{where}: {img.file} is a {found} (normalised?), the model was trained on '
                f'{convention.description}: scale it to that range')


# -- writing a study -----------------------------------------------------------------------
def write_study(folder: str, acquisition: Acquisition, sources: Sequence[str],
                form: str = 'K_Rt') -> str:
    """Write a study folder: each view's image copied byte for byte from ``sources`` under
    its ``acquisition.images`` name, then ``calibration.json`` (``form``: ``'K_Rt'`` for
    the exact matrices, ``'P'`` or ``'ring'``). Every file is written atomically and the
    calibration last, so a folder with a calibration file is complete.

    Returns:
        str: the calibration file's path.

    Raises:
        ValueError: an image name is missing or a source has another suffix.
    """
    if len(sources) != acquisition.num_views:
        raise ValueError(f'{len(sources)} images for {acquisition.num_views} views')
    for name, image, source in zip(acquisition.view_names, acquisition.images, sources):
        if image is None or osp.basename(image) != image:
            raise ValueError(f'view {name}: needs an image file name, got {image!r}')
        if osp.splitext(image)[1].lower() != osp.splitext(source)[1].lower():
            raise ValueError(f'view {name}: {image} and its source {source} differ in type')
    os.makedirs(folder, exist_ok=True)
    for image, source in zip(acquisition.images, sources):
        with open(source, 'rb') as f:
            atomic_write(osp.join(folder, image), f.read())
    path = osp.join(folder, CALIBRATION_FILE)
    atomic_write(path, calibration_json(acquisition.to_calibration(form)))
    return path


def calibration_json(calibration: dict) -> bytes:
    """A calibration dict as JSON text, each matrix row on one line (``json_bytes`` with
    its innermost lists of numbers joined)."""
    text = json_bytes(calibration).decode()
    text = re.sub(r'\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]',
                  lambda m: '[' + ', '.join(v.strip() for v in m.group(1).split(',')) + ']',
                  text)
    return text.encode()


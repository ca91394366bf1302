"""Image files for study-folder tests: a minimal DICOM radiograph writer (pydicom)."""
import numpy as np


def write_dicom(path, pixels, modality='DX', slope=1.0, intercept=0.0, spacing=None,
                photometric='MONOCHROME2', bits=12):
    """A minimal uncompressed DICOM radiograph."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.1.1'
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b'\x00' * 128)
    ds.Modality, ds.PhotometricInterpretation = modality, photometric
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.Rows, ds.Columns = pixels.shape
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if spacing is not None:
        ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)

"""Synthetic images written into tmp folders: NIfTI via nibabel, DICOM series via pydicom."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

NIBABEL_DATA = Path(pytest.importorskip("nibabel").__file__).parent / "tests" / "data"
PYDICOM_FILES = Path(pytest.importorskip("pydicom").__file__).parent / "data" / "test_files"  # bundled, no download
PYDICOM_DIRS = PYDICOM_FILES / "dicomdirtests"


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def ras_affine(matrix: np.ndarray, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = matrix @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


# name -> RAS affine; voxel data are written in nibabel (x, y, z) order
AFFINES = {
    "aligned": ras_affine(np.eye(3), (0.8, 0.9, 2.5), (-100.0, 20.0, 35.0)),
    "flipped": ras_affine(np.diag([-1.0, 1.0, -1.0]), (1.5, 0.7, 3.0), (90.0, -120.0, 60.0)),
    "oblique": ras_affine(rotation("z", 25) @ rotation("x", -17), (0.6, 0.75, 1.2), (12.5, -40.0, 7.0)),
    "permuted": ras_affine(np.array([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]]), (1.0, 2.0, 3.0), (5.0, 6.0, 7.0)),
}


@pytest.fixture
def make_nifti(tmp_path):
    def make(name="image.nii.gz", affine=AFFINES["aligned"], data=None, qform=None, sform_code=1, qform_code=1):
        import nibabel as nib

        if data is None:
            data = np.arange(7 * 6 * 5, dtype=np.int16).reshape(7, 6, 5)
        nii = nib.Nifti1Image(data, affine)
        nii.set_sform(affine, sform_code)
        nii.set_qform(affine if qform is None else qform, qform_code)
        path = tmp_path / name
        nib.save(nii, path)
        return path

    return make


def write_dicom_slice(path: Path, pixels: np.ndarray, *, position, orientation=(1, 0, 0, 0, 1, 0),
                      pixel_spacing=(0.7, 0.6), series_uid="1.2.826.0.1.3680043.9.1.1", modality="CT",
                      instance=1, slope=1.0, intercept=-1024.0, description="synthetic", number=1,
                      with_pixels=True, signed=True, thickness=2.0, frame_of_reference="1.2.826.0.1.3680043.9.1.2"):
    """A minimal but complete Part-10 DICOM slice; pixel_spacing is (row spacing, column spacing)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.1", series_uid
    ds.PatientID, ds.Modality, ds.SeriesDescription = "anon", modality, description
    if frame_of_reference:
        ds.FrameOfReferenceUID = frame_of_reference
    ds.SeriesNumber, ds.InstanceNumber = number, instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    ds.SliceThickness = thickness
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(signed)
    if modality == "CT":
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    if with_pixels:
        ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_series(folder: Path, count=6, shape=(12, 10), *, spacing=2.0, origin=(-30.0, -20.0, 40.0),
                       orientation=(1, 0, 0, 0, 1, 0), positions=None, names=None, values=None, **fields):
    """Slices along the normal of `orientation`; slice k holds stored value 100 * k (+ a ramp).

    Files are named so that name order is the reverse of spatial order.
    """
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    if positions is None:
        positions = [np.array(origin) + k * spacing * normal for k in range(count)]
    ramp = np.arange(shape[0] * shape[1]).reshape(shape) % 7
    paths = []
    for k, position in enumerate(positions):
        name = names[k] if names else f"IM{len(positions) - k:04d}"
        value = 100 * k if values is None else values[k]
        paths.append(write_dicom_slice(folder / name, ramp + value, position=position, orientation=orientation,
                                       instance=k + 1, **fields))
    return paths


@pytest.fixture
def dicom_series(tmp_path):
    """Factory: `write_dicom_series` into `folder` (default tmp_path/series); returns the folder."""
    def make(folder=None, **kwargs):
        folder = folder or tmp_path / "series"
        write_dicom_series(folder, **kwargs)
        return folder

    return make


def write_tilted_series(folder, tilt=15.0, count=8, step=3.0, shape=(40, 32)):
    """Axial CT tilted about the x axis as scanners write it: slice k moved by k * step * tan(tilt) along -y
    (and GantryDetectorTilt set); random HU so that any misplaced sample shows."""
    import pydicom

    pixels = np.random.default_rng(7).integers(0, 1500, (count, *shape))
    for k in range(count):
        position = (-30.0, -20.0 - k * step * np.tan(np.radians(tilt)), 40.0 + k * step)
        path = write_dicom_slice(folder / f"IM{k:03d}", pixels[k], position=position, instance=k + 1,
                                 pixel_spacing=(0.78, 0.7))
        ds = pydicom.dcmread(path)
        ds.GantryDetectorTilt = tilt
        ds.save_as(path)
    return folder


def write_enhanced_mr(path: Path, count=4, shape=(9, 11), orientation=(0.866025, 0.5, 0.0, 0.0, 0.0, -1.0), spacing=3.0):
    """An oblique MR series converted by highdicom into one Enhanced multi-frame file (Legacy Converted Enhanced MR
    Image Storage: per-frame positions in functional groups); its frames are stored last slice first."""
    import highdicom as hd
    import pydicom

    slices = [pydicom.dcmread(p) for p in write_dicom_series(path.parent / f"{path.stem}-slices", count, shape,
                                                             orientation=orientation, spacing=spacing, modality="MR")]
    for ds in slices:  # what the converter copies (type 1/2 attributes of the Enhanced MR modules)
        ds.PatientName, ds.ImageType = "anon", ["ORIGINAL", "PRIMARY", "OTHER"]
        for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
                        "StudyID", "AccessionNumber", "ContentDate", "ContentTime", "ScanOptions"):
            setattr(ds, keyword, "")
        ds.Manufacturer, ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "synthetic", "SE", "NONE", "2D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = 10, 500, 1
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(slices[::-1], series_instance_uid=hd.UID(), series_number=9,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    enhanced.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def enhanced_mr():
    return write_enhanced_mr


@pytest.fixture
def tilted_series():
    return write_tilted_series


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy (Debian package dicom3tools) reports for a written DICOM file; [] where it is not
    installed. Its 2022 release predates the LABELMAP IOD: check BINARY SEG and RTSTRUCT files only."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        return []
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture
def dciodvfy():
    return dciodvfy_errors


@pytest.fixture
def dicom_slice():
    return write_dicom_slice


@pytest.fixture
def affines():
    return AFFINES


@pytest.fixture
def nibabel_data():
    return NIBABEL_DATA


@pytest.fixture
def pydicom_dirs():
    return PYDICOM_DIRS


@pytest.fixture
def pydicom_files():
    return PYDICOM_FILES

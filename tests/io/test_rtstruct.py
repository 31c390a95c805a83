"""RTSTRUCT written with pydicom from scikit-image contours: dciodvfy-clean, contours at the source pixels'
world positions (checked with pydicom alone), filled back onto the image by `convert_labels`."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from napari_medseg.errors import ImageReadError, ImageWriteError
from napari_medseg.io import convert_labels, read_image, write_labels

OBLIQUE = (0.866025, 0.5, 0.0, 0.0, 0.0, -1.0)


def objects(shape) -> np.ndarray:
    """A box with a hole (value 1), a single voxel and a bar (value 3) on every slice of a 2-D or 3-D grid."""
    labels = np.zeros(shape, np.uint8)
    labels[..., 2:9, 1:8] = 1
    labels[..., 4:6, 3:5] = 0  # the hole must stay a hole
    labels[..., 10, 9] = 3
    labels[..., 1:3, 9:11] = 3
    return labels


@pytest.fixture
def sources(pydicom_files, dicom_series, tmp_path):
    return {
        "CT_small": lambda: pydicom_files / "CT_small.dcm",
        "oblique MR series": lambda: dicom_series(tmp_path / "oblique", count=3, shape=(12, 12), orientation=OBLIQUE,
                                                  modality="MR", spacing=3.0),
    }


@pytest.mark.parametrize("source", ["CT_small", "oblique MR series"])
def test_rtstruct_contours_and_round_trip(sources, source, tmp_path):
    import pydicom

    image = read_image(sources[source]())
    labels = objects(image.spatial_shape)
    out = write_labels(labels, image, tmp_path / "rt.dcm", {1: "liver", 3: "spleen"}, fmt="rtstruct")
    ds = pydicom.dcmread(out)
    assert ds.Modality == "RTSTRUCT" and [r.ROIName for r in ds.StructureSetROISequence] == ["liver", "spleen"]
    assert list(ds.ROIContourSequence[0].ROIDisplayColor) == [40, 140, 40]
    files = [image.path] if image.path.is_file() else sorted(image.path.iterdir())
    by_uid = {str(s.SOPInstanceUID): s for s in (pydicom.dcmread(f, stop_before_pixels=True) for f in files)}
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            source_slice = by_uid[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            points = np.reshape(np.array(contour.ContourData, float), (-1, 3))
            cosines = np.array(source_slice.ImageOrientationPatient, float)
            offset = points - np.array(source_slice.ImagePositionPatient, float)
            normal = np.cross(cosines[:3], cosines[3:])
            assert np.abs(offset @ normal).max() < 1e-3  # in the referenced slice's plane
            column = offset @ cosines[:3] / float(source_slice.PixelSpacing[1])
            row = offset @ cosines[3:] / float(source_slice.PixelSpacing[0])
            k = 0 if image.ndim == 2 else int(round(np.linalg.solve(
                image.direction @ np.diag(image.spacing), points[0] - np.array(image.origin))[2]))
            value = 1 if roi.ReferencedROINumber == 1 else 3
            centres = np.argwhere(labels.reshape(-1, *labels.shape[-2:])[k] == value)
            # every outline vertex lies on a pixel edge of that object: half a pixel from its nearest centre
            gaps = np.linalg.norm(np.stack([row, column], 1)[:, None] - centres[None], axis=2).min(axis=1)
            np.testing.assert_allclose(gaps, 0.5, atol=1e-3)

    report = shutil.which("dciodvfy") and subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True)
    if report:
        assert [l for l in (report.stdout + report.stderr).splitlines() if l.startswith("Error")] == []

    back = read_image(convert_labels(out, image, tmp_path / "back.nii.gz"))
    np.testing.assert_array_equal(back.array, np.array([0, 1, 0, 2], np.uint8)[labels])
    assert back.metadata["label_names"] == {1: "liver", 2: "spleen"}


def test_rtstruct_user_errors(tmp_path, make_nifti, pydicom_files):
    nifti = read_image(make_nifti())
    with pytest.raises(ImageWriteError, match="needs labels drawn on a DICOM image"):
        write_labels(np.ones(nifti.spatial_shape, np.uint8), nifti, tmp_path / "rt.dcm", fmt="rtstruct")
    ct = read_image(pydicom_files / "CT_small.dcm")
    out = write_labels(objects(ct.spatial_shape), ct, tmp_path / "rt.dcm", fmt="rtstruct")
    with pytest.raises(ImageReadError, match="is an RTSTRUCT.*medseg convert RTSTRUCT --like IMAGE"):
        read_image(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.nii.gz", "rt.dcm"]

import numpy as np
import pytest

from napari_medseg.errors import Cancelled, ImageReadError
from napari_medseg.io import list_dicom_series, read_image, write_labels

RAMP = np.arange(12 * 10).reshape(12, 10) % 7


def expected_ras(orientation, origin, spacing3):
    """RAS affine from DICOM IOP/IPP: columns row, column, normal (LPS), flipped to RAS."""
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([row, col, np.cross(row, col)]) @ np.diag(spacing3)
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_series_sorted_by_position_not_name(dicom_series):
    image = read_image(dicom_series(count=6, spacing=2.5))
    assert image.array.shape == (6, 12, 10) and image.ndim == 3
    # slice k stores 100*k + ramp; CT rescale intercept -1024 gives HU
    np.testing.assert_array_equal(image.array, np.stack([RAMP + 100 * k - 1024 for k in range(6)]))
    assert image.array.dtype == np.int16
    assert (image.modality, image.intensity) == ("CT", "HU")
    np.testing.assert_allclose(image.spacing, (0.6, 0.7, 2.5))
    np.testing.assert_allclose(image.affine, expected_ras((1, 0, 0, 0, 1, 0), (-30, -20, 40), (0.6, 0.7, 2.5)),
                               atol=1e-4)
    assert image.metadata["format"] == "dicom" and image.metadata["num_files"] == 6


@pytest.mark.parametrize("orientation", [
    (0.866025, 0.5, 0.0, -0.111619, 0.193330, -0.974763),  # oblique
    (1, 0, 0, 0, -1, 0),  # column axis flipped: the normal points to the feet
    (0, 1, 0, 0, 0, -1),  # sagittal
])
def test_oblique_and_flipped_series_geometry_survives_nifti(dicom_series, tmp_path, orientation):
    import nibabel as nib
    import SimpleITK as sitk

    image = read_image(dicom_series(count=4, spacing=3.0, orientation=orientation, origin=(10.0, -5.0, 20.0)))
    expected = expected_ras(orientation, (10, -5, 20), (0.6, 0.7, 3.0))
    np.testing.assert_allclose(image.affine, expected, atol=1e-4)
    np.testing.assert_array_equal(image.array[:, 0, 0], [-1024 + 100 * k for k in range(4)])
    out = write_labels(np.ones(image.spatial_shape, np.uint8), image, tmp_path / "labels.nii.gz")
    np.testing.assert_allclose(nib.load(out).affine, image.affine, atol=1e-4)
    reread = sitk.ReadImage(str(out))
    np.testing.assert_allclose(reread.GetDirection(), image.direction.ravel(), atol=1e-5)
    np.testing.assert_allclose(reread.GetOrigin(), image.origin, atol=1e-4)


def test_unsigned_ct_is_read_as_signed_hu(dicom_series):
    image = read_image(dicom_series(count=3, signed=False))
    assert image.array.dtype == np.int16 and image.array.min() == -1024
    assert image.metadata["original_dtype"] == "uint16"


def test_varying_rescale_slopes_give_float_values(tmp_path, dicom_slice):
    for k, slope in enumerate([0.5, 2.0, 1.25]):
        dicom_slice(tmp_path / f"s{k}", RAMP + 10, position=(0, 0, 2.0 * k), instance=k + 1,
                          slope=slope, intercept=0)
    image = read_image(tmp_path)
    assert image.array.dtype.kind == "f"
    np.testing.assert_allclose(image.array, [(RAMP + 10) * s for s in (0.5, 2.0, 1.25)])


def test_folder_lists_series_recursively_and_selects(tmp_path, dicom_series, dicom_slice):
    dicom_series(tmp_path / "a" / "deep", count=5, series_uid="1.2.3.5", description="big", number=2)
    dicom_series(tmp_path / "b", count=2, series_uid="1.2.3.4", description="small", number=1,
                       modality="MR")
    dicom_slice(tmp_path / "b" / "nopixels", RAMP, position=(0, 0, 0), series_uid="1.2.3.9",
                      with_pixels=False)
    (tmp_path / "notes.txt").write_text("not dicom")
    series = list_dicom_series(tmp_path)
    assert [(s.uid, s.num_files, s.description, s.modality) for s in series] == [
        ("1.2.3.5", 5, "big", "CT"), ("1.2.3.4", 2, "small", "MR")]
    positions = [float(s.files[i].name[2:]) for s in series[:1] for i in range(5)]
    assert positions == sorted(positions, reverse=True)  # names descend while positions ascend
    assert read_image(tmp_path).array.shape[0] == 5
    small = read_image(tmp_path, series="1.2.3.4")
    assert small.array.shape == (2, 12, 10) and small.modality == "MR" and small.intensity == "raw"
    assert small.metadata["series_description"] == "small"
    assert read_image(tmp_path, series=1).metadata["series_uid"] == "1.2.3.4"
    with pytest.raises(ImageReadError, match="No series '9.9'"):
        read_image(tmp_path, series="9.9")


def test_uneven_gap_splits_series(dicom_series):
    folder = dicom_series(positions=[(0, 0, z) for z in (0.0, 2.0, 4.0, 6.0, 20.0, 22.0)])
    series = list_dicom_series(folder)
    assert [s.num_files for s in series] == [4, 2]
    assert series[0].key.endswith("#1") and "uneven slice gaps" in series[0].note
    image = read_image(folder)
    assert image.array.shape[0] == 4 and image.spacing[2] == pytest.approx(2.0)
    assert any("uneven" in w for w in image.metadata["warnings"])
    second = read_image(folder, series=series[1].key)
    assert second.origin[2] == pytest.approx(20.0)


def test_repeated_positions_split_into_volumes(dicom_series):
    folder = dicom_series(positions=[(0, 0, z) for z in (0.0, 2.0, 4.0)] * 2, values=[0, 0, 0, 1, 1, 1])
    series = list_dicom_series(folder)
    assert [s.num_files for s in series] == [3, 3]
    second = read_image(folder, series=series[1].key)
    np.testing.assert_array_equal(second.array[:, 0, 0], [-1023] * 3)


def test_gantry_tilt_resampled_as_dcm2niix(tmp_path, tilted_series):
    """A 15-degree tilted CT lands on dcm2niix's orthogonal `_Tilt` grid with its HU at the same world points."""
    import subprocess

    import nibabel as nib

    dcm2niix = pytest.importorskip("dcm2niix")
    folder = tilted_series(tmp_path / "tilted")
    image = read_image(folder)
    assert any("gantry tilt of 15.0 degrees corrected by resampling" in w for w in image.metadata["warnings"])
    out = tmp_path / "nii"
    out.mkdir()
    subprocess.run([str(dcm2niix.bin), "-f", "ct", "-o", str(out), str(folder)], check=True, capture_output=True)
    reference = nib.load(next(out.glob("ct_Tilt*.nii")))
    hu = np.asarray(reference.dataobj, dtype=np.float64)  # (x, y, z), RAS affine
    assert hu.shape[::-1] == image.spatial_shape  # the grid extended by whole rows to hold every slice
    ours = np.indices(image.spatial_shape).reshape(3, -1)  # (z, y, x) indices
    world = image.affine @ np.vstack([ours[::-1], np.ones(ours.shape[1])])  # RAS mm
    theirs = np.linalg.solve(reference.affine, world)[:3]
    np.testing.assert_allclose(theirs, np.round(theirs), atol=1e-3)  # the same voxel centres
    i, j, k = np.round(theirs).astype(int)
    values = image.array.reshape(-1).astype(np.float64)
    fill = hu.min()
    interior = (hu[i, j, k] > fill) & (values > fill)  # both inside the slices' field of view
    assert interior.mean() > 0.7
    assert np.abs(values[interior] - hu[i, j, k][interior]).max() <= 1.0  # rounding of the interpolated HU
    # outside: dcm2niix repeats a slice's first row for samples less than a pixel before it, we fill them
    outside = (values == fill) != (hu[i, j, k] == fill)
    assert outside.sum() <= image.spatial_shape[0] * image.spatial_shape[2]  # one row per slice at most


def test_progress_and_cancel(dicom_series):
    folder = dicom_series(count=4)
    seen = []
    read_image(folder, progress=lambda done, total, message: seen.append((done, total, message)))
    assert any("Scanning" in m for _, _, m in seen) and any("Reading" in m for _, _, m in seen)
    assert seen[-1][0] == seen[-1][1]
    with pytest.raises(Cancelled, match="Scanning"):
        read_image(folder, cancel=lambda: True)
    reading = []  # cancel once SimpleITK reports progress: the reader is aborted
    with pytest.raises(Cancelled, match="Reading series"):
        read_image(folder, progress=lambda d, t, message: reading.append(message.startswith("Reading")),
                   cancel=lambda: any(reading))


def test_single_slice_is_2d_with_slice_position_kept(pydicom_files):
    image = read_image(pydicom_files / "CT_small.dcm")
    assert image.array.shape == (128, 128) and image.ndim == 2
    assert (image.modality, image.intensity) == ("CT", "HU")
    np.testing.assert_allclose(image.spacing, (0.661468, 0.661468))
    np.testing.assert_allclose(image.origin, (-158.135803, -179.035797))  # axial: in-plane origin kept
    np.testing.assert_allclose(image.metadata["slice_geometry"]["origin"], (-158.135803, -179.035797, -75.699997))
    mr = read_image(pydicom_files / "MR_small.dcm")
    assert mr.array.shape == (64, 64) and mr.modality == "MR" and mr.intensity == "raw"


def test_rgb_dicom_stays_uint8_rgb(pydicom_files):
    image = read_image(pydicom_files / "SC_rgb_jpeg_dcmtk.dcm")  # JPEG-compressed secondary capture
    assert image.array.shape == (100, 100, 3) and image.array.dtype == np.uint8
    assert image.is_rgb and image.channel_axis == -1 and image.ndim == 2


def test_pydicom_dicomdir_folders(pydicom_dirs):
    ct5n = read_image(pydicom_dirs / "98892001" / "CT5N")
    assert ct5n.array.shape == (5, 16, 16)
    np.testing.assert_allclose(ct5n.origin, (-72.199997, -143.0, -1.2375), atol=1e-4)
    np.testing.assert_allclose(ct5n.spacing, (0.488281, 0.488281, 2.5), atol=1e-6)
    ct2 = list_dicom_series(pydicom_dirs / "77654033" / "CT2")  # slice 18 lies 200 mm from 180-182
    assert [s.num_files for s in ct2] == [3, 1]
    mr2 = list_dicom_series(pydicom_dirs / "98892003" / "MR2")  # tri-plane localizers: 1 file per plane
    assert len(mr2) == 7 and all(s.num_files == 1 for s in mr2)
    axial = next(s for s in mr2 if s.files[0].name == "4981")
    image = read_image(pydicom_dirs / "98892003" / "MR2", series=axial.key)
    assert image.ndim == 2
    np.testing.assert_allclose(image.origin, (-150.0, -149.3036), atol=1e-4)
    everything = list_dicom_series(pydicom_dirs)  # DICOMDIR files (no pixel data) are skipped
    assert sum(s.num_files for s in everything) == 31


@pytest.mark.parametrize("sub", ["98892001/CT5N", "98892003/MR2"])
def test_pydicom_series_to_nifti_matches_nibabel(tmp_path, pydicom_dirs, sub):
    import nibabel as nib

    image = read_image(pydicom_dirs / sub)
    out = write_labels(np.zeros(image.spatial_shape, np.uint8), image, tmp_path / "seg.nii.gz")
    np.testing.assert_allclose(nib.load(out).affine, image.affine, atol=1e-4)


def test_dicomdir_file_reads_its_folder(pydicom_dirs):
    image = read_image(pydicom_dirs / "DICOMDIR")
    assert image.array.shape == (5, 16, 16)


def test_bad_dicom_files(tmp_path, dicom_slice, pydicom_files):
    data = (pydicom_files / "CT_small.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 2000])
    with pytest.raises(ImageReadError, match="cut.dcm"):
        read_image(tmp_path / "cut.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"hello" * 100)
    with pytest.raises(ImageReadError, match="junk.dcm"):
        read_image(tmp_path / "junk.dcm")
    dicom_slice(tmp_path / "empty.dcm", RAMP, position=(0, 0, 0), with_pixels=False)
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(tmp_path / "empty.dcm")


def test_folder_without_dicom(tmp_path):
    with pytest.raises(ImageReadError, match="is empty"):
        read_image(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ImageReadError, match="No DICOM images"):
        read_image(tmp_path)

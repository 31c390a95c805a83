import gzip

import numpy as np
import pytest

from napari_medseg.errors import ImageReadError
from napari_medseg.io import read_image


@pytest.mark.parametrize("name", ["aligned", "flipped", "oblique", "permuted"])
def test_affine_equals_nibabel(make_nifti, affines, name):
    import nibabel as nib

    path = make_nifti(affine=affines[name])
    image = read_image(path)
    np.testing.assert_allclose(image.affine, nib.load(path).affine, atol=1e-4)
    # voxel (i, j, k) of nibabel is array[k, j, i]
    np.testing.assert_array_equal(image.array, np.asarray(nib.load(path).dataobj).transpose(2, 1, 0))
    assert image.metadata["format"] == "nifti" and image.metadata["warnings"] == []
    assert image.metadata["original_dtype"] == "int16" and image.modality == "unknown"


def test_nibabel_bundled_images(nibabel_data):
    import nibabel as nib

    anatomical = read_image(nibabel_data / "anatomical.nii")
    np.testing.assert_allclose(anatomical.affine, nib.load(nibabel_data / "anatomical.nii").affine, atol=1e-4)
    # example4d holds 2 volumes along its 4th axis: read as 2 channels
    example = read_image(nibabel_data / "example4d.nii.gz")
    nii = nib.load(nibabel_data / "example4d.nii.gz")
    assert example.array.shape == (24, 96, 128, 2) and example.channel_axis == -1 and example.ndim == 3
    np.testing.assert_allclose(example.affine, nii.affine, atol=1e-4)
    np.testing.assert_array_equal(example.array[..., 1], np.asarray(nii.dataobj)[..., 1].transpose(2, 1, 0))
    assert example.metadata["fourth_axis"] == "channels"


def test_nifti2_is_refused_clearly(nibabel_data):
    with pytest.raises(ImageReadError, match="NIfTI-2"):
        read_image(nibabel_data / "example_nifti2.nii.gz")


def test_scaled_nifti_reports_stored_type(make_nifti, tmp_path):
    import nibabel as nib

    path = make_nifti()
    nii = nib.load(path)
    nii.header.set_slope_inter(0.5, -10)
    nib.save(nib.Nifti1Image(np.asarray(nii.dataobj), nii.affine, nii.header), tmp_path / "scaled.nii")
    image = read_image(tmp_path / "scaled.nii")
    assert image.metadata["original_dtype"] == "int16"
    np.testing.assert_allclose(image.array, np.asarray(nib.load(tmp_path / "scaled.nii").dataobj).transpose(2, 1, 0))


def test_time_series_is_refused(make_nifti):
    path = make_nifti("bold.nii.gz", data=np.zeros((4, 4, 3, 12), np.int16))
    with pytest.raises(ImageReadError, match="12 volumes along its 4th axis"):
        read_image(path)


def test_nan_voxels_replaced_with_minimum_and_warned(make_nifti):
    data = np.linspace(-5, 5, 7 * 6 * 5, dtype=np.float32).reshape(7, 6, 5)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    image = read_image(make_nifti("nan.nii.gz", data=data))
    assert np.isfinite(image.array).all()
    assert image.array[3, 2, 1] == pytest.approx(data[np.isfinite(data)].min())
    assert "2 NaN/infinite voxels" in image.metadata["warnings"][0]
    with pytest.raises(ImageReadError, match="no finite values"):
        read_image(make_nifti("allnan.nii.gz", data=np.full((3, 3, 3), np.nan, np.float32)))


def test_sheared_sform_uses_qform_with_warning(make_nifti, affines):
    sheared = affines["aligned"].copy()
    sheared[0, 1] = 0.4
    image = read_image(make_nifti("shear.nii.gz", affine=sheared, qform=affines["aligned"], sform_code=2))
    np.testing.assert_allclose(image.affine, affines["aligned"], atol=1e-4)
    assert "sheared" in image.metadata["warnings"][0]


def test_sheared_without_qform_is_refused(make_nifti, affines):
    sheared = affines["aligned"].copy()
    sheared[0, 1] = 0.4
    with pytest.raises(ImageReadError, match="orthonormal|non-orthogonal"):
        read_image(make_nifti("shear.nii.gz", affine=sheared, qform_code=0))


def test_sform_preferred_like_nibabel(make_nifti, affines):
    import nibabel as nib

    path = make_nifti("two.nii.gz", affine=affines["oblique"], qform=affines["flipped"], sform_code=2, qform_code=1)
    image = read_image(path)
    np.testing.assert_allclose(image.affine, nib.load(path).affine, atol=1e-4)


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii"])
def test_truncated_nifti(make_nifti, tmp_path, name):
    source = make_nifti("full.nii.gz", data=np.arange(40 * 30 * 20, dtype=np.int16).reshape(40, 30, 20))
    data = source.read_bytes() if name.endswith(".gz") else gzip.decompress(source.read_bytes())
    (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(tmp_path / name)


def test_metaimage_modality_and_hu(tmp_path):
    import SimpleITK as sitk

    (tmp_path / "ct.mha").write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 1 2 3\nElementSpacing = 0.5 0.5 2\n"
        "Modality = MET_MOD_CT\nDimSize = 2 2 2\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    with open(tmp_path / "ct.mha", "ab") as handle:
        handle.write(np.arange(-4, 4, dtype="<i2").tobytes())
    image = read_image(tmp_path / "ct.mha")
    assert (image.modality, image.intensity) == ("CT", "HU")
    assert image.array.min() == -4 and image.spacing == (0.5, 0.5, 2.0) and image.origin == (1, 2, 3)
    assert sitk.ReadImage(str(tmp_path / "ct.mha")).GetSize() == (2, 2, 2)


def test_corrupted_gzip_body_is_refused(make_nifti, tmp_path):
    rng = np.random.default_rng(0)
    source = make_nifti("full.nii.gz", data=rng.integers(0, 3000, (60, 50, 40)).astype(np.int16))
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])  # length and trailer intact
    (tmp_path / "bad.nii.gz").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="bad.nii.gz is corrupt") as info:
        read_image(tmp_path / "bad.nii.gz")
    assert "\n" not in str(info.value)

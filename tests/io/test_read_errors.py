import numpy as np
import pytest

from napari_medseg.errors import ImageReadError
from napari_medseg.io import read_image


def write_nrrd(path, directions="(1,0,0) (0,1,0) (0,0,1)", values=np.arange(8, dtype="<f4")):
    path.write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 2 2 2\n"
        + f"space directions: {directions}\n".encode()
        + b"kinds: domain domain domain\nendian: little\nencoding: raw\nspace origin: (0,0,0)\n\n"
        + values.tobytes())
    return path


def test_missing_unsupported_and_misused(tmp_path, make_nifti):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nothing.nii.gz")
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(ImageReadError, match="Unsupported file type '.docx'"):
        read_image(tmp_path / "notes.docx")
    with pytest.raises(ImageReadError, match="only applies to DICOM folders"):
        read_image(make_nifti(), series="1.2.3")


def test_sheared_nrrd_is_refused(tmp_path):
    assert read_image(write_nrrd(tmp_path / "ok.nrrd")).array.shape == (2, 2, 2)
    with pytest.raises(ImageReadError, match="non-orthogonal"):
        read_image(write_nrrd(tmp_path / "sheared.nrrd", "(1,0,0) (0.5,1,0) (0,0,1)"))


def test_nrrd_nan_replaced(tmp_path):
    values = np.arange(8, dtype="<f4")
    values[3] = np.nan
    image = read_image(write_nrrd(tmp_path / "nan.nrrd", values=values))
    assert np.isfinite(image.array).all() and image.array.ravel()[3] == 0.0
    assert image.metadata["warnings"] == ["1 NaN/infinite voxels replaced by 0"]


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_truncated_nrrd_and_metaimage(tmp_path, suffix):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.arange(20 * 30 * 40, dtype=np.int16).reshape(20, 30, 40)),
                    str(tmp_path / f"full{suffix}"), useCompression=True)
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) - 200])
    with pytest.raises(ImageReadError, match=f"cut{suffix}"):
        read_image(tmp_path / f"cut{suffix}")


def test_extensionless_dicom_is_detected(tmp_path, pydicom_files):
    (tmp_path / "IM0001").write_bytes((pydicom_files / "CT_small.dcm").read_bytes())
    assert read_image(tmp_path / "IM0001").modality == "CT"


def test_bilevel_images_are_read_as_uint8(tmp_path):
    import tifffile

    mask = np.zeros((16, 20), bool)
    mask[3:9, 4:12] = True
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    image = read_image(tmp_path / "mask.tif")
    assert image.array.dtype == np.uint8 and image.metadata["original_dtype"] == "bool"
    np.testing.assert_array_equal(image.array, mask)


def test_a_header_key_that_is_not_utf8_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "key.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 2\nDimSize = 2 2\nElementType = MET_UCHAR\nK\xff\xfeey = 3\n"
                     b"Modality = MET_MOD_CT\nElementDataFile = LOCAL\n\x00\x01\x02\x03")
    image = read_image(path)
    np.testing.assert_array_equal(image.array, [[0, 1], [2, 3]])
    assert image.modality == "CT"
    assert image.metadata["warnings"] == ["header field 'K\ufffd\ufffdey' is not UTF-8 text; ignored"]

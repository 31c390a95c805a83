import json

import numpy as np
import pytest

from napari_medseg.errors import ImageWriteError
from napari_medseg.io import Image, read_image, write_labels

NAMES = {1: "liver", 2: "spleen", 300: "tumour"}
VOLUME_FORMATS = [".nii.gz", ".nii", ".nrrd", ".mha", ".tif"]


def labels_for(image: Image, top: int = 2) -> np.ndarray:
    return (np.arange(np.prod(image.spatial_shape)).reshape(image.spatial_shape) % (top + 1)).astype(np.int64)


def assert_same_geometry(image: Image, other: Image):
    np.testing.assert_allclose(other.spacing, image.spacing, rtol=1e-5)
    np.testing.assert_allclose(other.origin, image.origin, atol=1e-4)
    np.testing.assert_allclose(other.direction, image.direction, atol=1e-5)
    np.testing.assert_allclose(other.affine, image.affine, atol=1e-4)


@pytest.mark.parametrize("suffix", VOLUME_FORMATS)
@pytest.mark.parametrize("name", ["aligned", "flipped", "oblique", "permuted"])
def test_volume_round_trip(make_nifti, affines, tmp_path, name, suffix):
    import SimpleITK as sitk

    image = read_image(make_nifti(affine=affines[name]))
    labels = labels_for(image)
    out = write_labels(labels, image, tmp_path / f"seg{suffix}", label_names={1: "liver", 2: "spleen"})
    assert out == tmp_path / f"seg{suffix}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    back = read_image(out)
    np.testing.assert_array_equal(back.array, labels)
    assert back.array.dtype == np.uint8
    assert back.metadata["label_names"] == {1: "liver", 2: "spleen"}
    assert_same_geometry(image, back)
    if suffix != ".tif":  # SimpleITK keeps no geometry in TIFF files; our sidecar does
        reread = sitk.ReadImage(str(out))
        np.testing.assert_allclose(reread.GetOrigin(), image.origin, atol=1e-4)
        np.testing.assert_allclose(reread.GetDirection(), image.direction.ravel(), atol=1e-5)
        np.testing.assert_allclose(reread.GetSpacing(), image.spacing, rtol=1e-5)
    if suffix.startswith(".nii"):
        import nibabel as nib

        np.testing.assert_allclose(nib.load(out).affine, image.affine, atol=1e-4)


def test_nrrd_and_mha_keep_names_in_slicer_header_keys(tmp_path, make_nifti):
    import SimpleITK as sitk

    image = read_image(make_nifti())
    for suffix in (".nrrd", ".mha"):
        out = write_labels(labels_for(image), image, tmp_path / f"seg{suffix}", {0: "background", **NAMES})
        header = sitk.ReadImage(str(out))
        assert header.GetMetaData("Segment2_Name") == "tumour" and header.GetMetaData("Segment2_LabelValue") == "300"
        assert read_image(out).metadata["label_names"] == NAMES
    assert not list(tmp_path.glob("*.json"))


def test_nifti_sidecar_json(tmp_path, make_nifti):
    image = read_image(make_nifti())
    out = write_labels(labels_for(image), image, tmp_path / "case.seg.nii.gz", NAMES)
    sidecar = json.loads((tmp_path / "case.seg.nii.gz.json").read_text())
    assert sidecar["label_names"] == {"1": "liver", "2": "spleen", "300": "tumour"}
    assert read_image(out).metadata["label_names"] == NAMES
    write_labels(labels_for(image), image, out)  # rewritten without names: the stale sidecar goes
    assert not (tmp_path / "case.seg.nii.gz.json").exists() and "label_names" not in read_image(out).metadata


def test_foreign_json_next_to_nifti_is_ignored(tmp_path, make_nifti):
    path = make_nifti("sub-01_T1w.nii.gz")
    (tmp_path / "sub-01_T1w.json").write_text(json.dumps({"RepetitionTime": 2.0, "label_names": {"1": "x"}}))
    assert "label_names" not in read_image(path).metadata


@pytest.mark.parametrize("suffix", [".nii.gz", ".png", ".tif", ".nrrd", ".mha"])
def test_2d_references_write_2d_files(tmp_path, suffix):
    import SimpleITK as sitk

    photo = Image(np.zeros((20, 30, 3), np.uint8), (0.3, 0.4), (5.0, -2.0), np.eye(2), modality="RGB",
                  intensity="rgb", channel_axis=-1)
    labels = labels_for(photo, top=4)
    out = write_labels(labels, photo, tmp_path / f"mask{suffix}", {4: "polyp"})
    back = read_image(out)
    assert back.array.shape == (20, 30) and back.ndim == 2 and back.channel_axis is None
    np.testing.assert_array_equal(back.array, labels)
    assert_same_geometry(photo, back)
    assert back.metadata["label_names"] == {4: "polyp"}
    assert sitk.ReadImage(str(out)).GetDimension() == 2
    if suffix == ".nii.gz":
        import nibabel as nib

        np.testing.assert_allclose(nib.load(out).affine, photo.affine, atol=1e-5)


def test_dicom_slice_labels_round_trip(tmp_path, pydicom_files):
    slice_ = read_image(pydicom_files / "CT_small.dcm")
    out = write_labels(labels_for(slice_), slice_, tmp_path / "slice.nii.gz")
    assert_same_geometry(slice_, read_image(out))


def test_dtype_follows_largest_label(tmp_path, make_nifti):
    image = read_image(make_nifti())
    for top, dtype in [(1, np.uint8), (255, np.uint8), (256, np.uint16), (70000, np.uint32)]:
        labels = np.zeros(image.spatial_shape, np.int64)
        labels[0, 0, 0] = top
        assert read_image(write_labels(labels, image, tmp_path / "x.nrrd")).array.dtype == dtype
    bool_labels = np.zeros(image.spatial_shape, bool)
    assert read_image(write_labels(bool_labels, image, tmp_path / "b.nii.gz")).array.dtype == np.uint8
    floats = labels_for(image).astype(np.float32)
    np.testing.assert_array_equal(read_image(write_labels(floats, image, tmp_path / "f.mha")).array, floats)


def test_invalid_labels_and_targets(tmp_path, make_nifti):
    image = read_image(make_nifti())
    good = labels_for(image)
    cases = [
        (good[:-1], "seg.nii.gz", "do not match"),
        (good - 1, "seg.nii.gz", "negative"),
        (good + 0.5, "seg.nii.gz", "whole numbers"),
        (good.astype(np.uint64) + 2**33, "seg.nii.gz", "too large"),
        (good, "seg.png", "3-D"),
        (good, "seg.jpg", "Cannot write labels as '.jpg'"),
        (good, "missing/seg.nii.gz", "does not exist"),
    ]
    for labels, name, message in cases:
        with pytest.raises(ImageWriteError, match=message):
            write_labels(labels, image, tmp_path / name)
    flat = Image(np.zeros((4, 5)), (1, 1), (0, 0), np.eye(2))
    with pytest.raises(ImageWriteError, match="above 65535"):
        write_labels(np.full((4, 5), 70000), flat, tmp_path / "big.png")
    assert list(tmp_path.iterdir()) == [tmp_path / "image.nii.gz"]


def test_failed_write_keeps_previous_file(tmp_path, make_nifti, monkeypatch):
    image = read_image(make_nifti())
    out = write_labels(labels_for(image), image, tmp_path / "seg.nrrd")
    before = out.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("ITK ERROR: disk full")

    import SimpleITK as sitk

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(ImageWriteError, match="disk full"):
        write_labels(labels_for(image, top=5), image, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.nii.gz", "seg.nrrd"]


def test_dicom_slice_labels_keep_the_slice_position_in_nifti(tmp_path, pydicom_files):
    """A mask on CT_small.dcm lands on the slice's voxels in 3-D (z position and thickness), as dcm2niix puts them."""
    import nibabel as nib
    import pydicom

    slice_ = read_image(pydicom_files / "CT_small.dcm")
    ds = pydicom.dcmread(pydicom_files / "CT_small.dcm", stop_before_pixels=True)
    labels = np.zeros(slice_.spatial_shape, np.uint8)
    labels[40:60, 70:90] = 1
    out = write_labels(labels, slice_, tmp_path / "slice.nii.gz")
    nii = nib.load(out)
    assert nii.shape == (128, 128)
    np.testing.assert_allclose(nii.header.get_zooms()[:2], [float(v) for v in ds.PixelSpacing][::-1], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(nii.affine[:3, 2]), float(ds.SliceThickness), rtol=1e-6)
    row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    rows, cols = np.nonzero(labels)
    lps = (np.array(ds.ImagePositionPatient, float) + np.outer(cols * float(ds.PixelSpacing[1]), row)
           + np.outer(rows * float(ds.PixelSpacing[0]), col))
    ijk = np.linalg.solve(nii.affine[:3, :3], (lps * [-1, -1, 1] - nii.affine[:3, 3]).T).T
    np.testing.assert_allclose(ijk[:, 2], 0, atol=1e-4)  # on the slice (z = -75.7 mm), not at z = 0
    data = np.asanyarray(nii.dataobj)
    assert (data[tuple(np.round(ijk[:, :2]).astype(int).T)] == 1).all()
    assert_same_geometry(slice_, read_image(out))  # and still the 2-D slice's geometry for us


def test_dicom_slice_labels_land_where_dcm2niix_puts_the_slice(tmp_path, pydicom_files):
    """dcm2niix (the reference converter) and our mask NIfTI agree on every labelled voxel's world position."""
    import shutil
    import subprocess

    import nibabel as nib

    dcm2niix = pytest.importorskip("dcm2niix")
    source = tmp_path / "dicom"
    source.mkdir()
    shutil.copy(pydicom_files / "CT_small.dcm", source)
    subprocess.run([str(dcm2niix.bin), "-z", "y", "-f", "ct", "-o", str(tmp_path), str(source)], check=True,
                   capture_output=True, timeout=60)
    reference = nib.load(tmp_path / "ct.nii.gz")
    slice_ = read_image(source / "CT_small.dcm")
    labels = (slice_.array > np.percentile(slice_.array, 90)).astype(np.uint8)
    ours = nib.load(write_labels(labels, slice_, tmp_path / "mask.nii.gz"))
    ijk = np.argwhere(np.asanyarray(ours.dataobj) > 0)
    world = nib.affines.apply_affine(ours.affine, np.c_[ijk, np.zeros(len(ijk))])
    there = nib.affines.apply_affine(np.linalg.inv(reference.affine), world)
    np.testing.assert_allclose(there, np.round(there), atol=1e-4)  # on dcm2niix's voxel centres, slice 0
    there = np.round(there).astype(int)
    assert len(ijk) > 1000 and (there[:, 2] == 0).all()
    hu = np.asanyarray(reference.dataobj).reshape(reference.shape[:2])
    np.testing.assert_array_equal(hu[there[:, 0], there[:, 1]], slice_.array.T[ijk[:, 0], ijk[:, 1]])


@pytest.mark.parametrize("suffix", [".nii.gz", ".seg.nrrd", ".nrrd", ".mha", ".tif"])
def test_object_classes_and_colours_round_trip(tmp_path, suffix):
    """Every format with label metadata gives back each object's name, class and colour as written."""
    labels = np.zeros((4, 6, 8), np.uint8)
    labels[1, 1:3, 1:3], labels[2, 3:5, 4:7], labels[3, 0, 0] = 1, 2, 7
    like = Image(np.zeros(labels.shape, np.float32), (0.8, 0.9, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    names = {1: "liver tumour", 2: "left kidney", 7: "cyst"}
    classes = {1: "lesion | suspicious: yes", 2: "organ"}  # 7 has none; separators survive the tags
    colors = {1: (250, 10, 20), 2: (0.0, 0.5, 1.0, 1.0), 7: (3, 200, 90)}  # 0-255 RGB or napari's RGBA
    path = write_labels(labels, like, tmp_path / f"objects{suffix}", names, label_colors=colors,
                        label_classes={**classes, 7: ""})
    read = read_image(path).metadata
    assert read["label_names"] == names
    assert read["label_classes"] == classes
    assert read["label_colors"] == {1: (250, 10, 20), 2: (0, 128, 255), 7: (3, 200, 90)}

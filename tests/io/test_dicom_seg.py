"""DICOM-SEG written with highdicom on pydicom's CT/MR slices and on series built here, checked by
highdicom's reader at the source voxels' world positions, by dciodvfy, and read back by us."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from napari_medseg.errors import ImageWriteError
from napari_medseg.io import read_image, write_labels

hd = pytest.importorskip("highdicom")

NAMES = {1: "liver", 2: "spleen", 4: "lesion"}
OBLIQUE = (0.866025, 0.5, 0.0, 0.0, 0.0, -1.0)  # row and column cosines: a tilted coronal-ish plane


def blobs(shape) -> np.ndarray:
    """Three labelled boxes (values 1, 2, 4) at distinct places of a 2-D or 3-D grid."""
    labels = np.zeros(shape, np.uint8)
    *z, rows, cols = shape
    lead = (slice(0, max(1, z[0] // 2)),) if z else ()
    tail = (slice(z[0] // 2, z[0]),) if z else ()
    labels[lead + (slice(1, rows // 3), slice(1, cols // 3))] = 1
    labels[tail + (slice(rows // 2, rows - 1), slice(cols // 2, cols - 1))] = 2
    labels[lead + (slice(rows // 2, rows - 2), slice(2, 4))] = 4
    return labels


def source_index(image, world):
    """Fractional numpy index (z, y, x) of LPS points in a 3-D `image` (2-D images: in-plane (y, x))."""
    n = image.ndim
    matrix = image.direction @ np.diag(image.spacing)
    ijk = np.linalg.solve(matrix, (world[:, :n] - np.array(image.origin)).T).T
    return ijk[:, ::-1]


def check_world_positions(seg_path, image, labels):
    """Every SEG voxel (highdicom's volume and affine) lies <= 0.5 voxel from a source voxel with that label."""
    seg = hd.seg.segread(seg_path)
    volume = seg.get_volume(combine_segments=True, relabel=False)
    values = sorted(v for v in np.unique(labels) if v)
    found = 0
    for number in range(1, len(values) + 1):
        index = np.argwhere(volume.array == number)
        world = (volume.affine[:3, :3] @ index.T).T + volume.affine[:3, 3]
        if image.ndim == 2:
            assert np.allclose(world[:, 2], image.metadata["slice_geometry"]["origin"][2], atol=1e-3)
        where = source_index(image, world)
        nearest = np.round(where).astype(int)
        assert np.abs(where - nearest).max() <= 0.5
        assert (labels[tuple(nearest.T)] == values[number - 1]).all()
        found += len(index)
    assert found == int((labels > 0).sum())


@pytest.fixture
def sources(pydicom_files, dicom_series, tmp_path):
    return {
        "CT_small": lambda: pydicom_files / "CT_small.dcm",
        "MR_small": lambda: pydicom_files / "MR_small.dcm",
        "axial series": lambda: dicom_series(tmp_path / "axial", count=5, shape=(12, 10)),
        "oblique MR series": lambda: dicom_series(tmp_path / "oblique", count=4, shape=(9, 11), orientation=OBLIQUE,
                                                  modality="MR", spacing=3.0),
    }


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
@pytest.mark.parametrize("source", ["CT_small", "MR_small", "axial series", "oblique MR series"])
def test_segments_land_on_source_voxels(sources, source, seg_type, tmp_path):
    image = read_image(sources[source]())
    labels = blobs(image.spatial_shape)
    out = write_labels(labels, image, tmp_path / "seg.dcm", NAMES, label_colors={2: (10, 20, 250)},
                       dicom_seg_type=seg_type)
    check_world_positions(out, image, labels)
    seg = hd.seg.segread(out)
    assert str(seg.SegmentationType) == seg_type
    references = {str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
                  for item in series.ReferencedInstanceSequence}
    import pydicom

    files = [image.path] if image.path.is_file() else sorted(image.path.iterdir())
    assert references == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3)] == ["liver", "spleen", "lesion"]

    back = read_image(out)  # ours: numbers 1..3, names and colours, the source's geometry
    assert back.metadata["format"] == "dicom-seg"
    assert back.metadata["label_names"] == {1: "liver", 2: "spleen", 3: "lesion"}
    colors = back.metadata["label_colors"]
    assert colors[1] == (40, 140, 40)  # TotalSegmentator's liver colour, found by name
    assert np.abs(np.subtract(colors[2], (10, 20, 250))).max() <= 1  # CIELab round trip
    if seg_type == "LABELMAP" or image.ndim == 2:  # full grid (BINARY omits empty frames)
        assert back.spatial_shape == image.spatial_shape
        np.testing.assert_allclose(back.origin, image.origin, atol=1e-4)
        np.testing.assert_allclose(back.spacing, image.spacing, atol=1e-4)  # positions are DS strings
        np.testing.assert_allclose(back.direction, image.direction, atol=1e-4)
        np.testing.assert_array_equal(back.array, np.array([0, 1, 2, 0, 3], np.uint8)[labels])


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) not installed")
@pytest.mark.parametrize("source", ["CT_small", "MR_small", "axial series", "oblique MR series"])
def test_dciodvfy_finds_no_errors(sources, source, tmp_path):
    # BINARY only: Debian's dicom3tools (2022) predates the Label Map Segmentation IOD (DICOM 2024)
    image = read_image(sources[source]())
    out = write_labels(blobs(image.spatial_shape), image, tmp_path / "seg.dcm", NAMES)
    report = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=60)
    text = report.stdout + report.stderr
    assert "Segmentation" in text
    assert [line for line in text.splitlines() if line.startswith("Error")] == []


def test_bad_requests_are_one_line_and_write_nothing(tmp_path, make_nifti, pydicom_files, dicom_series):
    nifti = read_image(make_nifti())
    unplaced = read_image(dicom_series(tmp_path / "no-frame", count=3, frame_of_reference=None))
    ct = read_image(pydicom_files / "CT_small.dcm")
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (blobs(nifti.spatial_shape), nifti, "needs labels drawn on a DICOM image, not on image.nii.gz"),
        (np.zeros(ct.spatial_shape, np.uint8), ct, "labels are empty"),
        (blobs(unplaced.spatial_shape), unplaced, "no FrameOfReferenceUID"),
        (np.arange(128 * 128).reshape(128, 128) % 300 + 1, ct, "300 segments: DICOM-SEG holds at most 255"),
    ]
    for labels, like, message in cases:
        with pytest.raises(ImageWriteError, match=message) as caught:
            write_labels(labels, like, out / "seg.dcm")
        assert "\n" not in str(caught.value)
    with pytest.raises(ImageWriteError, match="type must be one of BINARY, LABELMAP"):
        write_labels(blobs(ct.spatial_shape), ct, out / "seg.dcm", dicom_seg_type="FRACTIONAL")
    moved = ct.with_array(ct.array)
    moved.origin = (0.0, 0.0)
    moved.path = tmp_path / "missing.dcm"
    with pytest.raises(ImageWriteError, match="source image is unknown"):
        write_labels(blobs(ct.spatial_shape), moved, out / "seg.dcm")
    assert list(out.iterdir()) == []


def test_segments_carry_the_class_tables_codes(tmp_path, dicom_series, dciodvfy):
    """Known names get their SNOMED-CT codes (laterality as type modifier), unknown ones the generic Tissue."""
    import pydicom

    image = read_image(dicom_series(tmp_path / "axial", count=4, shape=(12, 10)))
    labels = np.zeros(image.spatial_shape, np.uint8)
    for value in (1, 2, 3, 4):
        labels[value - 1, 2:6, 2:6] = value
    out = write_labels(labels, image, tmp_path / "seg.dcm", {1: "liver", 2: "spleen", 3: "kidney_left", 4: "my lesion"})
    assert dciodvfy(out) == []  # the type modifier and region sequences where DICOM wants them
    items = pydicom.dcmread(out).SegmentSequence

    def code(item):
        return str(item.CodingSchemeDesignator), str(item.CodeValue), str(item.CodeMeaning)

    types = {str(s.SegmentLabel): code(s.SegmentedPropertyTypeCodeSequence[0]) for s in items}
    assert types == {"liver": ("SCT", "10200004", "Liver"), "spleen": ("SCT", "78961009", "Spleen"),
                     "kidney_left": ("SCT", "64033007", "Kidney"), "my lesion": ("SCT", "85756007", "Tissue")}
    categories = {str(s.SegmentLabel): code(s.SegmentedPropertyCategoryCodeSequence[0]) for s in items}
    assert categories["liver"] == ("SCT", "123037004", "Anatomical Structure")
    assert categories["my lesion"] == ("SCT", "85756007", "Tissue")
    kidney = next(s for s in items if s.SegmentLabel == "kidney_left").SegmentedPropertyTypeCodeSequence[0]
    assert code(kidney.SegmentedPropertyTypeModifierCodeSequence[0]) == ("SCT", "7771000", "Left")
    seg = hd.seg.segread(out)  # highdicom reads the codes back too
    assert seg.get_segment_description(1).segmented_property_type.value == "10200004"


def test_class_table_codes_agree_with_dicom(tmp_path):
    """Every class-table code that DICOM PS3.16 lists (pydicom's code dictionary) means the same there, and no
    DICOM meaning names a side that the class's name does not."""
    from pydicom.sr._concepts_dict import concepts

    from napari_medseg.models.registry import class_table

    dicom = {}  # code value -> its DICOM meanings (a short one and SNOMED's "... structure (body structure)")
    for entry in concepts["SCT"].values():
        for value, (meaning, _) in entry.items():
            dicom[value] = dicom.get(value, "") + " | " + meaning.lower()
    table = class_table("totalsegmentator_v2")
    checked = 0
    for value, codes in table["codes"].items():
        name = table["names"][value]
        for scheme, code, meaning in codes.values():
            assert scheme == "SCT" and code.isdigit()
            if code not in dicom:
                continue
            checked += 1
            if meaning in ("Anatomical Structure", "Morphologically Altered Structure"):  # DICOM's CID 7150 terms
                continue
            words = [w for w in meaning.lower().split() if w not in ("of", "gland")]
            assert all(w[:5] in dicom[code] for w in words), (name, code, meaning, dicom[code])  # splen(ic), ...
            for side in ("left", "right"):
                assert side not in dicom[code].split() or side in name, (name, code, dicom[code])
    assert len(table["codes"]) == 117 and checked > 150


def test_overlapping_segments_are_refused_in_one_line(tmp_path, pydicom_files):
    import pydicom
    from pydicom.sr.codedict import codes

    from napari_medseg.errors import ImageReadError

    source = pydicom.dcmread(pydicom_files / "CT_small.dcm")
    masks = np.zeros((1, 128, 128, 2), bool)
    masks[0, 10:40, 10:40, 0] = masks[0, 30:60, 30:60, 1] = True
    segments = [hd.seg.SegmentDescription(n, f"s{n}", codes.SCT.Tissue, codes.SCT.Tissue, "MANUAL") for n in (1, 2)]
    seg = hd.seg.Segmentation([source], masks, "BINARY", segments, hd.UID(), 5, hd.UID(), 1, "other tool", "x",
                              "1", "1")
    seg.save_as(tmp_path / "overlap.dcm")
    with pytest.raises(ImageReadError, match="Segments of overlap.dcm overlap") as caught:
        read_image(tmp_path / "overlap.dcm")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
def test_tilted_source_written_back_on_its_tilted_slices(tilted_series, tmp_path, fmt, dciodvfy):
    """Labels on the tilt-corrected grid are written on the tilted source slices: each source pixel carries the
    label of the grid voxel at its world position (<= 0.5 voxel), and dciodvfy finds no errors."""
    import pydicom

    from napari_medseg.io import convert_labels

    image = read_image(tilted_series(tmp_path / "tilted"))
    labels = np.zeros(image.spatial_shape, np.uint8)
    labels[1:7, 14:31, 5:21] = 1
    out = write_labels(labels, image, tmp_path / "out.dcm", {1: "liver"}, fmt=fmt)
    assert dciodvfy(out) == []
    by_uid = {str(ds.SOPInstanceUID): ds for ds in
              (pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(image.path.iterdir()))}
    if fmt == "rtstruct":
        back = read_image(convert_labels(out, image, tmp_path / "back.nii.gz"))
        rows = np.flatnonzero((back.array != labels).any(axis=(0, 2)))
        assert set(rows) <= {13, 14, 30, 31}  # the box's edges move by less than a voxel, nothing else
        assert ((back.array == 1) & (labels == 1)).sum() / (labels == 1).sum() > 0.9
        return
    ds = pydicom.dcmread(out)
    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    assert frames.shape == (6, 40, 32)  # the source slices' pixels, one frame per labelled slice
    sy, sx = (float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing)
    rows, columns = np.indices(frames.shape[1:]).reshape(2, -1)
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(position, np.array(by_uid[uid].ImagePositionPatient, float), atol=1e-3)
        world = position + np.outer(columns * sx, (1, 0, 0)) + np.outer(rows * sy, (0, 1, 0))
        where = source_index(image, world)
        nearest = np.round(where).astype(int)
        assert np.abs(where - nearest)[:, 0].max() < 1e-3 and np.abs(where - nearest).max() <= 0.5 + 1e-6
        np.testing.assert_array_equal(frame.ravel(), labels[tuple(nearest.T)])


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_enhanced_multiframe_source(enhanced_mr, tmp_path, seg_type, dciodvfy):
    """A DICOM-SEG on an Enhanced (multi-frame) MR references the source's frames (ReferencedFrameNumber) and lands
    on their voxels; an RTSTRUCT for it is refused in one line."""
    import pydicom

    source = enhanced_mr(tmp_path / "emr" / "enhanced.dcm")
    image = read_image(source)
    labels = blobs(image.spatial_shape)
    out = write_labels(labels, image, tmp_path / "seg.dcm", NAMES, dicom_seg_type=seg_type)
    check_world_positions(out, image, labels)
    frames = pydicom.dcmread(source).PerFrameFunctionalGroupsSequence
    seg = pydicom.dcmread(out)
    assert [str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence] \
        == [str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)]
    referenced = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        number = int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        np.testing.assert_allclose(np.array(item.PlanePositionSequence[0].ImagePositionPatient, float),
                                   np.array(frames[number - 1].PlanePositionSequence[0].ImagePositionPatient, float),
                                   atol=1e-3)
        referenced.append(number)
    assert set(referenced) == set(range(1, len(frames) + 1))  # every frame holds a segment
    if seg_type == "BINARY":
        assert dciodvfy(out) == []
    with pytest.raises(ImageWriteError, match="Enhanced .multi-frame. image: save as DICOM-SEG") as caught:
        write_labels(labels, image, tmp_path / "rt.dcm", NAMES, fmt="rtstruct")
    assert "\n" not in str(caught.value) and not (tmp_path / "rt.dcm").exists()


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_seg_on_a_tilted_source_reads_back_on_the_corrected_grid(tilted_series, tmp_path, seg_type):
    """A SEG written on a tilted series (sheared frames, which highdicom will not stack) is read onto the orthogonal
    grid with the read warning, and `convert_labels` puts it back on the series' voxels unchanged."""
    from napari_medseg.io import convert_labels

    image = read_image(tilted_series(tmp_path / "tilted"))
    labels = np.zeros(image.spatial_shape, np.uint8)
    labels[1:7, 14:31, 5:21] = 1
    labels[3:5, 33:40, 2:9] = 2
    out = write_labels(labels, image, tmp_path / "seg.dcm", {1: "liver", 2: "spleen"}, dicom_seg_type=seg_type)
    back = read_image(out)
    assert any("gantry tilt of 15.0 degrees corrected by resampling" in w for w in back.metadata["warnings"])
    assert back.metadata["label_names"] == {1: "liver", 2: "spleen"}
    np.testing.assert_allclose(back.direction, image.direction, atol=1e-6)
    np.testing.assert_allclose(back.spacing, image.spacing, atol=1e-4)
    again = read_image(convert_labels(out, image, tmp_path / "back.nii.gz"))
    np.testing.assert_array_equal(again.array, labels)

"""3D Slicer's seg.nrrd (read by slicerio, Slicer's own Python reader) and NIfTI with TotalSegmentator's
label-table extension (read by nibabel as TotalSegmentator reads it): names, colours, values, geometry."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from napari_medseg.errors import ImageWriteError
from napari_medseg.io import read_image, write_labels
from napari_medseg.io.formats import sidecar_path

NAMES = {1: "liver", 2: "spleen", 7: "my tumour"}
COLORS = {7: (200, 10, 30)}


def labels_of(image) -> np.ndarray:
    labels = np.zeros(image.spatial_shape, np.uint8)
    labels[1:3, 1:4, 2:4] = 1
    labels[3:5, 2:5, 0:2] = 2
    labels[4, 5, 6] = 7
    return labels


def test_seg_nrrd_read_by_slicerio(tmp_path, make_nifti, affines):
    slicerio = pytest.importorskip("slicerio")
    image = read_image(make_nifti(affine=affines["oblique"]))
    labels = labels_of(image)
    out = write_labels(labels, image, tmp_path / "case.seg.nrrd", NAMES, label_colors=COLORS)
    segmentation = slicerio.read_segmentation(str(out))
    segments = {s["name"]: s for s in segmentation["segments"]}
    assert set(segments) == {"liver", "spleen", "my tumour"}
    assert {name: s["labelValue"] for name, s in segments.items()} == {"liver": 1, "spleen": 2, "my tumour": 7}
    assert {s["layer"] for s in segments.values()} == {0}
    np.testing.assert_allclose(segments["my tumour"]["color"], np.array(COLORS[7]) / 255, atol=1e-5)
    np.testing.assert_allclose(segments["liver"]["color"], np.array([40, 140, 40]) / 255, atol=1e-5)
    assert segments["my tumour"]["extent"] == [6, 6, 5, 5, 4, 4]  # i (x), j (y), k (z) min and max
    assert segments["liver"]["extent"] == [2, 3, 1, 3, 1, 2]
    terminology = segments["liver"]["terminology"]  # codes as [scheme, value, meaning]
    assert list(terminology["category"]) == ["SCT", "123037004", "Anatomical Structure"]
    assert list(terminology["type"]) == ["SCT", "10200004", "Liver"]  # the class table's code for liver
    assert list(segments["my tumour"]["terminology"]["type"]) == ["SCT", "85756007", "Tissue"]  # unknown name
    assert segmentation["masterRepresentation"] == "Binary labelmap"
    voxels = segmentation["voxels"]  # slicerio keeps NRRD's (i, j, k) order
    np.testing.assert_array_equal(voxels, labels.T)
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"])
    np.testing.assert_allclose(ijk_to_lps, image._matrix_lps(), atol=1e-5)

    back = read_image(out)  # ours
    np.testing.assert_array_equal(back.array, labels)
    assert back.metadata["label_names"] == NAMES
    assert back.metadata["label_colors"][7] == COLORS[7] and back.metadata["label_colors"][1] == (40, 140, 40)


def test_seg_nrrd_refuses_2d(tmp_path, pydicom_files):
    ct = read_image(pydicom_files / "CT_small.dcm")
    with pytest.raises(ImageWriteError, match="seg.nrrd holds 3-D segmentations"):
        write_labels(np.ones(ct.spatial_shape, np.uint8), ct, tmp_path / "slice.seg.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_nifti_label_table_as_totalsegmentator_reads_it(tmp_path, make_nifti):
    import nibabel as nib

    image = read_image(make_nifti())
    labels = labels_of(image)
    out = write_labels(labels, image, tmp_path / "case.nii.gz", NAMES, label_colors=COLORS)
    nii = nib.load(out)
    extension = nii.header.extensions[0]  # TotalSegmentator's load_multilabel_nifti reads the first one
    assert extension.get_code() == 0
    root = ET.fromstring(extension.get_content())
    table = {int(e.get("Key")): (e.text, [float(e.get(c)) for c in ("Red", "Green", "Blue")])
             for e in root.find("VolumeInformation").find("LabelTable")}
    assert {k: v[0] for k, v in table.items()} == NAMES
    np.testing.assert_allclose(table[7][1], np.array(COLORS[7]) / 255, atol=1e-5)
    assert root.find("VolumeInformation").find("VolumeType").text == "Label"
    np.testing.assert_array_equal(np.asarray(nii.dataobj), labels.T)
    np.testing.assert_allclose(nii.affine, image.affine, atol=1e-5)

    sidecar_path(out).unlink()  # the table alone carries the names
    back = read_image(out)
    assert back.metadata["label_names"] == NAMES
    assert back.metadata["label_colors"] == {1: (40, 140, 40), 2: (50, 170, 60), 7: COLORS[7]}


def test_nifti_written_by_totalsegmentator_style_xml_is_read(tmp_path, make_nifti):
    """A table as TotalSegmentator writes it (CDATA names, other whitespace) under extension code 0."""
    import nibabel as nib

    path = make_nifti("ts.nii.gz", data=np.zeros((7, 6, 5), np.uint8))
    nii = nib.load(path)
    xml = ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <VolumeInformation Index="0">   <LabelTable>\n'
           '<Label Key="1" Red="1.0" Green="0.0" Blue="0.0" Alpha="1"><![CDATA[spleen]]></Label>\n'
           '<Label Key="5" Red="0.0" Green="0.5019607843137255" Blue="1.0" Alpha="1"><![CDATA[liver]]></Label>\n'
           '  </LabelTable>  <VolumeType><![CDATA[Label]]></VolumeType>   </VolumeInformation></CaretExtension>\n  ')
    nii.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode()))
    nib.save(nii, path)
    back = read_image(path)
    assert back.metadata["label_names"] == {1: "spleen", 5: "liver"}
    assert back.metadata["label_colors"] == {1: (255, 0, 0), 5: (0, 128, 255)}


def test_seg_nrrd_extent_of_large_label_values(tmp_path, make_nifti):
    slicerio = pytest.importorskip("slicerio")
    image = read_image(make_nifti())
    labels = np.zeros(image.spatial_shape, np.uint32)
    labels[2, 1:3, 4] = 3_000_000_000
    labels[0, 0, 0] = 5
    out = write_labels(labels, image, tmp_path / "big.seg.nrrd")
    segments = {s["labelValue"]: s for s in slicerio.read_segmentation(str(out), skip_voxels=True)["segments"]}
    assert segments[3_000_000_000]["extent"] == [4, 4, 1, 2, 2, 2] and segments[5]["extent"] == [0, 0, 0, 0, 0, 0]
    assert segments[5]["name"] == "Segment_5"

"""Labelled NIfTI: the label table (names and RGB) in a NIfTI header extension, as TotalSegmentator writes it.

The extension holds a Caret-style XML document: CaretExtension / VolumeInformation / LabelTable with one
<Label Key="value" Red=".." Green=".." Blue=".." Alpha="1">name</Label> per label (colour components 0-1;
an object's class, when it has one, in a Class attribute, which readers of the table that do not know it
skip) and VolumeType "Label". TotalSegmentator stores it under extension code 0 (and reads the first extension);
we write code 0 too and, reading, take the first extension of any code that holds such a table.
Voxels and geometry are written with nibabel (RAS affine, sform and qform code 1, millimetres). Labels on a
single axial DICOM slice keep the slice's place in 3-D: the 2-D file's affine carries its z position and
thickness (from Image.metadata["slice_geometry"]), as dcm2niix writes single slices.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .image import Image
from .segments import Segment

EXTENSION_CODE = 0


def label_table_xml(segments: list[Segment]) -> bytes:
    root = ET.Element("CaretExtension")
    info = ET.SubElement(root, "VolumeInformation", Index="0")
    table = ET.SubElement(info, "LabelTable")
    for segment in segments:
        red, green, blue = (f"{c / 255:.6g}" for c in segment.color)
        label = ET.SubElement(table, "Label", Key=str(segment.value), Red=red, Green=green, Blue=blue, Alpha="1")
        if segment.object_class:
            label.set("Class", segment.object_class)
        label.text = segment.name
    ET.SubElement(info, "VolumeType").text = "Label"
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def nifti_affine(like: Image) -> np.ndarray:
    """`like.affine`, or for a 2-D axial DICOM slice the slice's full 3-D affine (z position, thickness)."""
    geometry = like.metadata.get("slice_geometry")
    if like.ndim != 2 or not geometry:
        return like.affine
    direction = np.reshape(geometry["direction"], (3, 3))
    in_plane = np.allclose(direction[:2, :2], like.direction, atol=1e-6) and \
        np.allclose(geometry["origin"][:2], like.origin, atol=1e-4) and \
        np.allclose(geometry["spacing"][:2], like.spacing, rtol=1e-6)
    if not in_plane:  # a non-axial slice is written on its own pixel grid (see io/dicom.py)
        return like.affine
    slice_ = Image(np.zeros((1, 1, 1)), geometry["spacing"], geometry["origin"], direction)
    return slice_.affine


def write_labelled_nifti(labels: np.ndarray, like: Image, path: Path, segments: list[Segment]) -> None:
    """`labels` (numpy order) as NIfTI at `path` (the caller's temporary name), with the label table when named."""
    import nibabel as nib

    data = np.ascontiguousarray(labels.T)  # numpy (z, y, x) -> nibabel (x, y, z)
    affine = nifti_affine(like)
    nii = nib.Nifti1Image(data, affine)
    nii.header.set_data_dtype(labels.dtype)
    nii.header.set_xyzt_units("mm")
    nii.set_sform(affine, 1)
    nii.set_qform(affine, 1)
    if segments:
        nii.header.extensions.append(nib.nifti1.Nifti1Extension(EXTENSION_CODE, label_table_xml(segments)))
    nib.save(nii, str(path))


def read_label_table(nii) -> tuple[dict[int, str], dict[int, tuple[int, int, int]], dict[int, str]]:
    """Names, colours (0-255) and classes from the first label-table extension of a nibabel image;
    ({}, {}, {}) if none."""
    for extension in nii.header.extensions:
        try:
            root = ET.fromstring(extension.get_content())
        except (ET.ParseError, TypeError, ValueError):
            continue
        labels = root.findall("./VolumeInformation/LabelTable/Label")
        if root.tag != "CaretExtension" or not labels:
            continue
        names, colors, classes = {}, {}, {}
        for label in labels:
            try:
                key = int(label.get("Key"))
                rgb = [float(label.get(channel)) for channel in ("Red", "Green", "Blue")]
            except (TypeError, ValueError):
                continue
            names[key] = (label.text or "").strip()
            if all(0 <= c <= 1 for c in rgb):
                colors[key] = tuple(int(round(c * 255)) for c in rgb)
            if label.get("Class"):
                classes[key] = label.get("Class")
        return names, colors, classes
    return {}, {}, {}

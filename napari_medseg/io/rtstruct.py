"""DICOM RT Structure Sets (RTSTRUCT): labels as planar contours on the source series, written with pydicom.

rt-utils (the usual library) needs opencv-python, whose bundled Qt plugins clash with napari's Qt, so the
contours come from scikit-image instead: ``find_contours`` at level 0.5 traces each object's outline per
slice (through the edge pixels' outer boundary, a padded mask keeps objects at the border closed), and
reading fills each contour with ``polygon`` (pixel centres inside), holes and islands by even-odd (XOR),
as radiotherapy systems do. One ROI per segment: number 1..N, name, display colour, interpreted type ORGAN.
An RTSTRUCT has no grid of its own: it is read onto an image (``convert_labels(rt, like=series, ...)``).
"""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from ..errors import ImageReadError, ImageWriteError
from .image import Image
from .segments import Segment

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired), the customary study reference


def is_rtstruct(path: Path) -> bool:
    from .dicom_seg import sop_class_of

    return sop_class_of(path) == RTSTRUCT_SOP_CLASS


_CONTOUR_DATA = 0x30060050


def _decimal_strings(tag: int, values: np.ndarray):
    """A DS element given as its encoded bytes: pydicom makes one validated Python object per DS value when
    they are set (60 slices x 10 ROIs of 512^2: 6.7 s -> 4.3 s in all); 3-decimal numbers are valid DS."""
    from pydicom.dataelem import RawDataElement

    text = "\\".join(f"{v:.3f}" for v in values).encode("ascii")
    if len(text) % 2:
        text += b" "
    return RawDataElement(tag, "DS", len(text), text, 0, False, True, True, False)


def _slice_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines (row, column) of a 2-D mask, without the repeated end point."""
    from skimage.measure import find_contours

    padded = np.pad(mask, 1).astype(np.float32)
    return [c[:-1] - 1 for c in find_contours(padded, 0.5) if len(c) > 3]


def _sequence(items):
    from pydicom.sequence import Sequence

    return Sequence(items)


def _item(**fields):
    from pydicom.dataset import Dataset

    ds = Dataset()
    for key, value in fields.items():
        setattr(ds, key, value)
    return ds


def check_source(like: Image) -> None:
    """`like` is a series of single-frame DICOM images (one line otherwise, before any slow work)."""
    from .dicom_seg import source_files
    from .dicom_series import read_header

    files = source_files(like)
    if len(files) == 1 and int(read_header(files[0]).get("NumberOfFrames", 1) or 1) > 1:
        raise ImageWriteError(f"RTSTRUCT is written for series of single-frame images, and {files[0].name} is an "
                              "Enhanced (multi-frame) image: save as DICOM-SEG (.dcm) instead")


def write_rtstruct(labels: np.ndarray, like: Image, path: Path, segments: list[Segment]) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from .. import __version__
    from .dicom_seg import check_segments, on_source_slices, save_checked, source_headers

    check_segments(segments, "BINARY")
    check_source(like)
    sources = source_headers(like)
    first = sources[0]
    if "FrameOfReferenceUID" not in first:
        raise ImageWriteError("The source DICOM has no FrameOfReferenceUID, so an RTSTRUCT cannot be placed on it")
    stack = on_source_slices(labels, like)
    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, ds.file_meta.MediaStorageSOPInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(ds, keyword, first.get(keyword, ""))
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = int(first.get("SeriesNumber") or 0) + 2000, 1
    ds.SeriesDescription, ds.OperatorsName = "napari-medseg structures", ""
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "napari-medseg", "napari-medseg", __version__
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = "napari-medseg"
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    images = [_item(ReferencedSOPClassUID=s.SOPClassUID, ReferencedSOPInstanceUID=s.SOPInstanceUID) for s in sources]
    ds.ReferencedFrameOfReferenceSequence = _sequence([_item(
        FrameOfReferenceUID=first.FrameOfReferenceUID,
        RTReferencedStudySequence=_sequence([_item(
            ReferencedSOPClassUID=_STUDY_COMPONENT, ReferencedSOPInstanceUID=first.StudyInstanceUID,
            RTReferencedSeriesSequence=_sequence([_item(SeriesInstanceUID=first.SeriesInstanceUID,
                                                        ContourImageSequence=_sequence(images))]))]))])
    from scipy.ndimage import find_objects

    boxes = dict(zip([s.value for s in segments], _boxes(stack, segments, find_objects)))
    rois, contours, observations = [], [], []
    for number, segment in enumerate(segments, 1):
        rois.append(_item(ROINumber=number, ReferencedFrameOfReferenceUID=first.FrameOfReferenceUID,
                          ROIName=segment.name[:64], ROIGenerationAlgorithm="SEMIAUTOMATIC"))
        planes = []
        depth, rows, columns = boxes[segment.value]  # trace inside the object's bounding box only
        for k in range(depth.start, depth.stop):
            source = sources[k]
            for outline in _slice_outlines(stack[k, rows, columns] == segment.value):
                points = _to_patient(source, outline + (rows.start, columns.start))
                plane = _item(
                    ContourImageSequence=_sequence([_item(ReferencedSOPClassUID=source.SOPClassUID,
                                                          ReferencedSOPInstanceUID=source.SOPInstanceUID)]),
                    ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(points),
                    ContourNumber=len(planes) + 1)
                plane[_CONTOUR_DATA] = _decimal_strings(_CONTOUR_DATA, points.ravel())
                planes.append(plane)
        contours.append(_item(ROIDisplayColor=list(segment.color), ReferencedROINumber=number,
                              ContourSequence=_sequence(planes)))
        observations.append(_item(ObservationNumber=number, ReferencedROINumber=number,
                                  RTROIInterpretedType="ORGAN", ROIInterpreter=""))
    ds.StructureSetROISequence = _sequence(rois)
    ds.ROIContourSequence = _sequence(contours)
    ds.RTROIObservationsSequence = _sequence(observations)
    save_checked(ds, path, "RTSTRUCT", len(segments), lambda back: len(back.ROIContourSequence))


def _boxes(stack: np.ndarray, segments: list[Segment], find_objects) -> list[tuple[slice, ...]]:
    """Each segment's bounding box (slices, rows, columns) in one pass over the labels."""
    values = np.array([s.value for s in segments])
    if stack.max() > 65535:  # find_objects lists every value up to the largest: number them first
        stack = np.where(stack > 0, np.searchsorted(values, stack) + 1, 0)
        values = np.arange(1, len(segments) + 1)
    found = find_objects(stack)
    return [found[v - 1] for v in values]


def _to_patient(source, outline: np.ndarray) -> np.ndarray:
    """(row, column) pixel coordinates of a slice -> LPS millimetres (x, y, z)."""
    orientation = np.array(source.ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    origin = np.array(source.ImagePositionPatient, float)
    return (origin + np.outer(outline[:, 1] * column_spacing, orientation[:3])
            + np.outer(outline[:, 0] * row_spacing, orientation[3:]))


def referenced_image(path: Path, *, progress=None, cancel=None) -> Image:
    """The DICOM series an RTSTRUCT's contours were drawn on (its RTReferencedSeriesSequence), found in the
    RTSTRUCT's folder or the folder above it (exports put them side by side or in sibling folders)."""
    import pydicom

    from .dicom_series import scan_folder
    from .read import read_image

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids = [str(series.SeriesInstanceUID) for frame in ds.ReferencedFrameOfReferenceSequence
                for study in frame.RTReferencedStudySequence for series in study.RTReferencedSeriesSequence]
    except Exception as exc:  # pydicom raises many types for damaged files; missing sequences: AttributeError
        raise ImageReadError(f"RTSTRUCT {path.name} names no image series it was drawn on "
                             f"({(str(exc).splitlines() or [type(exc).__name__])[0]})") from None
    for folder in (path.parent, path.parent.parent):
        try:
            stacks = scan_folder(folder, progress, cancel)
        except ImageReadError:  # no images there
            continue
        keys = [info.key for info, _ in stacks if info.uid in uids]
        if keys:
            return read_image(folder, keys[0], progress=progress, cancel=cancel)
    raise ImageReadError(f"The series RTSTRUCT {path.name} was drawn on ({', '.join(uids)}) is not in "
                         f"{path.parent} or the folder above: open that series and use 'medseg convert {path.name} "
                         "--like SERIES'")


def read_rtstruct_onto(path: Path, like: Image) -> Image:
    """The RTSTRUCT's ROIs filled on `like`'s grid: values = ROI order 1..N, with names and colours."""
    import pydicom
    from skimage.draw import polygon

    try:
        ds = pydicom.dcmread(path)
        rois = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
        contours = list(ds.ROIContourSequence)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ImageReadError(f"Cannot read RTSTRUCT {path.name}: {str(exc).splitlines()[0]}") from None
    shape = like.spatial_shape if like.ndim == 3 else (1, *like.spatial_shape)
    matrix = np.eye(3)
    matrix[:like.ndim, :like.ndim] = like.direction @ np.diag(like.spacing)
    if like.ndim == 2:  # a single slice: its normal and position from the slice geometry
        geometry = like.metadata.get("slice_geometry")
        if not geometry:
            raise ImageReadError("An RTSTRUCT needs the 3-D placement of its image: open the DICOM slice itself")
        matrix = np.reshape(geometry["direction"], (3, 3)) @ np.diag(geometry["spacing"])
        origin = np.array(geometry["origin"])
    else:
        origin = np.array(like.origin)
    labels = np.zeros(shape, np.uint8 if len(contours) <= 255 else np.uint16)
    names, colors = {}, {}
    outside = 0
    for value, roi in enumerate(sorted(contours, key=lambda c: int(c.ReferencedROINumber)), 1):
        names[value] = rois.get(int(roi.ReferencedROINumber), f"ROI {roi.ReferencedROINumber}")
        if "ROIDisplayColor" in roi:
            colors[value] = tuple(int(c) for c in roi.ROIDisplayColor)
        mask = np.zeros(shape, bool)
        for contour in roi.get("ContourSequence", []):
            points = np.reshape(np.array(contour.ContourData, float), (-1, 3))
            ijk = np.linalg.solve(matrix, (points - origin).T).T  # (x, y, z) voxel coordinates
            k = np.round(ijk[:, 2])
            if np.abs(ijk[:, 2] - k).max() > 0.25 or not 0 <= k[0] < shape[0]:
                outside += 1
                continue
            rr, cc = polygon(ijk[:, 1], ijk[:, 0], shape[1:])
            plane = np.zeros(shape[1:], bool)
            plane[rr, cc] = True
            mask[int(k[0])] ^= plane
        labels[mask] = value
    warnings = [f"{outside} contours are not on the image's slices and were left out"] if outside else []
    return like.with_array(labels.reshape(like.spatial_shape), None, path=path, metadata={
        "format": "rtstruct", "warnings": warnings, "label_names": names, "label_colors": colors})

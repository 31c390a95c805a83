"""DICOM Segmentation objects (DICOM-SEG) written and read with highdicom.

A SEG references the source series' instances (so PACS viewers overlay it on them) and holds one segment
per object with its name, colour and a SNOMED-CT property code (see segments.py). Segment numbers are
1..N in ascending order of the label values (DICOM requires consecutive numbers): labels 1..N come back
unchanged, others are renumbered.

BINARY stores one bit-plane per segment and omits empty frames; LABELMAP stores one frame per source
slice holding segment numbers (highdicom >= 0.24.0, DICOM 2024c).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import replacing
from ..errors import ImageReadError, ImageWriteError
from .dicom_series import read_header, scan_folder
from .image import Image
from .segments import Segment

# Segmentation Storage (BINARY, FRACTIONAL) and Label Map Segmentation Storage (LABELMAP)
SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
SEG_TYPES = ("BINARY", "LABELMAP")
MAX_SEGMENTS = 255
_POSITION_TOLERANCE_MM = 0.01


def is_dicom_seg(path: Path) -> bool:
    return sop_class_of(path) in SEG_SOP_CLASSES


def sop_class_of(path: Path) -> str:
    """The file's SOPClassUID; "" for files that are not DICOM or whose element is damaged (the image
    readers then say what is wrong)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, specific_tags=["SOPClassUID"], stop_before_pixels=True, force=True)
        return str(ds.get("SOPClassUID", ""))
    except Exception:  # pydicom raises many types for damaged files, also when an element is converted
        return ""


def source_headers(like: Image) -> list:
    """The headers (no pixel data) of `like`'s DICOM source files in its z order, type 2 attributes filled in."""
    import pydicom

    return [_with_type2_attributes(pydicom.dcmread(f, stop_before_pixels=True)) for f in source_files(like)]


def save_checked(ds, path: Path, kind: str, count: int, items) -> None:
    """Save `ds` at `path` atomically; the written file must read back with its SOPInstanceUID and `count`
    `items(read-back dataset)` (segments, ROIs) before it replaces `path`."""
    import pydicom

    uid = ds.SOPInstanceUID

    def verify(temp: Path) -> None:
        back = pydicom.dcmread(temp, stop_before_pixels=True)
        if back.SOPInstanceUID != uid or items(back) != count:
            raise OSError(f"{path.name} did not read back as the {kind} just written")

    try:
        with replacing(path, verify=verify) as temp:
            ds.save_as(temp, enforce_file_format=True)
    except OSError as exc:
        raise ImageWriteError(f"Cannot write {path}: {exc.strerror or exc}") from None


def source_files(like: Image) -> list[Path]:
    """The DICOM files holding `like`'s slices, in its z order; a one-line error when there are none."""
    path = like.path
    if path is None or not path.exists():
        raise ImageWriteError("DICOM-SEG needs labels drawn on a DICOM image; these labels' source image is unknown")
    if path.is_file():
        ds = read_header(path)
        if ds is None or "Rows" not in ds:
            raise ImageWriteError(f"DICOM-SEG needs labels drawn on a DICOM image, not on {path.name}: "
                                  "save as .nii.gz or .seg.nrrd instead")
        frames = int(ds.get("NumberOfFrames", 1) or 1)  # Enhanced (multi-frame) images: one file, many frames
        shape = like.spatial_shape if like.ndim == 3 else (1, *like.spatial_shape)
        if shape != (frames, int(ds.Rows), int(ds.Columns)):
            raise ImageWriteError(f"The labels' grid {like.spatial_shape} is not {path.name}'s "
                                  + (f"{frames} frames of " if frames > 1 else "")
                                  + f"{int(ds.Rows)} x {int(ds.Columns)} pixels")
        return [path]
    stacks = scan_folder(path, None, None)
    key = like.metadata.get("series_key")
    shape = like.spatial_shape if like.ndim == 3 else (1, *like.spatial_shape)
    # where the first slice lies: a volume's origin; a single slice's 3-D origin when it was read here
    origin = like.origin if like.ndim == 3 else like.metadata.get("slice_geometry", {}).get("origin")
    tilt = like.metadata.get("gantry_tilt")
    if tilt:  # labels on the tilt-corrected grid: the source is the tilted stack
        shape, origin = tuple(tilt["source_shape"]), tilt["source_origin"]
    candidates = []
    for info, slices in stacks:
        first = slices[0]
        frames = first.shape[2] if first.shape[2] > 1 else len(slices)  # a multi-frame file is a stack by itself
        if (key is not None and info.key != key) or (frames, *first.shape[:2]) != shape:
            continue
        # a multi-frame file's positions are per frame (checked when its frames are matched to the slices)
        if origin is None or first.shape[2] > 1 or first.position is not None and np.allclose(
                first.position, origin, atol=_POSITION_TOLERANCE_MM):
            candidates.append(list(info.files))
    if len(candidates) == 1 or candidates and origin is not None:
        return candidates[0]
    raise ImageWriteError(f"No DICOM series in {path} has the labels' grid {like.spatial_shape}"
                          + (f" at origin {tuple(round(o, 2) for o in origin)}" if origin is not None else
                             " (several slices of that size: open the DICOM file itself)")
                          + ": DICOM-SEG must lie on its source slices")


def on_source_slices(labels: np.ndarray, like: Image) -> np.ndarray:
    """`labels` (on `like`'s grid) as (slices, rows, columns) on the DICOM source slices: for a gantry-tilted
    series read onto an orthogonal grid, each tilted slice's pixels take the nearest grid voxel's label."""
    tilt = like.metadata.get("gantry_tilt")
    if not tilt:
        return labels.reshape(-1, *labels.shape[-2:])
    count, rows, columns = tilt["source_shape"]
    planes = []
    for k, (row, column) in enumerate(tilt["offsets"]):
        # round half up, as the nearest voxel centre; offsets put every source pixel on the grid
        r = np.floor(np.arange(rows) + row + 0.5).astype(int).clip(0, labels.shape[1] - 1)
        c = np.floor(np.arange(columns) + column + 0.5).astype(int).clip(0, labels.shape[2] - 1)
        planes.append(labels[k][np.ix_(r, c)])
    return np.stack(planes)


def frame_order(source, like: Image) -> np.ndarray:
    """For a multi-frame (Enhanced) source: the slice of `like` (z index) that each frame lies on, from the frames'
    PlanePositionSequence; a one-line error when the frames are not `like`'s slices."""
    shared = source.get("SharedFunctionalGroupsSequence", [None])[0]
    positions = []
    for item in source.get("PerFrameFunctionalGroupsSequence", []):
        plane = item.get("PlanePositionSequence") or (shared.get("PlanePositionSequence") if shared else None)
        if not plane:
            raise ImageWriteError(f"The frames of {like.path.name} have no positions (PlanePositionSequence), so "
                                  "a DICOM-SEG cannot be placed on them")
        positions.append([float(v) for v in plane[0].ImagePositionPatient])
    steps = like.direction @ np.diag(like.spacing)
    index = np.linalg.solve(steps, (np.array(positions) - np.array(like.origin)).T).T  # (x, y, z) voxel units
    order = np.round(index[:, 2]).astype(int)
    spacing = np.array(like.spacing)
    if (len(order) != like.spatial_shape[0] or sorted(order) != list(range(len(order)))
            or (np.abs(index - np.c_[np.zeros((len(order), 2)), order]) * spacing).max() > _POSITION_TOLERANCE_MM):
        raise ImageWriteError(f"The frames of {like.path.name} are not the labels' slices: DICOM-SEG must lie on its "
                              "source frames")
    return order


def _segment_description(number: int, segment: Segment):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    def coded(code):
        return hd.sr.CodedConcept(value=code[1], scheme_designator=code[0], meaning=code[2])

    region = segment.code("region")
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.name[:64],
        segmented_property_category=coded(segment.category),
        segmented_property_type=coded(segment.property_type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="napari-medseg", family=codes.cid7162.ArtificialIntelligence, version=__version__),
        tracking_id=f"label {segment.value}",
        tracking_uid=hd.UID(),
        anatomic_regions=[coded(region)] if region else None,
        display_color=hd.color.CIELabColor.from_rgb(*segment.color),
    )
    # laterality (left/right kidney, ...): modifiers live inside the type's and the region's code items
    for sequence, field, keyword in (("SegmentedPropertyTypeCodeSequence", "modifier",
                                      "SegmentedPropertyTypeModifierCodeSequence"),
                                     ("AnatomicRegionSequence", "region_modifier", "AnatomicRegionModifierSequence")):
        if segment.code(field):
            setattr(getattr(description, sequence)[0], keyword, [coded(segment.code(field))])
    return description


# Patient and study attributes a SEG must carry (type 2: present, may be empty); highdicom copies them from
# the source, and exports, anonymisers and hand-made files sometimes drop them
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2_attributes(ds):
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def check_segments(segments: list[Segment], seg_type: str) -> None:
    if seg_type not in SEG_TYPES:
        raise ImageWriteError(f"DICOM-SEG type must be one of {', '.join(SEG_TYPES)}, not {seg_type!r}")
    if not segments:
        raise ImageWriteError("The labels are empty: a DICOM-SEG needs at least one labelled voxel")
    if len(segments) > MAX_SEGMENTS:
        raise ImageWriteError(f"{len(segments)} segments: DICOM-SEG holds at most {MAX_SEGMENTS} here; "
                              "merge labels or save as .seg.nrrd or .nii.gz")


def write_dicom_seg(labels: np.ndarray, like: Image, path: Path, segments: list[Segment],
                    seg_type: str = "BINARY") -> None:
    """Write `labels` (on `like`'s DICOM source grid) as a DICOM-SEG at `path`, atomically."""
    import highdicom as hd

    from .. import __version__

    check_segments(segments, seg_type)
    sources = source_headers(like)
    if any("FrameOfReferenceUID" not in ds for ds in sources):
        raise ImageWriteError("The source DICOM has no FrameOfReferenceUID, so a DICOM-SEG cannot be placed on it: "
                              "save as .nii.gz or .seg.nrrd instead")
    lookup = np.zeros(int(labels.max()) + 1, np.uint8)
    lookup[[s.value for s in segments]] = np.arange(1, len(segments) + 1)
    numbers = lookup[on_source_slices(labels, like)]
    first = sources[0]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:  # Enhanced source: one SEG frame per source frame, in its order
        numbers = numbers[frame_order(first, like)]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=numbers,
        segmentation_type=seg_type,
        segment_descriptions=[_segment_description(n, s) for n, s in enumerate(segments, 1)],
        series_instance_uid=hd.UID(),
        series_number=int(first.get("SeriesNumber") or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-medseg",
        manufacturer_model_name="napari-medseg",
        software_versions=__version__,
        device_serial_number="0",
        series_description="napari-medseg segmentation",
        content_label="SEGMENTATION",
        content_description="Segmentation made with napari-medseg",
        omit_empty_frames=seg_type == "BINARY",
    )
    save_checked(seg, path, "DICOM-SEG", len(segments),
                 lambda back: sum(int(item.SegmentNumber) > 0 for item in back.SegmentSequence))  # LABELMAP adds 0


def _sitk_image(volume):
    """A SimpleITK image of a highdicom Volume (affine from (slice, row, column) to LPS) with the slices along
    row x column cosines, as ITK and the DICOM reader stack them; one slice is 2-D, like its source slice."""
    import SimpleITK as sitk

    from .dicom import _as_2d

    array, steps = volume.array, volume.affine[:3, 2::-1].copy()  # columns: x (column), y (row), z (slice)
    origin = volume.affine[:3, 3].copy()
    if array.shape[0] > 1 and np.cross(steps[:, 0], steps[:, 1]) @ steps[:, 2] < 0:
        origin += (array.shape[0] - 1) * steps[:, 2]
        steps[:, 2] *= -1
        array = array[::-1]
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    spacing = np.linalg.norm(steps, axis=0)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple((steps / spacing).ravel()))
    return _as_2d(img) if img.GetSize()[2] == 1 else img


def read_dicom_seg(path: Path) -> Image:
    """A DICOM-SEG as a label map (values = segment numbers) in the frames' geometry, with names and colours.

    A SEG of one frame is 2-D, like the single DICOM slice it was drawn on."""
    import highdicom as hd

    from ._sitk import image_from_sitk

    tilted = None
    try:
        seg = hd.seg.segread(path)
        numbers = [int(n) for n in seg.segment_numbers]
        dtype = np.uint8 if max(numbers, default=0) <= 255 else np.uint16
        volume = seg.get_volume(combine_segments=True, relabel=False, dtype=dtype)
    except Exception as exc:  # highdicom raises ValueError/RuntimeError/AttributeError for malformed SEGs
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "overlap" in reason:
            raise ImageReadError(f"Segments of {path.name} overlap, and a label map holds one label per voxel: "
                                 "open it in 3D Slicer, or split it into one SEG per segment") from None
        tilted = _tilted_frames(seg, dtype) if "regularly-spaced" in reason else None
        if tilted is None:
            raise ImageReadError(f"Cannot read DICOM-SEG {path.name}: {reason}") from None
    names, colors = {}, {}
    for number in numbers:
        description = seg.get_segment_description(number)
        names[number] = str(description.segment_label)
        lab = description.get("RecommendedDisplayCIELabValue")
        if lab is not None:
            colors[number] = tuple(int(c) for c in hd.color.CIELabColor.from_dicom_value(lab).to_rgb())
    references = [str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])]
    metadata = {"format": "dicom-seg", "warnings": [], "label_names": names, "label_colors": colors,
                "segmentation_type": str(seg.SegmentationType), "referenced_series_uids": references,
                "original_dtype": np.dtype(dtype).name}
    if tilted is not None:
        metadata["warnings"] = tilted.metadata["warnings"]
        tilted.metadata = {**tilted.metadata, **metadata}
        tilted.modality = "SEG"
        return tilted
    return image_from_sitk(_sitk_image(volume), path.name, modality="SEG", metadata=metadata)


def _tilted_frames(seg, dtype) -> Image | None:
    """The label map of a SEG drawn on a gantry-tilted series (frames evenly spaced along their normal, BINARY's
    empty ones omitted, shifted in-plane in proportion), on the orthogonal grid that the tilted series is read
    onto (dicom.untilt, nearest label); None for frames that are not such a stack."""
    from .dicom import untilt

    shared = seg.SharedFunctionalGroupsSequence[0]
    cosines = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    row, column = cosines[:3], cosines[3:]
    normal = np.cross(row, column)
    frames = seg.PerFrameFunctionalGroupsSequence
    positions = np.array([item.PlanePositionSequence[0].ImagePositionPatient for item in frames], float)
    along = positions @ normal
    levels = np.unique(np.round(along, 3))
    if len(levels) < 2:
        return None
    step = float(np.diff(levels).min())
    index = (along - levels[0]) / step
    if np.abs(index - np.round(index)).max() > 0.01:
        return None
    index = np.round(index).astype(int)
    first = positions[index == 0][0]
    moved = positions - first
    offsets = np.column_stack([moved @ column / row_spacing, moved @ row / column_spacing])  # (row, column) pixels
    fit = np.polyfit(index, offsets, 1) if len(set(index)) > 1 else None  # a tilt shifts slices linearly
    if fit is None or np.abs(np.polyval(fit[:, 0], index) - offsets[:, 0]).max() > 0.01 \
            or np.abs(np.polyval(fit[:, 1], index) - offsets[:, 1]).max() > 0.01:
        return None
    count = index.max() + 1
    every = np.column_stack([np.polyval(fit[:, 0], np.arange(count)), np.polyval(fit[:, 1], np.arange(count))])
    every -= every[0]
    pixels = seg.pixel_array.reshape(len(frames), int(seg.Rows), int(seg.Columns))
    stack = np.zeros((count, *pixels.shape[1:]), dtype)
    for k, item, plane in zip(index, frames, pixels):
        if str(seg.SegmentationType) == "LABELMAP":  # frames hold segment numbers
            stack[k] = plane
        else:  # one bit-plane per segment and slice (the segment named per frame, or shared for one segment)
            identification = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
            stack[k][plane > 0] = int(identification[0].ReferencedSegmentNumber)
    image = Image(stack, (column_spacing, row_spacing, step), tuple(first), np.column_stack([row, column, normal]),
                  metadata={"warnings": []})
    shift = np.linalg.norm(positions[index.argmax()] - first - (index.max() * step) * normal)
    return untilt(image, every, float(np.degrees(np.arctan2(shift, index.max() * step))), labels=True)

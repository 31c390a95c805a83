"""DICOM series discovery: which files form which volume, in which order.

A listed "series" is one stack that forms a regular volume: files of one SeriesInstanceUID with
the same matrix size and orientation, ordered by position along the slice normal. A series that
mixes orientations (localizers), repeats positions (echoes, phases) or has uneven gaps (missing
slices) is split into several stacks; their keys are `<uid>#1`, `<uid>#2`, ...
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from ..progress import Progress
from .formats import has_dicom_preamble

_HEADER_TAGS = [
    "SeriesInstanceUID", "SeriesDescription", "SeriesNumber", "Modality", "InstanceNumber",
    "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns", "NumberOfFrames",
    "RescaleSlope", "RescaleIntercept", "BitsAllocated", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation",
    "PixelData", "FloatPixelData", "DoubleFloatPixelData",
]


@dataclass(frozen=True)
class SeriesInfo:
    uid: str  # SeriesInstanceUID
    key: str  # what `read_image(folder, series=key)` takes: the uid, or uid#k for split series
    description: str
    modality: str
    number: int | None  # SeriesNumber
    files: tuple[Path, ...]  # ordered along the slice normal
    note: str = ""  # why the series was split, when it was

    @property
    def num_files(self) -> int:
        return len(self.files)


@dataclass
class Slice:
    """What one file says about its place in a series and in space."""

    path: Path
    series_uid: str
    description: str
    modality: str
    number: int | None
    instance: int
    shape: tuple  # rows, columns, frames
    position: np.ndarray | None
    orientation: tuple[float, ...] | None  # 6 direction cosines (row, column)
    rescale: tuple[float, float]
    stored_dtype: str
    pixel_bytes: tuple[int | None, int] = (None, 0)  # bytes present (None: compressed) and declared

    def check_pixel_data(self) -> None:
        """Refuse a file whose uncompressed pixel data are shorter than rows x columns x frames declare."""
        present, declared = self.pixel_bytes
        if present is not None and present < declared:
            raise ImageReadError(f"DICOM {self.path.name} is truncated: {present} of {declared} pixel data bytes "
                                 "present")

    @property
    def normal(self) -> np.ndarray:
        row, col = np.array(self.orientation[:3]), np.array(self.orientation[3:])
        return np.cross(row, col)


def read_header(path: Path, force: bool = False):
    """The header fields used here (pixel data deferred), or None for non-DICOM files."""
    import pydicom

    if not force and not has_dicom_preamble(path):
        return None
    try:
        return pydicom.dcmread(path, specific_tags=_HEADER_TAGS, defer_size=256, force=force)
    except Exception:  # pydicom raises many types for non-DICOM or damaged files
        return None


def _number(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def slice_of(path: Path, ds) -> Slice | None:
    """The header fields that place a file in a series and in space; None without pixel data."""
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return None
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    valid = position is not None and orientation is not None and len(position) == 3 and len(orientation) == 6
    signed = _number(ds.get("PixelRepresentation"), 0) == 1
    return Slice(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        description=str(ds.get("SeriesDescription", "")),
        modality=str(ds.get("Modality", "")) or "unknown",
        number=_number(ds.get("SeriesNumber")),
        instance=_number(ds.get("InstanceNumber"), 0),
        shape=(_number(ds.get("Rows")), _number(ds.get("Columns")), _number(ds.get("NumberOfFrames"), 1)),
        position=np.array([float(v) for v in position]) if valid else None,
        orientation=tuple(float(v) for v in orientation) if valid else None,
        rescale=(float(ds.get("RescaleSlope") or 1), float(ds.get("RescaleIntercept") or 0)),
        stored_dtype=f"{'' if signed else 'u'}int{_number(ds.get('BitsAllocated'), 16)}",
        pixel_bytes=_pixel_bytes(path, ds),
    )


def _pixel_bytes(path: Path, ds) -> tuple[int | None, int]:
    """(bytes of pixel data the file holds, bytes its rows, columns, frames, samples and bits declare).

    Read from the element's length and position, without loading it; None for encapsulated
    (compressed) data, whose decoded size only the codec knows.
    """
    declared = 1
    for field in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"):
        declared *= max(_number(ds.get(field), 1), 0)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":  # two chroma samples per pixel pair
        declared = declared * 2 // 3
    declared = -(-declared * max(_number(ds.get("BitsAllocated"), 16), 0) // 8)
    tag = next(tag for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if tag in ds)
    element = ds.get_item(tag, keep_deferred=True)
    length, start = getattr(element, "length", None), getattr(element, "value_tell", None)
    if length is None or start is None or length == 0xFFFFFFFF:
        return None, declared
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is not None and syntax.is_deflated:  # positions are in the inflated dataset, not the file
        return length, declared
    return max(min(length, path.stat().st_size - start), 0), declared


def _files_under(folder: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        found.extend(Path(root) / name for name in sorted(names))
    return found


def list_dicom_series(folder: str | Path, *, progress=None, cancel=None) -> list[SeriesInfo]:
    """Every image stack under `folder` (searched recursively), largest first."""
    return [info for info, _ in scan_folder(Path(folder), progress, cancel)]


def scan_folder(folder: Path, progress, cancel) -> list[tuple[SeriesInfo, list[Slice]]]:
    if not folder.is_dir():
        raise ImageReadError(f"{folder} is not a folder")
    files = _files_under(folder)
    if not files:
        raise ImageReadError(f"Folder {folder} is empty")
    tracker = Progress(len(files), "Scanning DICOM files", progress, cancel)
    slices = []
    for path in files:
        ds = read_header(path)
        try:
            found = slice_of(path, ds) if ds is not None else None
        except Exception:  # damaged elements (pydicom raises many types): not an image we can place
            found = None
        if found is not None:
            slices.append(found)
        tracker.step()
    if not slices:
        raise ImageReadError(f"No DICOM images in {folder} ({len(files)} files searched)")
    stacks = []
    by_series = defaultdict(list)
    for item in slices:
        by_series[item.series_uid].append(item)
    for uid, members in by_series.items():
        stacks.extend(_series_stacks(uid, members))
    return sorted(stacks, key=_largest_first)


def _largest_first(stack: tuple[SeriesInfo, list[Slice]]) -> tuple:
    info = stack[0]
    return -info.num_files, info.number if info.number is not None else 1 << 31, info.key


def _series_stacks(uid: str, members: list[Slice]) -> list[tuple[SeriesInfo, list[Slice]]]:
    groups = defaultdict(list)
    for item in members:
        multiframe = item.path if item.shape[2] > 1 else None  # a multi-frame file is a volume by itself
        orientation = tuple(np.round(item.orientation, 4)) if item.orientation else None
        groups[(item.shape, orientation, multiframe)].append(item)
    runs = []
    reasons = set()
    if len(groups) > 1:
        reasons.add("mixed orientations or sizes")
    for group in groups.values():
        for volume in _split_repeated_positions(group, reasons):
            runs.extend(_split_uneven_gaps(volume, reasons))
    runs.sort(key=lambda run: (-len(run), run[0].instance, str(run[0].path)))
    first = members[0]
    note = f"split into {len(runs)} stacks: {', '.join(sorted(reasons))}" if len(runs) > 1 else ""
    return [
        (SeriesInfo(uid=uid, key=uid if len(runs) == 1 else f"{uid}#{index}", description=first.description,
                    modality=first.modality, number=first.number, files=tuple(s.path for s in run), note=note),
         run)
        for index, run in enumerate(runs, 1)
    ]


def _position_along_normal(item: Slice) -> float:
    return float(item.position @ item.normal)


def _split_repeated_positions(group: list[Slice], reasons: set) -> list[list[Slice]]:
    """Files sharing a position (echoes, phases) go to separate volumes, in InstanceNumber order."""
    if any(item.position is None for item in group):
        return [sorted(group, key=lambda s: (s.instance, str(s.path)))]
    volumes = defaultdict(list)
    seen = defaultdict(int)
    for item in sorted(group, key=lambda s: (s.instance, str(s.path))):
        place = round(_position_along_normal(item), 3)
        volumes[seen[place]].append(item)
        seen[place] += 1
    if len(volumes) > 1:
        reasons.add("repeated slice positions")
    return [sorted(v, key=_position_along_normal) for v in volumes.values()]


def _split_uneven_gaps(volume: list[Slice], reasons: set) -> list[list[Slice]]:
    """Cut a sorted stack where the slice gap differs from the usual (median) one."""
    if len(volume) < 3 or volume[0].position is None:
        return [volume]
    gaps = np.diff([_position_along_normal(s) for s in volume])
    usual = float(np.median(gaps))
    runs, start = [], 0
    for index, gap in enumerate(gaps):
        if abs(gap - usual) > max(0.02, 0.01 * usual):
            runs.append(volume[start:index + 1])
            start = index + 1
    runs.append(volume[start:])
    if len(runs) > 1:
        reasons.add("uneven slice gaps (missing slices?)")
    return runs


def select_stack(stacks: list[tuple[SeriesInfo, list[Slice]]], series: str | int | None, folder: Path):
    """The largest stack, or the one named by key, SeriesInstanceUID (its largest stack) or index."""
    if series is None:
        return stacks[0]
    if isinstance(series, int) or str(series).isdigit():
        if int(series) < len(stacks):
            return stacks[int(series)]
    else:
        for stack in stacks:
            if series in (stack[0].key, stack[0].uid):
                return stack
    listed = ", ".join(info.key for info, _ in stacks[:5]) + (", ..." if len(stacks) > 5 else "")
    raise ImageReadError(f"No series {series!r} in {folder}; found {len(stacks)}: {listed}")

"""TIFF, OME-TIFF and ImageJ TIFF: microscopy stacks and RGB photos, with physical pixel sizes."""
from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from .declared import check_memory
from .image import Image

# millimetres per unit, for OME and ImageJ unit names
_MM_PER_UNIT = {"nm": 1e-6, "µm": 1e-3, "um": 1e-3, "micron": 1e-3, "microns": 1e-3, "\\u00b5m": 1e-3,
                "mm": 1.0, "cm": 10.0, "m": 1000.0}
_Z_AXES, _CHANNEL_AXES = "ZQI", "CS"
# the most a stored byte can expand to: deflate's 1032:1, 12-bit LZW codes of up to 4096 bytes, PackBits' 2 -> 128
_MAX_EXPANSION = {8: 1032, 32946: 1032, 5: 2731, 32773: 64}  # Q: unknown and I: generic sequence axes, as tifffile names them


class _TiffLog(logging.Handler):
    """Collects tifffile's logged complaints; a broken page chain means a truncated file."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().splitlines()[0])

    def __enter__(self):
        logging.getLogger("tifffile").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("tifffile").removeHandler(self)


# tiled or pyramidal images above this size are read lazily (through tifffile's zarr store), smaller ones whole
LAZY_BYTES = 256 * 2**20


def read_tiff(path: Path) -> Image:
    import tifffile

    try:
        with _TiffLog() as log, tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_stored(series, tif.filehandle.size, path.name)
            if is_large(series):
                return _read_lazy(path, tif, series, log)
            check_memory(math.prod(series.shape) * series.dtype.itemsize, f"TIFF {path.name}")
            array = series.asarray()
            if array.shape != tuple(series.shape):  # tifffile logs a page it cannot decode and returns what it has
                raise ImageReadError(f"TIFF {path.name} is damaged: its pages do not hold the {series.shape} "
                                     f"{series.axes} image its tags declare")
            page = tif.pages[0]
            sizes, metadata = _physical_sizes(tif, page)
            photometric_rgb = page.photometric == tifffile.PHOTOMETRIC.RGB
            alpha = len(page.extrasamples) > 0
            axes = series.axes.upper()
            others = [f"{'x'.join(map(str, other.shape))} {other.axes}" for other in tif.series[1:]]
    except ImageReadError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError, ElementTree.ParseError) as exc:
        raise ImageReadError(f"Cannot read TIFF {path.name}: {exc}".splitlines()[0]) from None
    except Exception as exc:  # tifffile fails on damaged tags with whatever their values raise
        raise ImageReadError(f"Cannot read TIFF {path.name}: damaged header ({type(exc).__name__}: {exc})"
                             .splitlines()[0]) from None
    if any("invalid page offset" in message for message in log.messages):
        raise ImageReadError(f"TIFF {path.name} is truncated or corrupt (its page list is broken)")
    metadata.update(format="tiff", original_dtype=str(array.dtype), axes=axes,
                    warnings=[*log.messages, *metadata.get("warnings", [])])
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        metadata["warnings"].append(f"the file holds {len(others) + 1} image series; read only the first "
                                    f"({'x'.join(map(str, array.shape))} {axes}), not {shown}")
    array, axes = _to_zyxc(array, axes, path.name)
    channel_axis = -1 if axes.endswith("C") else None
    rgb = photometric_rgb and channel_axis is not None and array.shape[-1] in (3, 4)
    if rgb and array.shape[-1] == 4 and alpha:
        array = array[..., :3]
        metadata["warnings"].append("alpha channel dropped")
    spatial = axes.replace("C", "")
    spacing = tuple(sizes.get(axis.lower(), 1.0) for axis in reversed(spatial))  # (x, y[, z])
    return Image(array, spacing, (0.0,) * len(spatial), np.eye(len(spatial)),
                 modality="RGB" if rgb and len(spatial) == 2 else "microscopy",
                 intensity="rgb" if rgb else "raw", channel_axis=channel_axis, metadata=metadata)


def is_large(series) -> bool:
    """A pyramid (several resolution levels), or a tiled image bigger than `LAZY_BYTES`."""
    return len(series.levels) > 1 or (series.keyframe.is_tiled and
                                      math.prod(series.shape) * series.dtype.itemsize > LAZY_BYTES)


def _read_lazy(path: Path, tif, series, log: _TiffLog) -> Image:
    """Every resolution level as a dask array over tifffile's zarr store: tiles are read when sliced."""
    import dask.array as da
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True, series=0)  # keeps its own file handle for the levels' reads
    opened = zarr.open(store, mode="r")
    arrays = [opened[str(i)] for i in range(len(series.levels))] if isinstance(opened, zarr.Group) else [opened]
    levels, axes = [], ""
    for array in arrays:
        level, axes = _to_zyxc(da.from_zarr(array), series.axes.upper(), path.name)
        levels.append(level)
    page = tif.pages[0]
    sizes, metadata = _physical_sizes(tif, page)
    channel_axis = -1 if axes.endswith("C") else None
    rgb = page.photometric == tifffile.PHOTOMETRIC.RGB and channel_axis is not None and levels[0].shape[-1] in (3, 4)
    if rgb and levels[0].shape[-1] == 4 and len(page.extrasamples) > 0:
        levels = [level[..., :3] for level in levels]
        metadata.setdefault("warnings", []).append("alpha channel dropped")
    metadata.update(format="tiff", original_dtype=str(series.dtype), axes=axes, levels=levels, lazy=True,
                    warnings=[*log.messages, *metadata.get("warnings", [])])
    spatial = axes.replace("C", "")
    spacing = tuple(sizes.get(axis.lower(), 1.0) for axis in reversed(spatial))
    return Image(levels[0], spacing, (0.0,) * len(spatial), np.eye(len(spatial)),
                 modality="RGB" if rgb and len(spatial) == 2 else "microscopy",
                 intensity="rgb" if rgb else "raw", channel_axis=channel_axis, metadata=metadata)


def check_stored(series, file_size: int, name: str) -> None:
    """Every page's data lie within the file and can hold what its tags declare.

    Uncompressed data must be all there; deflate, LZW and PackBits expand by a bounded factor, so
    their stored bytes set an upper limit to what they can hold (other codecs: no limit known).
    """
    present = stored = needed = capacity = 0
    compressed = False
    for page in series.pages:
        if page is None:
            continue
        key = page.keyframe
        page_stored = sum(page.databytecounts)
        stored += page_stored
        present += sum(max(min(offset + count, file_size) - offset, 0) if offset >= 0 else 0
                       for offset, count in zip(page.dataoffsets, page.databytecounts))
        needed += key.size * key.bitspersample // 8
        compressed |= key.compression != 1
        ratio = 1 if key.compression == 1 else _MAX_EXPANSION.get(key.compression)
        capacity = None if capacity is None or ratio is None else capacity + page_stored * ratio
    if present < stored:  # data run past the end of the file
        raise ImageReadError(f"TIFF {name} is truncated: {present} of {stored} bytes present")
    if capacity is not None and capacity < needed:
        raise ImageReadError(f"TIFF {name} is corrupt: its {stored} bytes of compressed data cannot hold the "
                             f"{needed} bytes its tags declare" if compressed else
                             f"TIFF {name} is truncated: {stored} of {needed} bytes present")


def _to_zyxc(array: np.ndarray, axes: str, name: str) -> tuple[np.ndarray, str]:
    """Drop length-1 axes and order the rest as (Z,) Y, X (, C) (numpy or dask arrays)."""
    keep = [i for i, axis in enumerate(axes) if array.shape[i] > 1 or axis in "YX"]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    renamed = ""
    for axis, size in zip(axes, array.shape):
        if axis == "T":
            raise ImageReadError(f"{name} is a time series ({size} time points); save one time point")
        label = "Z" if axis in _Z_AXES else "C" if axis in _CHANNEL_AXES else axis
        if label not in "ZYXC" or label in renamed:
            raise ImageReadError(f"{name} has axes {axes} (sizes {array.shape}); only Z, Y, X and one "
                                 "channel axis are read")
        renamed += label
    order = [renamed.index(axis) for axis in "ZYXC" if axis in renamed]
    return array.transpose(order), "".join(renamed[i] for i in order)


def _physical_sizes(tif, page) -> tuple[dict[str, float], dict]:
    """Pixel sizes in mm from OME-XML or ImageJ metadata, and what the file said.

    A size that is zero, negative or not a number is ignored (pixel size 1 on that axis), with a warning.
    """
    if tif.is_ome:
        return _ome_sizes(tif.ome_metadata)
    if tif.is_imagej and "XResolution" in page.tags:
        info = tif.imagej_metadata or {}
        unit = str(info.get("unit", ""))
        if unit.lower() in _MM_PER_UNIT:
            reported = {axis: _units_per_pixel(page, axis) for axis in "xy"}
            reported["z"] = _positive(info.get("spacing", 1.0))
            bad = [axis for axis, value in reported.items() if value is None]
            reported = {axis: value for axis, value in reported.items() if value is not None}
            sizes = {axis: value * _MM_PER_UNIT[unit.lower()] for axis, value in reported.items()}
            return sizes, {"format_detail": "imagej", "warnings": _ignored(bad, "ImageJ"),
                           "physical_size": {axis: [value, unit] for axis, value in reported.items()}}
    return {}, {}


def _units_per_pixel(page, axis: str) -> float | None:
    try:
        pixels, units = page.tags[f"{axis.upper()}Resolution"].value  # a rational: pixels per unit
        return _positive(float(units) / float(pixels))
    except (TypeError, ValueError, ZeroDivisionError, KeyError):
        return None


def _positive(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def _ignored(axes: list[str], source: str) -> list[str]:
    return [f"the {source} pixel size along {axis} is zero, negative or not a number; 1 used" for axis in axes]


def _ome_sizes(xml: str) -> tuple[dict[str, float], dict]:
    pixels = next((e for e in ElementTree.fromstring(xml).iter() if e.tag.endswith("}Pixels")), None)
    if pixels is None:
        return {}, {"format_detail": "ome"}
    sizes, reported, bad = {}, {}, []
    for axis in "xyz":
        value = pixels.get(f"PhysicalSize{axis.upper()}")
        unit = pixels.get(f"PhysicalSize{axis.upper()}Unit", "µm")
        if value is not None and unit.lower() in _MM_PER_UNIT:
            if _positive(value) is None:
                bad.append(axis)
                continue
            sizes[axis] = float(value) * _MM_PER_UNIT[unit.lower()]
            reported[axis] = [float(value), unit]
    channels = [c.get("Name", "") for c in pixels if c.tag.endswith("}Channel")]
    return sizes, {"format_detail": "ome", "physical_size": reported, "channel_names": channels,
                   "warnings": _ignored(bad, "OME")}


def write_tiff_labels(labels: np.ndarray, like: Image, path: Path) -> None:
    """ImageJ-readable calibrated TIFF (µm for microscopy, else mm) when the type allows it."""
    import tifffile

    if labels.dtype.itemsize > 2:  # ImageJ TIFFs hold 8/16-bit integers only
        tifffile.imwrite(path, labels, compression="zlib")
        return
    unit = "um" if like.modality == "microscopy" else "mm"
    spacing = [s / _MM_PER_UNIT[unit] for s in like.spacing]
    metadata = {"axes": "ZYX" if labels.ndim == 3 else "YX", "unit": unit}
    if labels.ndim == 3:
        metadata["spacing"] = spacing[2]
    tifffile.imwrite(path, labels, imagej=True, resolution=(1 / spacing[0], 1 / spacing[1]),
                     metadata=metadata, compression="zlib")

"""OME-Zarr (OME-NGFF 0.4 and 0.5): images read lazily as pyramids; labels read and written chunk by chunk.

Reading: the first ``multiscales`` entry of the group; every level is a dask array over the zarr array (nothing
is read until sliced), ordered (z,) y, x (, c) like every `Image`, with length-1 time/channel/z axes dropped.
``Image.array`` is the full-resolution level, ``metadata["levels"]`` all levels (finest first), so napari shows
a multiscale layer and a prompt model can read a crop of the full resolution without loading the rest.
Pixel sizes come from the ``scale`` coordinateTransformations (dataset and multiscale level) and the axes' units,
channel names and colours from ``omero``, label images from the ``labels`` group.

Writing labels (`write_zarr_labels`): into ``IMAGE.zarr/labels/NAME`` when the target is the image's own
OME-Zarr, else a new container ``OUT.zarr`` holding only ``labels/NAME``. Each chunk is compared with what is
on disk and written only when it changed (empty chunks are not stored at all); coarser levels are rebuilt only
over the changed chunks. Every chunk and metadata file goes through `atomic.atomic_write_bytes` (temporary
file, fsync, rename): after a crash each chunk file is either its old or its new content, never a torn one;
a save interrupted part-way can leave some chunks new and others old (no multi-chunk transaction).
Names and colours go into ``image-label`` (``colors`` with ``rgba``, ``properties`` with ``name``).
"""
from __future__ import annotations

import asyncio
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ..errors import ImageReadError, ImageWriteError
from .image import Image

# millimetres per unit (OME-NGFF takes UDUNITS-2 names)
MM_PER_UNIT = {"angstrom": 1e-7, "nanometer": 1e-6, "micrometer": 1e-3, "millimeter": 1.0, "centimeter": 10.0,
               "meter": 1000.0}
LABEL_CHUNK = 512
_METADATA_FILES = (".zattrs", ".zarray", ".zgroup", ".zmetadata", "zarr.json")
_NGFF = "0.4"  # what new containers are written as: zarr v2, read by napari-ome-zarr, QuPath, Fiji and ome-zarr-py


def is_ome_zarr(path: Path) -> bool:
    """A folder holding zarr group metadata (v2 .zattrs/.zgroup or v3 zarr.json)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in (".zattrs", ".zgroup", "zarr.json"))


def _store(path: Path, read_only: bool):
    from zarr.storage import LocalStore

    return LocalStore(str(path), read_only=read_only)


def _open_group(path: Path, mode: str = "r"):
    import zarr

    try:
        return zarr.open_group(_store(path, mode == "r"), mode=mode)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        raise ImageReadError(f"Cannot read OME-Zarr {path.name}: {exc}".splitlines()[0]) from None


def ome_attrs(group) -> dict:
    """The OME attributes of a group: under "ome" in NGFF 0.5, at the top in 0.4."""
    attrs = group.attrs.asdict()
    return attrs.get("ome", attrs)


@dataclass
class Pyramid:
    levels: list  # zarr arrays, finest first, in the file's axis order
    axes: list[str]
    units: list[str | None]
    scale: list[float]  # level 0, per axis, in the axes' units
    translation: list[float]


def _axes(multiscale: dict, ndim: int) -> tuple[list[str], list[str | None]]:
    axes = multiscale.get("axes") or list("tczyx"[-ndim:])  # 0.3 and earlier: no axes, tczyx implied
    names = [(a["name"] if isinstance(a, dict) else str(a)).lower() for a in axes]
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
    if len(names) != ndim:
        raise ImageReadError(f"the multiscales axes {names} do not match the {ndim}-D arrays")
    return names, units


def _transforms(items: list[dict] | None, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale, translation = np.ones(ndim), np.zeros(ndim)
    for item in items or []:
        if item.get("type") == "scale" and "scale" in item:
            scale = scale * np.asarray(item["scale"], dtype=float)
        elif item.get("type") == "translation" and "translation" in item:
            translation = translation + np.asarray(item["translation"], dtype=float)
    return scale, translation


def read_pyramid(group, name: str) -> Pyramid:
    attrs = ome_attrs(group)
    multiscales = attrs.get("multiscales")
    if not multiscales:
        raise ImageReadError(f"{name} has no OME-Zarr multiscales image")
    multiscale = multiscales[0]
    try:
        levels = [group[d["path"]] for d in multiscale["datasets"]]
    except KeyError as exc:
        raise ImageReadError(f"{name}: the multiscales dataset {exc} is missing") from None
    ndim = levels[0].ndim
    axes, units = _axes(multiscale, ndim)
    first = multiscale["datasets"][0]
    scale, translation = _transforms(first.get("coordinateTransformations"), ndim)
    outer_scale, outer_translation = _transforms(multiscale.get("coordinateTransformations"), ndim)
    return Pyramid(levels, axes, units, list(scale * outer_scale), list(translation * outer_scale + outer_translation))


def _lazy_levels(pyramid: Pyramid, name: str) -> tuple[list, str]:
    """Dask arrays per level in (z,) y, x (, c) order, length-1 t/c/z dropped; the kept axes' letters."""
    import dask.array as da

    shape = pyramid.levels[0].shape
    index, kept = [], []
    for axis, size in zip(pyramid.axes, shape):
        if axis in "yx":
            index.append(slice(None))
            kept.append(axis)
        elif size == 1:
            index.append(0)
        elif axis == "t":
            raise ImageReadError(f"{name} is a time series ({size} time points); save one time point")
        elif axis in "cz" and axis not in kept:
            index.append(slice(None))
            kept.append(axis)
        else:
            raise ImageReadError(f"{name} has axes {pyramid.axes}; only Z, Y, X and one channel axis are read")
    order = [kept.index(axis) for axis in "zyxc" if axis in kept]
    levels = [da.from_zarr(level)[tuple(index)].transpose(order) for level in pyramid.levels]
    return levels, "".join(kept[i] for i in order)


def _mm(pyramid: Pyramid, axes: str) -> tuple[dict[str, float], dict[str, list], dict[str, float], list[str]]:
    """Pixel sizes and origin in mm for the kept spatial axes; what the file said; warnings."""
    sizes, reported, origin, warnings = {}, {}, {}, []
    for axis in axes.replace("c", ""):
        i = pyramid.axes.index(axis)
        unit, value = pyramid.units[i] or "micrometer", pyramid.scale[i]  # no unit: NGFF leaves it open;
        factor = MM_PER_UNIT.get(unit)  # microscopy files mean micrometres
        if factor is None:
            warnings.append(f"the OME-Zarr unit {unit!r} along {axis} is unknown; pixel size 1 used")
        elif not (math.isfinite(value) and value > 0):
            warnings.append(f"the OME-Zarr pixel size along {axis} is zero, negative or not a number; 1 used")
        else:
            sizes[axis] = value * factor
            origin[axis] = pyramid.translation[i] * factor
            reported[axis] = [float(value), unit]
    return sizes, reported, origin, warnings


def _channels(attrs: dict, count: int) -> tuple[list[str], list[str]]:
    channels = (attrs.get("omero") or {}).get("channels") or []
    names = [str(c.get("label", "")) for c in channels][:count]
    colors = [str(c.get("color", "")).upper() for c in channels][:count]
    return names, colors


def read_ome_zarr(path: Path) -> Image:
    """An OME-Zarr image (or, for a container holding only labels, its first label image) opened lazily."""
    path = Path(path)
    group = _open_group(path)
    attrs = ome_attrs(group)
    if "image-label" in attrs:
        return _labels_image(group, path, path.name)
    if "multiscales" not in attrs:
        names = _label_names_in(group)
        if names:  # a labels-only container, as write_zarr_labels makes next to a non-zarr image
            return _labels_image(group["labels"][names[0]], path, names[0])
        raise ImageReadError(f"{path.name} is a zarr group without an OME-Zarr image or labels")
    pyramid = read_pyramid(group, path.name)
    levels, axes = _lazy_levels(pyramid, path.name)
    sizes, reported, origin, warnings = _mm(pyramid, axes)
    spatial = axes.replace("c", "")
    channel_axis = -1 if axes.endswith("c") else None
    count = levels[0].shape[-1] if channel_axis is not None else 1
    channel_names, colors = _channels(attrs, count)
    rgb = (channel_axis is not None and count == 3 and levels[0].dtype == np.uint8
           and colors in ([], ["FF0000", "00FF00", "0000FF"]) and len(spatial) == 2)
    metadata = {"format": "ome-zarr", "original_dtype": str(levels[0].dtype), "axes": axes.upper(),
                "levels": levels, "lazy": True, "physical_size": reported, "warnings": warnings,
                "labels": _label_names_in(group)}
    if channel_names:
        metadata["channel_names"] = channel_names
    return Image(levels[0], tuple(sizes.get(a, 1.0) for a in reversed(spatial)),
                 tuple(origin.get(a, 0.0) for a in reversed(spatial)), np.eye(len(spatial)),
                 modality="RGB" if rgb else "microscopy", intensity="rgb" if rgb else "raw",
                 channel_axis=channel_axis, metadata=metadata)


def _label_names_in(group) -> list[str]:
    try:
        labels = group["labels"]
    except KeyError:
        return []
    return [str(name) for name in ome_attrs(labels).get("labels", [])]


def _labels_image(group, path: Path, name: str) -> Image:
    pyramid = read_pyramid(group, name)
    levels, axes = _lazy_levels(pyramid, name)
    if "c" in axes:
        raise ImageReadError(f"the OME-Zarr label image {name} has a channel axis")
    sizes, reported, origin, warnings = _mm(pyramid, axes)
    info = ome_attrs(group).get("image-label") or {}
    colors = {int(c["label-value"]): tuple(int(v) for v in c["rgba"][:3])
              for c in info.get("colors", []) if "label-value" in c and "rgba" in c}
    names = {int(p["label-value"]): str(p["name"]) for p in info.get("properties", [])
             if "label-value" in p and "name" in p}
    metadata = {"format": "ome-zarr-labels", "original_dtype": str(levels[0].dtype), "axes": axes.upper(),
                "levels": levels, "lazy": True, "physical_size": reported, "warnings": warnings,
                "label_names": names, "label_colors": colors, "label_image": name}
    return Image(levels[0], tuple(sizes.get(a, 1.0) for a in reversed(axes)),
                 tuple(origin.get(a, 0.0) for a in reversed(axes)), np.eye(len(axes)), metadata=metadata)


def read_zarr_labels(path: str | Path, name: str | None = None) -> Image:
    """The label image ``name`` (default: the first) of an OME-Zarr's ``labels`` group, lazily."""
    path = Path(path).expanduser()
    group = _open_group(path)
    names = _label_names_in(group)
    if not names:
        raise ImageReadError(f"{path.name} holds no OME-Zarr labels")
    if name is None:
        name = names[0]
    if name not in names:
        raise ImageReadError(f"{path.name} has no label image {name!r} (it has {', '.join(names)})")
    image = _labels_image(group["labels"][name], path, name)
    image.path = path
    return image


# --- writing --------------------------------------------------------------------------------------------------


def _durable_store(path: Path, counter: "SaveReport"):
    """A LocalStore whose every write goes through atomic.py, counting what it writes."""
    from zarr.storage import LocalStore, WrapperStore

    class DurableStore(WrapperStore):
        def _with_store(self, store):
            return type(self)(store)

        async def set(self, key, value) -> None:
            self._check_writable()
            data = value.to_bytes()
            target = Path(str(self._store.root)) / key
            if key.rsplit("/", 1)[-1] not in _METADATA_FILES:
                counter.chunk_bytes += len(data)
                counter.chunks_written += 1

            def put() -> None:
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(target, data)

            await asyncio.to_thread(put)

        async def set_if_not_exists(self, key, value) -> None:
            if not await self._store.exists(key):
                await self.set(key, value)

    return DurableStore(LocalStore(str(path)))


@dataclass
class SaveReport:
    """What a save wrote: stored (compressed) bytes and chunks, and the share of the label pyramid they cover."""
    chunks_written: int = 0
    chunk_bytes: int = 0
    changed_voxels_bytes: int = 0  # uncompressed bytes of the chunks that changed, all levels
    total_bytes: int = 0  # uncompressed bytes of all levels
    changed_chunks: dict = field(default_factory=dict)  # level -> set of chunk indices

    @property
    def fraction(self) -> float:
        """Share of the label pyramid's bytes (uncompressed) that this save rewrote."""
        return self.changed_voxels_bytes / self.total_bytes if self.total_bytes else 0.0


def _level_shapes(shape: tuple[int, ...], chunk: int) -> list[tuple[int, ...]]:
    """Level 0 and halvings in y and x (z kept) until the plane fits one chunk."""
    shapes = [tuple(shape)]
    while max(shapes[-1][-2:]) > chunk:
        last = shapes[-1]
        shapes.append(last[:-2] + tuple((s + 1) // 2 for s in last[-2:]))
    return shapes


def _unit_of(like: Image) -> str:
    return "micrometer" if like.modality in ("microscopy", "RGB") or like.metadata.get("format") in (
        "ome-zarr", "tiff") else "millimeter"


def _label_dtype(labels) -> np.dtype:
    dtype = np.dtype(labels.dtype)
    if dtype == bool:
        return np.dtype(np.uint8)
    if dtype.kind not in "ui":
        raise ImageWriteError(f"Labels must be integers, not {dtype}")
    return np.dtype(f"u{dtype.itemsize}") if dtype.kind == "i" else dtype


def _image_label(names: dict[int, str], colors: dict[int, tuple], version: str) -> dict:
    values = sorted((set(names) | set(colors)) - {0})
    return {
        "version": version,
        "colors": [{"label-value": v, "rgba": [int(c) for c in colors[v][:3]] + [255]} for v in values if v in colors],
        "properties": [{"label-value": v, "name": names[v]} for v in values if v in names],
        "source": {"image": "../../"},
    }


def _set_ome(group, content: dict, version: str) -> None:
    if version == "0.5":
        group.attrs.update({"ome": {"version": version, **content}})
    else:
        group.attrs.update(content)


def check_zarr_target(like: Image, path: str | Path) -> None:
    """Refuse (one line, before slow work) an OME-Zarr target that cannot take labels of ``like``: an existing
    folder that is not an OME-Zarr, an OME-Zarr image of another shape, a missing parent folder."""
    path = Path(path).expanduser()
    if not path.exists():
        if not path.parent.is_dir():
            raise ImageWriteError(f"Folder {path.parent} does not exist")
        return
    if not is_ome_zarr(path):
        raise ImageWriteError(f"{path} exists and is not an OME-Zarr")
    try:
        has_image = "multiscales" in ome_attrs(_open_group(path))
        shape = read_ome_zarr(path).spatial_shape if has_image else None
    except ImageReadError as exc:
        raise ImageWriteError(f"Cannot write labels into {path.name}: {exc}") from None
    if shape is not None and shape != like.spatial_shape:
        raise ImageWriteError(f"{path.name} holds a {shape} image; labels of shape {like.spatial_shape} do not "
                              "belong to it")


def _container(path: Path, like: Image, report: SaveReport):
    """(root group, NGFF version): the image's own OME-Zarr when ``path`` is it, else a labels container."""
    import zarr

    check_zarr_target(like, path)
    store = _durable_store(path, report)
    if path.exists():
        root = zarr.open_group(store, mode="r+")
        return root, "0.5" if root.metadata.zarr_format == 3 else "0.4"
    root = zarr.open_group(store, mode="w-", zarr_format=2)
    return root, _NGFF


def _chunk_slices(shape: tuple[int, ...], chunks: tuple[int, ...], index: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))


def _chunks_in(shape, chunks, regions) -> list[tuple[int, ...]]:
    """Chunk indices covering ``regions`` (tuples of slices in level-0 voxels), or every chunk."""
    if regions is None:
        return list(np.ndindex(*[math.ceil(s / c) for s, c in zip(shape, chunks)]))
    found = set()
    for region in regions:
        bounds = [sl.indices(s)[:2] for sl, s in zip(region, shape)]
        if all(stop > start for start, stop in bounds):
            found.update(itertools.product(*[range(start // c, math.ceil(stop / c))
                                             for (start, stop), c in zip(bounds, chunks)]))
    return sorted(found)


def write_zarr_labels(labels, like: Image, path: str | Path, label_names: dict[int, str] | None = None, *,
                      label_colors: dict[int, tuple] | None = None, name: str = "segmentation",
                      regions=None, chunk: int = LABEL_CHUNK) -> SaveReport:
    """Write ``labels`` (numpy, zarr or dask; shape ``like.spatial_shape``) as the OME-Zarr label image
    ``path/labels/name``, writing only the chunks whose content differs from what is stored.

    ``regions`` (tuples of slices, level-0 voxels) limits the comparison to where the caller edited.
    Returns a `SaveReport` of what was written.
    """
    path = Path(path).expanduser()
    shape = tuple(int(s) for s in labels.shape)
    if shape != like.spatial_shape:
        raise ImageWriteError(f"Labels of shape {shape} do not match the image's {like.spatial_shape}")
    if not name or "/" in name or name.startswith("."):
        raise ImageWriteError(f"{name!r} is not a label image name")
    dtype = _label_dtype(labels)
    report = SaveReport()
    try:
        return _write(labels, like, path, dict(label_names or {}), dict(label_colors or {}), name, regions,
                      chunk, dtype, shape, report)
    except (ImageWriteError, ImageReadError):
        raise
    except OSError as exc:
        raise ImageWriteError(f"Cannot write {path}: {exc}".splitlines()[0]) from None


def _write(labels, like, path, names, colors, name, regions, chunk, dtype, shape, report) -> SaveReport:
    import zarr

    root, version = _container(path, like, report)
    labels_group = root.require_group("labels")
    listed = [str(n) for n in ome_attrs(labels_group).get("labels", [])]
    if name not in listed:
        _set_ome(labels_group, {"labels": listed + [name]}, version)
    group = labels_group.require_group(name)
    shapes = _level_shapes(shape, chunk)
    chunks = (1,) * (len(shape) - 2) + (chunk, chunk)
    arrays = []
    fresh = False
    for level, level_shape in enumerate(shapes):
        key = str(level)
        existing = group.get(key)
        if existing is not None and (tuple(existing.shape) != level_shape or existing.dtype != dtype):
            del group[key]
            existing = None
        if existing is None:
            existing = group.create_array(key, shape=level_shape, chunks=chunks, dtype=dtype, fill_value=0,
                                          compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=5)
                                          if version == "0.5" else _v2_compressor(),
                                          **({"chunk_key_encoding": {"name": "v2", "separator": "/"}}
                                             if version == "0.4" else {}),
                                          config={"write_empty_chunks": False})
            fresh = True
        arrays.append(existing)
    if fresh:
        regions = None  # a new level: everything is compared (and stored where not empty)
    report.total_bytes = sum(math.prod(s) for s in shapes) * dtype.itemsize
    changed = _write_level0(labels, arrays[0], regions, dtype, report)
    report.changed_chunks[0] = changed
    for level in range(1, len(arrays)):
        changed = _write_coarser(arrays[level - 1], arrays[level], changed, report)
        report.changed_chunks[level] = changed
    _write_metadata(group, like, shapes, names, colors, version, name)
    return report


def _v2_compressor():
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE)


def _store_chunk(array, index, new, report: SaveReport) -> bool:
    """Write one chunk if it differs from the stored one; True when it was written (or removed)."""
    sl = _chunk_slices(array.shape, array.chunks, index)
    old = array[sl]
    if np.array_equal(old, new):
        return False
    array[sl] = new  # zarr drops chunks that became all zero (write_empty_chunks False)
    report.changed_voxels_bytes += new.nbytes
    return True


def _write_level0(labels, array, regions, dtype, report) -> set:
    changed = set()
    for index in _chunks_in(array.shape, array.chunks, regions):
        sl = _chunk_slices(array.shape, array.chunks, index)
        new = np.asarray(labels[sl])
        if new.dtype.kind == "i" and new.size and new.min() < 0:
            raise ImageWriteError(f"Labels must not be negative (found {new.min()})")
        if new.size and new.max() > np.iinfo(dtype).max:
            raise ImageWriteError(f"Label value {new.max()} does not fit {dtype}")
        if _store_chunk(array, index, new.astype(dtype, copy=False), report):
            changed.add(index)
    return changed


def _write_coarser(finer, coarser, changed: set, report) -> set:
    """Nearest-neighbour (every second voxel in y and x) over the coarser chunks that cover changed finer ones."""
    targets = set()
    for index in changed:
        targets.add(index[:-2] + tuple(i * f // (2 * c) for i, f, c in zip(index[-2:], finer.chunks[-2:],
                                                                              coarser.chunks[-2:])))
    written = set()
    for index in sorted(targets):
        sl = _chunk_slices(coarser.shape, coarser.chunks, index)
        source = sl[:-2] + tuple(slice(s.start * 2, s.stop * 2, 2) for s in sl[-2:])
        if _store_chunk(coarser, index, np.asarray(finer[source]), report):
            written.add(index)
    return written


def _write_metadata(group, like: Image, shapes, names, colors, version, name) -> None:
    unit = _unit_of(like)
    factor = MM_PER_UNIT[unit]
    spatial = "zyx"[-len(shapes[0]):]
    spacing = [s / factor for s in like.spacing[::-1]]  # numpy order
    origin = [o / factor for o in like.origin[::-1]]
    datasets = []
    for level, level_shape in enumerate(shapes):
        scale = [sp * shapes[0][i] / level_shape[i] for i, sp in enumerate(spacing)]
        transforms = [{"type": "scale", "scale": scale}]
        if any(origin):
            transforms.append({"type": "translation", "translation": origin})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    multiscale = {"name": name, "axes": [{"name": a, "type": "space", "unit": unit} for a in spatial],
                  "datasets": datasets}
    if version == "0.4":
        multiscale["version"] = version
    content = {"multiscales": [multiscale], "image-label": _image_label(names, colors, version)}
    if ome_attrs(group) != ({"version": version, **content} if version == "0.5" else content):
        _set_ome(group, content, version)

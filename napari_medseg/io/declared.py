"""What a header declares vs what the file holds, checked before any reader allocates pixel memory.

A header of a few bytes can declare gigabytes of voxels, and ITK, tifffile and GDCM allocate the
declared buffer before they find the data missing. Each check here compares the declared size with
the bytes present (raw data: the file size; compressed data: the decompressed stream, its checksum
verified in bounded memory) and with the memory this process can still get.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageReadError
from .streams import sniff, stream_size

_HEADER_LIMIT = 1 << 20  # text headers longer than this are not headers
_MAX_DATA_FILES = 100_000
# a compressed stream may hold this much more than declared before it counts as a decompression bomb
_STREAM_SLACK = 64 << 20


@dataclass(frozen=True)
class DataPart:
    """One stretch of pixel data: a file, where the data start, how they are encoded."""

    path: Path
    offset: int = 0  # bytes before the data (raw) or before the compressed stream
    encoding: str = "raw"  # raw, gzip, zlib, ascii, hex
    skip: int = 0  # bytes skipped at the start of the decoded data; -1: the data end the file (raw only)
    stored: int | None = None  # compressed bytes the header declares (MetaImage's CompressedDataSize)


def available_memory() -> int:
    """Bytes this process can still allocate: available RAM, capped by an address-space limit if one is set."""
    import psutil  # a dependency of napari's

    free = psutil.virtual_memory().available
    try:
        import resource
    except ImportError:  # Windows
        return free
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        free = min(free, max(soft - psutil.Process().memory_info().vms, 0))
    return free


def check_memory(nbytes: int, what: str, copies: int = 1) -> None:
    """Refuse an image whose pixels (times the copies the reader makes) do not fit in memory."""
    free = available_memory()
    if nbytes * copies > free:
        raise ImageReadError(f"{what} declares {_size(nbytes)} of pixels, more than the {_size(free // copies)} "
                             "of memory available to read it")


def check_present(parts: list[DataPart], expected: int, what: str, itemsize: int = 1, *, full: bool = True) -> None:
    """Refuse data that hold fewer bytes than the header declares.

    `full`: compressed streams are decompressed (bounded memory) and their checksums verified. Without
    it (checking a file just written, whose failure mode is a lost tail) a gzip stream must end in the
    trailer stating the expected length, a zlib stream must have the compressed length its header states.
    """
    present = 0
    for part in parts:
        if not part.path.is_file():
            raise ImageReadError(f"{what}: its data file {part.path.name} does not exist")
        size = max(part.path.stat().st_size - part.offset, 0)
        if part.encoding == "raw":
            present += size if part.skip < 0 else max(size - part.skip, 0)
        elif part.encoding == "gzip" and not full:
            if size < 18 or gzip_trailer_size(part.path) != (expected + part.skip) % (1 << 32):
                raise ImageReadError(f"{what} is truncated: its gzip stream ends without its trailer")
            present += expected
        elif part.encoding == "zlib" and not full and part.stored is not None:
            if size < part.stored:
                raise ImageReadError(f"{what} is truncated: {size} of {part.stored} compressed bytes present")
            present += expected
        elif part.encoding in ("gzip", "zlib"):
            limit = part.skip + 4 * expected + _STREAM_SLACK
            decoded = stream_size(part.path, offset=part.offset, kind=part.encoding, limit=limit, what=what)
            if decoded > limit:
                raise ImageReadError(f"{what} is corrupt: its {part.encoding} data decompress to far more "
                                     f"than the {_size(expected)} its header declares")
            present += max(decoded - part.skip, 0)
        elif part.encoding == "hex":
            present += size // 2
        else:  # ascii: each value takes at least one digit and a separator
            present += (size + 1) // 2 * itemsize
    if present < expected:
        raise ImageReadError(f"{what} is truncated: {present} of {expected} bytes present")


def gzip_trailer_size(path: Path) -> int:
    """The uncompressed length (mod 2**32) that the last 4 bytes of a gzip file state."""
    with open(path, "rb") as handle:
        handle.seek(-4, 2)
        return int.from_bytes(handle.read(4), "little")


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


# ---- what ITK will allocate ----------------------------------------------------------------------------
def itk_header(path: Path, what: str) -> tuple[tuple[int, ...], int, int]:
    """Size (x, y[, z, ...]), components per pixel and bytes per component that SimpleITK reads from
    `path`'s header alone: the buffer it will allocate."""
    import SimpleITK as sitk

    from ._sitk import itk_reason

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size, components = tuple(reader.GetSize()), reader.GetNumberOfComponents()
        pixel = sitk.Image([1] * len(size), reader.GetPixelID(), components)
        return size, components, pixel.GetSizeOfPixelComponent()
    except RuntimeError as exc:
        raise ImageReadError(f"Cannot read {what}: {itk_reason(exc)}") from None


def check_itk_file(path: Path, fmt: str) -> None:
    """NRRD and MetaImage: the data present (compressed ones verified) hold what the header declares."""
    what = path.name
    parts = nrrd_parts(path) if fmt == "nrrd" else metaimage_parts(path)  # validates what ITK would crash on
    size, components, itemsize = itk_header(path, what)
    expected = math.prod(size) * components * itemsize
    check_present(parts, expected, what, itemsize)
    check_memory(expected, what, copies=2)  # ITK's buffer and numpy's copy of it


# ---- text headers ---------------------------------------------------------------------------------------
def _header_lines(path: Path, end) -> tuple[list[str], str, int]:
    """Decoded header lines before the one for which `end(line)` is true, that line, and the offset after it."""
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_LIMIT)
    lines, offset = [], 0
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        line = raw.rstrip(b"\r\n").decode("latin-1")
        if end(line):
            return lines, line, offset
        lines.append(line)
    return lines, "", offset


def _data_files(spec: str, header: Path, listed: list[str]) -> list[Path]:
    """Files named by a detached-data field: one name, a `LIST` (names follow), or a printf pattern."""
    folder, words = header.parent, spec.split()
    if words and words[0] == "LIST":
        return [folder / name.strip() for name in listed if name.strip()]
    if len(words) >= 4 and "%" in words[0]:
        try:
            first, last, step = (int(word) for word in words[1:4])
            indices = range(first, last + (1 if step > 0 else -1), step or 1)
            if len(indices) > _MAX_DATA_FILES:
                raise ValueError
            return [folder / (words[0] % index) for index in indices]
        except (ValueError, TypeError):
            raise ImageReadError(f"{header.name}'s data file pattern {spec!r} is malformed") from None
    return [folder / spec.strip()]


def nrrd_parts(path: Path) -> list[DataPart]:
    """The data of an NRRD file (attached after the blank line, or detached in `data file`)."""
    lines, _, offset = _header_lines(path, lambda line: line == "")
    fields, listed = {}, []
    for index, line in enumerate(lines[1:], 1):
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, value = line.split(":", 1)
        key = key.strip().lower().replace(" ", "")
        fields[key] = value.strip()
        if key == "datafile":
            listed = lines[index + 1:]  # the names of a `data file: LIST`
    _check_nrrd_geometry(path, fields)
    encoding = fields.get("encoding", "raw").lower()
    encoding = {"gz": "gzip", "bz2": "bzip2", "txt": "ascii", "text": "ascii"}.get(encoding, encoding)
    if encoding == "bzip2":
        raise ImageReadError(f"{path.name} is bzip2-encoded, which SimpleITK's NRRD reader cannot decode; "
                             "save it with gzip or raw encoding")
    line_skip, byte_skip = _int(fields.get("lineskip", "0"), path), _int(fields.get("byteskip", "0"), path)
    spec = fields.get("datafile")
    if spec is None:
        files, start = [path], _skip_lines(path, offset, line_skip)
    else:
        files, start = _data_files(spec, path, listed), None
    return [DataPart(file, start if start is not None else _skip_lines(file, 0, line_skip), encoding, byte_skip)
            for file in files]


def metaimage_parts(path: Path) -> list[DataPart]:
    """The data of a MetaImage file (after `ElementDataFile = LOCAL`, or in the files it names)."""
    lines, last, offset = _header_lines(path, lambda line: line.split("=", 1)[0].strip().lower() == "elementdatafile")
    fields = {}
    for line in lines:
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip().lower()] = value.strip()
    _check_metaimage_geometry(path, fields)
    spec = last.split("=", 1)[-1].strip()  # ElementDataFile, the last field of the header
    if not spec:
        raise ImageReadError(f"{path.name} has no ElementDataFile field (where its data are)")
    compressed = fields.get("compresseddata", "false").lower() == "true"
    header_size = _int(fields.get("headersize", "0"), path)
    stored = _int(fields["compresseddatasize"], path) if "compresseddatasize" in fields else None
    if spec.upper() == "LOCAL":
        files, start = [path], offset
    else:
        with open(path, "rb") as handle:
            handle.seek(offset)
            listed = handle.read(_HEADER_LIMIT).decode("latin-1").splitlines()
        files, start = _data_files(spec, path, listed), None
    parts = []
    for file in files:
        begin = start if start is not None else max(header_size, 0)
        kind = (sniff(file, begin) if file.is_file() else "zlib") if compressed else "raw"
        parts.append(DataPart(file, begin, kind, -1 if header_size < 0 and not compressed else 0,
                              stored if len(files) == 1 else None))
    return parts


# MetaImage fields holding NDims values, or NDims x NDims (MetaIO reads that many, whatever is there)
_META_VECTORS = ("dimsize", "elementspacing", "elementsize", "offset", "position", "origin", "centerofrotation")
_META_MATRICES = ("transformmatrix", "rotation", "orientation")
_MAX_DIMENSION = 16  # NRRD's limit; MetaIO's and SimpleITK's are lower and reported by ITK


def _check_metaimage_geometry(path: Path, fields: dict[str, str]) -> None:
    """Dimension and per-axis fields MetaIO trusts without checking (a huge NDims crashes it)."""
    ndims = _count(fields.get("ndims"), path, "NDims")
    if "dimsize" not in fields:
        raise ImageReadError(f"{path.name} has no DimSize field")
    for key in _META_VECTORS + _META_MATRICES:
        if key in fields:
            needed = ndims * ndims if key in _META_MATRICES else ndims
            values = fields[key].split()
            if len(values) < needed or not all(_is_number(value) for value in values[:needed]):
                raise ImageReadError(f"{path.name}'s {key} field does not hold {needed} numbers (NDims = {ndims})")
    for value in fields["dimsize"].split()[:ndims]:
        _count(value, path, "DimSize")


def _check_nrrd_geometry(path: Path, fields: dict[str, str]) -> None:
    """`dimension` and `sizes` agree and are whole positive numbers before NrrdIO reads them."""
    dimension = _count(fields.get("dimension"), path, "dimension")
    sizes = fields.get("sizes", "").split()
    if len(sizes) != dimension:
        raise ImageReadError(f"{path.name} declares dimension {dimension} but {len(sizes)} sizes")
    for value in sizes:
        _count(value, path, "sizes")


def _count(text: str | None, path: Path, field: str) -> int:
    """A whole number from 1 to what any reader could allocate, or a one-line refusal."""
    if text is None or re.fullmatch(r"\s*\d{1,12}\s*", text) is None or not 1 <= int(text) <= (
            _MAX_DIMENSION if field in ("NDims", "dimension") else 1 << 40):
        shown = "missing" if text is None else repr(text.strip()[:40])
        raise ImageReadError(f"{path.name} has an invalid {field} field ({shown})")
    return int(text)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _skip_lines(path: Path, offset: int, count: int) -> int:
    if not path.is_file():
        return offset  # check_present reports the missing file
    with open(path, "rb") as handle:
        handle.seek(offset)
        for _ in range(max(count, 0)):
            if not handle.readline():
                break
        return handle.tell()


def _int(text: str, path: Path) -> int:
    match = re.fullmatch(r"\s*-?\d+\s*", text)
    if match is None:
        raise ImageReadError(f"{path.name} has a malformed header field ({text[:40]!r} is not a whole number)")
    return int(text)

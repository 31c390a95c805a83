"""Arrays on the wire: raw little-endian bytes described by a JSON header, never pickle.

A message carries one or more named arrays back to back in its body; the ``X-Medseg-Arrays`` header lists
them in order as ``{"name", "dtype", "shape", "offset"?, "compression", "chunks"}``. ``chunks`` are the byte
lengths of the body pieces of that array: each piece is compressed on its own (zlib), so both ends work on
several pieces at once (zlib releases the GIL) and a decompressor never expands more than one declared
piece. Only plain numeric dtypes are accepted; the decoded sizes must match the shapes exactly.

Used by the server and by the torch-free client (numpy and the standard library only).
"""
from __future__ import annotations

import json
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ARRAYS_HEADER = "X-Medseg-Arrays"
CHUNK = 8 << 20  # raw bytes per compressed piece
DTYPES = {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"}
COMPRESSIONS = ("zlib", "none")
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="medseg-wire")


class WireError(ValueError):
    """A message that does not describe its arrays correctly (answered with 400/422, never a crash)."""


def _le(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and np.little_endian is False):
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def pack(arrays: dict[str, np.ndarray], compression: str = "zlib", level: int = 1,
         extra: dict[str, dict] | None = None) -> tuple[str, bytes]:
    """(header value, body) for ``arrays``; ``extra[name]`` adds fields (e.g. an offset) to an array's entry."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
    entries, pieces = [], []
    for name, array in arrays.items():
        array = _le(array)
        if array.dtype.str not in DTYPES:
            raise WireError(f"{name}: dtype {array.dtype} cannot travel (plain numbers only)")
        raw = memoryview(array).cast("B") if array.size else memoryview(b"")
        parts = [raw[i:i + CHUNK] for i in range(0, len(raw), CHUNK)] or [raw]
        if compression == "zlib":
            parts = list(_POOL.map(lambda part: zlib.compress(part, level), parts))
        else:
            parts = [bytes(part) for part in parts]
        entries.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape),
                        "compression": compression, "chunks": [len(p) for p in parts], **(extra or {}).get(name, {})})
        pieces.extend(parts)
    return json.dumps(entries, separators=(",", ":")), b"".join(pieces)


def parse_header(value: str | None, *, max_arrays: int = 4) -> list[dict]:
    """The checked array entries of a header value (WireError for anything malformed)."""
    if not value:
        raise WireError(f"missing {ARRAYS_HEADER} header (JSON list of name/dtype/shape/compression/chunks)")
    try:
        entries = json.loads(value)
    except ValueError as exc:
        raise WireError(f"{ARRAYS_HEADER} is not JSON: {exc}") from None
    if not isinstance(entries, list) or not 1 <= len(entries) <= max_arrays:
        raise WireError(f"{ARRAYS_HEADER} must list 1 to {max_arrays} arrays")
    for entry in entries:
        if not isinstance(entry, dict):
            raise WireError(f"{ARRAYS_HEADER}: each array is an object")
        name, dtype, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
        chunks, compression = entry.get("chunks"), entry.get("compression", "none")
        if not isinstance(name, str) or dtype not in DTYPES or compression not in COMPRESSIONS:
            raise WireError(f"array {name!r}: name, dtype (one of {sorted(DTYPES)}) and compression "
                            f"({', '.join(COMPRESSIONS)}) are required")
        if (not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                   for s in shape) or len(shape) > 4):
            raise WireError(f"array {name!r}: shape must be up to 4 non-negative whole numbers, got {shape!r}")
        if (not isinstance(chunks, list) or not chunks
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in chunks)):
            raise WireError(f"array {name!r}: chunks must list the byte length of each body piece")
    return entries


def nbytes(entry: dict) -> int:
    """The decoded size in bytes that an entry declares."""
    return int(np.prod(entry["shape"], dtype=np.int64)) * np.dtype(entry["dtype"]).itemsize


def unpack(entries: list[dict], body: bytes | memoryview) -> dict[str, np.ndarray]:
    """The arrays of a checked header over ``body``: every size must match what the entries declare."""
    body = memoryview(body)
    if sum(sum(e["chunks"]) for e in entries) != len(body):
        raise WireError(f"the body has {len(body)} bytes, the {ARRAYS_HEADER} header declares "
                        f"{sum(sum(e['chunks']) for e in entries)}")
    arrays, at = {}, 0
    for entry in entries:
        expected = nbytes(entry)
        pieces = []
        for length in entry["chunks"]:
            pieces.append(body[at:at + length])
            at += length
        if entry["compression"] == "zlib":
            if len(pieces) != max(1, -(-expected // CHUNK)):
                raise WireError(f"array {entry['name']!r}: {len(pieces)} pieces for {expected} bytes "
                                f"(one per {CHUNK} raw bytes)")
            sizes = [min(CHUNK, expected - i * CHUNK) if expected else 0 for i in range(len(pieces))]
            pieces = list(_POOL.map(_inflate, pieces, sizes))
        if sum(len(p) for p in pieces) != expected:
            raise WireError(f"array {entry['name']!r}: {sum(len(p) for p in pieces)} bytes for shape "
                            f"{entry['shape']} of {entry['dtype']} ({expected} expected)")
        out = np.empty(expected, dtype=np.uint8)
        start = 0
        for piece in pieces:
            out[start:start + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
            start += len(piece)
        arrays[entry["name"]] = out.view(entry["dtype"]).reshape(entry["shape"])
    return arrays


def _inflate(piece: memoryview, size: int) -> bytes:
    """One zlib piece expanded to at most ``size`` bytes (a bomb stops there; trailing data is an error)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(piece, size)
    except zlib.error as exc:
        raise WireError(f"a compressed piece is not zlib data ({exc})") from None
    if len(raw) != size or inflater.unconsumed_tail or not inflater.eof:
        raise WireError(f"a compressed piece does not expand to the declared {size} bytes")
    return raw

"""Checks on compressed image data that ITK skips: gzip CRC and length, zlib checksum.

ITK's readers trust the gzip trailer's length and never check the CRC, so a corrupted .nii.gz or
gzip-encoded NRRD is read as garbage without an error. Streams are decompressed here in chunks
(memory stays bounded whatever the file declares) and their checksums verified.
"""
from __future__ import annotations

import zlib
from pathlib import Path

from ..errors import ImageReadError

_CHUNK = 1 << 22
GZIP_MAGIC = b"\x1f\x8b"


def stream_size(path: Path, *, offset: int = 0, kind: str = "gzip", limit: int | None = None,
                what: str | None = None) -> int:
    """Uncompressed size of the gzip (all members) or zlib stream at `offset` of `path`, checksums verified.

    Stops counting once `limit` bytes are exceeded (returns a value > limit). A corrupt stream
    raises ImageReadError; a stream that merely ends early returns the size decompressed so far.
    """
    what = what or path.name
    wbits = 31 if kind == "gzip" else 15
    size = 0
    decoder = zlib.decompressobj(wbits)
    with open(path, "rb") as handle:
        handle.seek(offset)
        pending = b""
        while True:
            if not pending:
                pending = handle.read(_CHUNK)
                if not pending:
                    return size  # the stream ended early (no trailer): truncated, the caller compares
            try:
                out = decoder.decompress(pending, _CHUNK)
            except zlib.error as exc:
                raise ImageReadError(f"{what} is corrupt: its {kind} data fail to decompress "
                                     f"({_reason(exc, kind)})") from None
            size += len(out)
            pending = decoder.unconsumed_tail
            if limit is not None and size > limit:
                return size
            if decoder.eof:
                rest = decoder.unused_data + (pending or b"") + handle.read(2)
                if kind == "gzip" and rest[:2] == GZIP_MAGIC:  # another gzip member follows
                    decoder, pending = zlib.decompressobj(wbits), rest
                    continue
                return size


def _reason(exc: zlib.error, kind: str) -> str:
    text = str(exc)
    if "incorrect data check" in text:
        return "Adler-32 check failed" if kind == "zlib" else "CRC check failed"
    return text.split(":")[-1].strip()


def sniff(path: Path, offset: int = 0) -> str:
    """'gzip' or 'zlib' by the stream's first bytes (MetaImage readers take either)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return "gzip" if handle.read(2) == GZIP_MAGIC else "zlib"

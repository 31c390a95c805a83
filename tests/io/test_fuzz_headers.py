"""Seeded fuzzing of every readable format's header: read_image either reads the file or raises the
project's own error (one line), never anything else (issue 18: fuzz over mutated headers)."""
import gzip
import re
import struct
import zlib

import numpy as np
import pytest

from napari_medseg.errors import MedsegError
from napari_medseg.io import read_image

CASES = 8  # per sample and seed: 15 samples x 8 cases x 6 seeds = 720 reads, a few seconds
_NUMBER = re.compile(rb"-?\d+(\.\d+)?")
_ODD_NUMBERS = [b"0", b"-1", b"1", b"3", b"65536", b"4294967297", b"99999999999999999999", b"1e308", b"nan",
                b"-0", b"2.5", b"", b"x"]


def _samples(folder, pydicom_files):
    """Small valid files of every readable format: name -> (bytes, how many leading bytes are header)."""
    import nibabel as nib
    import SimpleITK as sitk
    import tifffile
    from PIL import Image as PILImage

    volume = np.arange(6 * 5 * 4, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(volume.T, np.diag([0.8, 0.9, 2.5, 1.0])), folder / "s.nii")
    samples = {"s.nii": 352, "s.nii.gz": 352}
    for name, compress in (("raw.nrrd", False), ("gzip.nrrd", True), ("s.mha", True), ("raw.mha", False)):
        sitk.WriteImage(sitk.GetImageFromArray(volume), str(folder / name), useCompression=compress)
        samples[name] = None  # a text header: mutated line by line
    tifffile.imwrite(folder / "s.tif", volume.astype(np.uint16), imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "spacing": 2.5, "unit": "um"})
    tifffile.imwrite(folder / "z.tif", volume.astype(np.uint16), compression="zlib", tile=(16, 16))
    samples.update({"s.tif": 512, "z.tif": 512})
    rgb = np.random.default_rng(0).integers(0, 255, (12, 16, 3)).astype(np.uint8)
    PILImage.fromarray(rgb).save(folder / "s.png")
    PILImage.fromarray(rgb).save(folder / "s.jpg", quality=90)
    samples.update({"s.png": 33, "s.jpg": 620})
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtdose.dcm"):
        (folder / name).write_bytes((pydicom_files / name).read_bytes())
        samples[name] = 1600
    files = {name: (folder / name).read_bytes() for name in samples if name != "s.nii.gz"}
    files["s.nii.gz"] = files["s.nii"]  # mutated uncompressed, then compressed: the header is what is fuzzed
    return {name: (files[name], samples[name]) for name in samples}


def _mutate(data: bytes, header: int | None, rng) -> bytes:
    """One random mutation of the header: flipped or replaced bytes, odd numbers, lost or repeated lines,
    or a cut through the file."""
    choice = rng.integers(0, 10)
    if choice == 0:
        return data[: int(rng.integers(0, len(data)))]
    if header is None:  # text header: a line of key/value fields
        end = data.index(b"\n\n") + 1 if b"\n\n" in data else data.index(b"ElementDataFile")
        lines, body = data[:end].split(b"\n"), data[end:]
        index = int(rng.integers(1, max(len(lines) - 1, 2)))
        if choice in (1, 2, 3, 4):
            numbers = list(_NUMBER.finditer(lines[index]))
            if numbers:
                match = numbers[int(rng.integers(0, len(numbers)))]
                odd = _ODD_NUMBERS[int(rng.integers(0, len(_ODD_NUMBERS)))]
                lines[index] = lines[index][: match.start()] + odd + lines[index][match.end():]
        elif choice == 5:
            del lines[index]
        elif choice == 6:
            lines.insert(index, lines[index])
        elif choice == 7:
            lines[index] = lines[index][:2] + bytes(rng.integers(128, 256, 3).astype(np.uint8)) + lines[index][2:]
        else:
            lines[index] = lines[index].replace(b"=", b"").replace(b":", b"") if choice == 8 else b""
        return b"\n".join(lines) + body
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        at = int(rng.integers(0, min(header, len(data))))
        if choice < 5:
            data[at] ^= 1 << int(rng.integers(0, 8))
        elif choice < 8:
            data[at] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF]))
        else:
            data[at:at + 4] = struct.pack("<I", int(rng.choice([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])))
    return bytes(data)


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute chunk CRCs so that mutations reach the decoder, not only Pillow's CRC check."""
    out, at = bytearray(data[:8]), 8
    while at + 12 <= len(data):
        length = struct.unpack(">I", data[at:at + 4])[0]
        chunk = data[at + 4:at + 8 + length]
        if at + 12 + length > len(data):
            break
        out += data[at:at + 8 + length] + struct.pack(">I", zlib.crc32(chunk))
        at += 12 + length
    return bytes(out + data[at:])


@pytest.mark.parametrize("seed", range(6))
def test_mutated_headers_raise_only_the_projects_errors(tmp_path, pydicom_files, seed):
    samples = _samples(tmp_path, pydicom_files)
    rng = np.random.default_rng(seed)
    unexpected, outcomes = [], {"read": 0, "refused": 0}
    for name, (data, header) in samples.items():
        for case in range(CASES):
            mutated = _mutate(data, header, rng)
            if name.endswith(".png") and rng.integers(0, 2):
                mutated = _fix_png_crcs(mutated)
            if name.endswith(".gz"):
                mutated = gzip.compress(mutated)
            path = tmp_path / "fuzz" / f"{case}-{name}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(mutated)
            try:
                read_image(path)
                outcomes["read"] += 1
            except MedsegError as exc:
                outcomes["refused"] += 1
                if "\n" in str(exc) or not str(exc):
                    unexpected.append((path.name, f"{type(exc).__name__} not one line: {exc!r}"))
            except Exception as exc:  # noqa: BLE001 - what the test is looking for
                unexpected.append((path.name, f"{type(exc).__name__}: {exc}"))
            path.unlink()
    assert not unexpected, unexpected
    assert outcomes["read"] and outcomes["refused"]  # the mutations reach both outcomes

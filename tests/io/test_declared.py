"""Headers that declare more data than their files hold are refused before any pixel memory is taken
(issue 18.10); compressed NRRD/MetaImage bodies are verified before ITK trusts them (issue 18.1)."""
import gzip
import json
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from napari_medseg.errors import ImageReadError
from napari_medseg.io import read_image

HUGE = (6000, 6000, 100)  # x, y, z: 7.2 GB of 16-bit voxels
NRRD_HEADER = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 6000 6000 100\nendian: little\nencoding: raw\n\n"


def huge_files(folder, pydicom_files):
    """One file per readable format whose few bytes declare gigabytes of pixels."""
    import nibabel as nib
    import pydicom
    import tifffile
    from PIL import Image as PILImage

    files = {"raw.nrrd": NRRD_HEADER,
             "gzip.nrrd": NRRD_HEADER.replace(b"raw", b"gzip") + gzip.compress(bytes(4096)),
             "raw.mha": b"ObjectType = Image\nNDims = 3\nDimSize = 6000 6000 100\nElementType = MET_SHORT\n"
                        b"ElementDataFile = LOCAL\n" + bytes(64),
             "zlib.mha": b"ObjectType = Image\nNDims = 3\nDimSize = 6000 6000 100\nElementType = MET_SHORT\n"
                         b"CompressedData = True\nElementDataFile = LOCAL\n" + zlib.compress(bytes(4096))}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    header = nib.Nifti1Header()
    header.set_data_shape(HUGE)
    header.set_data_dtype(np.int16)
    nifti = header.binaryblock + bytes(4) + bytes(64)
    (folder / "huge.nii").write_bytes(nifti)
    (folder / "huge.nii.gz").write_bytes(gzip.compress(nifti))
    for name, compression in (("raw.tif", None), ("zlib.tif", "zlib")):
        tifffile.imwrite(folder / name, np.zeros((8, 8), np.uint16), compression=compression)
        _patch_tiff_size(folder / name, 60000, 60000)
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "huge.png")
    _patch_png_size(folder / "huge.png", 60000, 60000)
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "huge.jpg")
    data = bytearray((folder / "huge.jpg").read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    (folder / "huge.jpg").write_bytes(bytes(data))
    ds = pydicom.dcmread(pydicom_files / "CT_small.dcm")
    ds.Rows, ds.Columns, ds.NumberOfFrames = 6000, 6000, 100
    ds.save_as(folder / "huge.dcm")
    return sorted(folder.iterdir())


def _patch_tiff_size(path, width, height):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        places = [(tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")]
    data = bytearray(path.read_bytes())
    for (offset, dtype), value in zip(places, (width, height)):
        data[offset:offset + (2 if dtype == 3 else 4)] = struct.pack("<H" if dtype == 3 else "<I", value)
    path.write_bytes(bytes(data))


def _patch_png_size(path, width, height):
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))


# what each refusal says: the declared-size checks, or Pillow's decompression-bomb limit
REFUSED = r"truncated: \d+ of \d+|cannot hold the|decompression bomb|of memory available"


def test_tiny_nrrd_header_declaring_gigabytes_is_refused_quickly(tmp_path):
    (tmp_path / "huge.nrrd").write_bytes(NRRD_HEADER)
    start = time.perf_counter()
    with pytest.raises(ImageReadError, match="huge.nrrd is truncated: 0 of 7200000000 bytes present"):
        read_image(tmp_path / "huge.nrrd")
    assert time.perf_counter() - start < 0.5


def test_every_format_refuses_huge_declarations_under_a_memory_limit(tmp_path, pydicom_files):
    paths = huge_files(tmp_path, pydicom_files)
    script = (
        "import json, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))\n"
        "from napari_medseg.errors import MedsegError\n"
        "from napari_medseg.io import read_image\n"
        "found = {}\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        read_image(path)\n"
        "        found[path] = 'read'\n"
        "    except MedsegError as exc:\n"
        "        found[path] = f'{type(exc).__name__}: {exc}'\n"
        "print(json.dumps(found))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    assert len(found) == 11
    for path, outcome in found.items():
        assert outcome.startswith("ImageReadError: "), (path, outcome)
        assert "\n" not in outcome
        assert __import__("re").search(REFUSED, outcome), (path, outcome)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_corrupted_compressed_nrrd_and_metaimage_bodies_are_refused(tmp_path, suffix):
    import SimpleITK as sitk

    data = np.random.default_rng(0).integers(0, 3000, (60, 50, 40)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(data), str(tmp_path / f"good{suffix}"), useCompression=True)
    np.testing.assert_array_equal(read_image(tmp_path / f"good{suffix}").array, data)
    body = bytearray((tmp_path / f"good{suffix}").read_bytes())
    middle = len(body) // 2
    body[middle:middle + 64] = bytes(255 - b for b in body[middle:middle + 64])  # lengths and trailer intact
    (tmp_path / f"bad{suffix}").write_bytes(bytes(body))
    check = "CRC" if suffix == ".nrrd" else "Adler-32"
    with pytest.raises(ImageReadError, match=f"bad{suffix} is corrupt: .* data fail to decompress .*{check}"):
        read_image(tmp_path / f"bad{suffix}")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_half_present_compressed_data_state_the_present_count(tmp_path, suffix):
    import SimpleITK as sitk

    data = np.random.default_rng(1).integers(0, 3000, (20, 30, 40)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(data), str(tmp_path / f"full{suffix}"), useCompression=True)
    body = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"half{suffix}").write_bytes(body[:len(body) // 2])
    with pytest.raises(ImageReadError, match=r"is truncated: (\d+) of 48000 bytes present") as info:
        read_image(tmp_path / f"half{suffix}")
    present = int(str(info.value).split("truncated: ")[1].split()[0])
    assert 0.3 * 48000 < present < 0.7 * 48000


def test_truncated_tiff_and_dicom_pixel_data(tmp_path, pydicom_files):
    import tifffile

    tifffile.imwrite(tmp_path / "full.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    body = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "half.tif").write_bytes(body[:len(body) // 2])
    with pytest.raises(ImageReadError, match=r"half.tif is truncated: \d+ of 8192 bytes present"):
        read_image(tmp_path / "half.tif")
    with pytest.raises(ImageReadError, match="MR_truncated.dcm is truncated: 8130 of 8192 pixel data bytes"):
        read_image(pydicom_files / "MR_truncated.dcm")


def test_bzip2_nrrd_is_one_line(tmp_path):
    import bz2

    header = NRRD_HEADER.replace(b"6000 6000 100", b"2 2 2").replace(b"raw", b"bzip2")
    (tmp_path / "b.nrrd").write_bytes(header + bz2.compress(bytes(16)))
    with pytest.raises(ImageReadError, match="b.nrrd is bzip2-encoded, which SimpleITK's NRRD reader cannot"):
        read_image(tmp_path / "b.nrrd")

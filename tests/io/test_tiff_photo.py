import numpy as np
import pytest

from napari_medseg.errors import ImageReadError
from napari_medseg.io import read_image

tifffile = pytest.importorskip("tifffile")
PIL_Image = pytest.importorskip("PIL.Image")

STACK = np.arange(5 * 2 * 20 * 30, dtype=np.uint16).reshape(5, 2, 20, 30)  # Z, C, Y, X


def test_ome_tiff_sizes_channels_and_axis_order(tmp_path):
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, STACK, metadata={
        "axes": "ZCYX", "PhysicalSizeX": 0.3, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.4,
        "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "µm",
        "Channel": {"Name": ["DAPI", "GFP"]}})
    image = read_image(path)
    assert image.array.shape == (5, 20, 30, 2) and image.channel_axis == -1 and image.ndim == 3
    np.testing.assert_array_equal(image.array, STACK.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(image.spacing, (0.0003, 0.0004, 0.0015))  # millimetres
    assert (image.modality, image.intensity) == ("microscopy", "raw")
    assert image.metadata["physical_size"]["z"] == [1.5, "µm"]
    assert image.metadata["channel_names"] == ["DAPI", "GFP"]


def test_imagej_tiff_spacing(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, STACK[:, 0], imagej=True, resolution=(1 / 0.5, 1 / 0.25),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    image = read_image(path)
    assert image.array.shape == (5, 20, 30) and image.channel_axis is None
    np.testing.assert_allclose(image.spacing, (0.0005, 0.00025, 0.002))
    assert image.metadata["format_detail"] == "imagej"


def test_plain_tiffs(tmp_path):
    tifffile.imwrite(tmp_path / "plane.tif", STACK[0, 0])
    plane = read_image(tmp_path / "plane.tif")
    assert plane.array.shape == (20, 30) and plane.spacing == (1.0, 1.0) and plane.modality == "microscopy"
    tifffile.imwrite(tmp_path / "pages.tif", STACK[:, 1])
    assert read_image(tmp_path / "pages.tif").array.shape == (5, 20, 30)
    rgba = np.dstack([np.full((20, 30), v, np.uint8) for v in (10, 20, 30, 40)])
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    photo = read_image(tmp_path / "rgba.tif")
    assert photo.array.shape == (20, 30, 3) and photo.is_rgb and photo.modality == "RGB"
    assert photo.metadata["warnings"] == ["alpha channel dropped"]


def test_tiff_time_series_refused(tmp_path):
    tifffile.imwrite(tmp_path / "movie.tif", STACK[:, :1], imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(ImageReadError, match="time series"):
        read_image(tmp_path / "movie.tif")


def test_png_rgb_gray_rgba_and_16bit(tmp_path):
    rgb = (np.arange(20 * 30 * 3) % 256).astype(np.uint8).reshape(20, 30, 3)
    PIL_Image.fromarray(rgb).save(tmp_path / "endo.png")
    image = read_image(tmp_path / "endo.png")
    np.testing.assert_array_equal(image.array, rgb)
    assert image.is_rgb and (image.modality, image.channel_axis, image.ndim) == ("RGB", -1, 2)
    PIL_Image.fromarray(np.dstack([rgb, np.full((20, 30), 128, np.uint8)])).save(tmp_path / "rgba.png")
    rgba = read_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(rgba.array, rgb)
    assert rgba.metadata["warnings"] == ["transparency dropped"]
    PIL_Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    gray = read_image(tmp_path / "gray.png")
    assert gray.array.shape == (20, 30) and gray.channel_axis is None and gray.intensity == "raw"
    deep = (np.arange(600, dtype=np.uint16) * 100).reshape(20, 30)
    PIL_Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png").array, deep)


def test_jpeg_exif_rotation_and_bmp(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :10] = 255  # bright left third
    photo = PIL_Image.fromarray(rgb)
    exif = photo.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    photo.save(tmp_path / "derm.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "derm.jpg")
    assert image.array.shape == (30, 20, 3) and image.metadata["format"] == "jpeg"
    assert image.array[:10].mean() > 200 and image.array[-10:].mean() < 50  # bright part now on top
    photo.save(tmp_path / "dermo.bmp")
    np.testing.assert_array_equal(read_image(tmp_path / "dermo.bmp").array, rgb)


def test_truncated_and_fake_images(tmp_path):
    PIL_Image.fromarray((np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    tifffile.imwrite(tmp_path / "a.tif", STACK[0])
    (tmp_path / "cut.tif").write_bytes((tmp_path / "a.tif").read_bytes()[:300])
    tifffile.imwrite(tmp_path / "z.tif", STACK[:, 0], compression="zlib")  # pages after the cut vanish
    (tmp_path / "cutz.tif").write_bytes((tmp_path / "z.tif").read_bytes()[:4000])
    for name in ("cut.png", "fake.png", "cut.tif", "cutz.tif"):
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)


def test_microscopy_labels_as_calibrated_imagej_tiff(tmp_path):
    from napari_medseg.io import write_labels

    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, STACK[:, 0], metadata={"axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25,
                                                  "PhysicalSizeZ": 2.0})
    image = read_image(path)
    out = write_labels(np.ones(image.spatial_shape, np.uint16) * 300, image, tmp_path / "cells_seg.tif", {300: "cell"})
    (tmp_path / "cells_seg.tif.json").unlink()  # without our sidecar, the ImageJ calibration still holds
    back = read_image(out)
    assert back.metadata["physical_size"]["x"] == [pytest.approx(0.25), "um"]
    np.testing.assert_allclose(back.spacing, image.spacing, rtol=1e-6)
    assert back.array.dtype == np.uint16 and back.array.max() == 300


def test_png_labels_16bit(tmp_path):
    from napari_medseg.io import Image, write_labels

    photo = Image(np.zeros((8, 9, 3), np.uint8), (1, 1), (0, 0), np.eye(2), intensity="rgb", channel_axis=-1)
    labels = np.arange(72).reshape(8, 9) * 500
    out = write_labels(labels, photo, tmp_path / "mask.png")
    assert PIL_Image.open(out).mode.startswith("I;16")
    np.testing.assert_array_equal(read_image(out).array, labels)


def test_palette_png_label_mask_keeps_indices(tmp_path):
    from PIL import Image as PILImage

    labels = np.zeros((20, 30), np.uint8)
    labels[5:10, 5:12] = 3
    mask = PILImage.fromarray(labels, mode="P")
    mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * 756)
    mask.save(tmp_path / "voc_mask.png")
    image = read_image(tmp_path / "voc_mask.png")
    assert image.channel_axis is None
    np.testing.assert_array_equal(image.array, labels)


def test_zero_or_invalid_pixel_sizes_are_ignored_with_a_warning(tmp_path):
    import struct

    path = tmp_path / "cal.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"})
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["XResolution"].valueoffset
    data = bytearray(path.read_bytes())
    data[offset:offset + 8] = struct.pack("<II", 0, 0)  # XResolution 0/0 (tifffile: ZeroDivisionError)
    path.write_bytes(bytes(data))
    image = read_image(path)
    assert image.spacing == (1.0, 0.00025, 0.002)
    assert image.metadata["warnings"] == ["the ImageJ pixel size along x is zero, negative or not a number; 1 used"]

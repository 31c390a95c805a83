"""A full disk never replaces a label file (issue 18.2); one sidecar per label file (issue 18.6)."""
import errno
import json

import numpy as np
import pytest

from napari_medseg.errors import ImageWriteError
from napari_medseg.io import Image, read_image, write_labels
from napari_medseg.io import write as write_module

SUFFIXES = [".nii", ".nii.gz", ".nrrd", ".mha", ".png", ".tif"]


def _image_and_labels(suffix):
    rng = np.random.default_rng(0)
    shape = (40, 50) if suffix == ".png" else (6, 40, 50)
    image = Image(np.zeros(shape, np.int16), (0.5,) * len(shape), (0.0,) * len(shape), np.eye(len(shape)))
    return image, rng.integers(0, 4, shape).astype(np.uint8)


def _short_writes(monkeypatch, keep=0.5):
    """Every writer's file loses its tail, as ITK's writers leave it on a full disk without raising."""
    import SimpleITK as sitk

    def truncating(write):
        def writer(*args, **kwargs):
            write(*args, **kwargs)
            path = next(a for a in args if isinstance(a, str) or hasattr(a, "name"))
            with open(path, "r+b") as handle:
                handle.truncate(int(handle.seek(0, 2) * keep))
        return writer

    monkeypatch.setattr(sitk, "WriteImage", truncating(sitk.WriteImage))
    monkeypatch.setattr(write_module, "write_png_labels", truncating(write_module.write_png_labels))
    monkeypatch.setattr(write_module, "write_tiff_labels", truncating(write_module.write_tiff_labels))
    monkeypatch.setattr(write_module, "write_labelled_nifti", truncating(write_module.write_labelled_nifti))


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_a_silent_short_write_never_replaces_the_old_file(tmp_path, monkeypatch, suffix, keep):
    image, labels = _image_and_labels(suffix)
    target = write_labels(labels, image, tmp_path / f"mask{suffix}", {1: "liver"})
    old = target.read_bytes()
    sidecars = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
    _short_writes(monkeypatch, keep)
    with pytest.raises(ImageWriteError, match=f"Cannot write .*mask{suffix}: the written file is incomplete") as info:
        write_labels(np.ones_like(labels), image, target, {1: "spleen"})
    assert "\n" not in str(info.value) and ".medseg-tmp-" not in str(info.value)
    assert target.read_bytes() == old
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.json")} == sidecars
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, *sidecars])  # no temporary files
    monkeypatch.undo()
    np.testing.assert_array_equal(read_image(target).array, labels)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".nii.gz"])
def test_enospc_while_writing_the_sidecar_changes_neither_file(tmp_path, monkeypatch, suffix):
    from napari_medseg import atomic

    image, labels = _image_and_labels(suffix)
    target = write_labels(labels, image, tmp_path / f"mask{suffix}", {1: "liver"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(fd, data):  # atomic.py's counted writes: the sidecar's
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "write_fully", full_disk)
    with pytest.raises(ImageWriteError, match=f"Cannot write .*mask{suffix}: .*No space left on device") as info:
        write_labels(np.ones_like(labels), image, target, {1: "spleen"})
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # labels and sidecar as they were


def test_labels_of_two_formats_keep_their_own_sidecars(tmp_path):
    photo = Image(np.zeros((20, 30), np.uint8), (0.3, 0.4), (5.0, -2.0), np.eye(2))
    labels = np.zeros((20, 30), np.uint8)
    labels[2:5, 3:9] = 1
    png = write_labels(labels, photo, tmp_path / "mask.png", {1: "polyp"})
    nifti = write_labels(labels, photo, tmp_path / "mask.nii.gz")  # no names: must not delete the PNG's
    tif = write_labels(labels, photo, tmp_path / "mask.tif", {1: "lesion"})
    assert read_image(png).metadata["label_names"] == {1: "polyp"}
    assert read_image(png).spacing == (0.3, 0.4)
    assert read_image(tif).metadata["label_names"] == {1: "lesion"}
    assert "label_names" not in read_image(nifti).metadata
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["mask.png.json", "mask.tif.json"]


def test_old_style_sidecars_are_read_where_unambiguous_and_retired_on_rewrite(tmp_path):
    photo = Image(np.zeros((20, 30), np.uint8), (0.3, 0.4), (5.0, -2.0), np.eye(2))
    labels = np.ones((20, 30), np.uint8)
    png = write_labels(labels, photo, tmp_path / "mask.png", {1: "polyp"})
    png.with_name("mask.png.json").rename(tmp_path / "mask.json")  # as versions before this one wrote it
    assert read_image(png).metadata["label_names"] == {1: "polyp"} and read_image(png).spacing == (0.3, 0.4)
    write_labels(labels, photo, tmp_path / "mask.nii.gz")  # now mask.json could be either file's
    assert "label_names" not in read_image(png).metadata and (tmp_path / "mask.json").is_file()
    (tmp_path / "mask.nii.gz").unlink()
    write_labels(labels, photo, png, {1: "adenoma"})  # unambiguous again: rewritten under the new name
    assert not (tmp_path / "mask.json").exists()
    assert json.loads((tmp_path / "mask.png.json").read_text())["label_names"] == {"1": "adenoma"}

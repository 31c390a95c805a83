"""Real napari viewers (under Xvfb): reading, sample data, saving labels, the Segment widget."""
import subprocess
import sys

import numpy as np
import pytest

from napari_medseg._napari.reader import get_reader
from napari_medseg.io import read_image, write_labels
from napari_medseg.io.image import Image

PLUGIN = "napari-medseg"


def test_manifest_validates():
    result = subprocess.run([sys.executable, "-m", "npe2", "validate", PLUGIN], capture_output=True, text=True)
    assert result.returncode == 0 and "valid" in result.stdout, result.stdout + result.stderr


def test_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")]) is None
    assert get_reader(str(tmp_path / "a.nii.gz")) is not None


def _oblique_volume() -> Image:
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1.0]])
    array = np.random.default_rng(0).normal(size=(6, 20, 24)).astype(np.float32)
    return Image(array, (0.8, 0.9, 2.5), (10.0, -20.0, 30.0), direction, modality="MR")


@pytest.mark.gui
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_open_volume_with_world_placement(make_napari_viewer, tmp_path, suffix):
    source = _oblique_volume()
    path = tmp_path / f"scan{suffix}"
    write_labels((source.array > 0).astype(np.uint8), source, path)  # any array in that geometry
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer.data.shape == source.array.shape
    np.testing.assert_allclose(_world_matrix(layer), source.napari_affine, atol=1e-5)


def _world_matrix(layer):
    """The layer's full data-to-world matrix (affine composed with scale and translate)."""
    n = layer.ndim
    m = np.eye(n + 1)
    m[:n, :n] = np.diag(layer.scale)
    m[:n, n] = layer.translate
    return layer.affine.affine_matrix @ m


@pytest.mark.gui
@pytest.mark.parametrize("sample, spacing", [
    ("ct", (0.661468, 0.661468)), ("head_ct", (0.478516, 0.478516)), ("brain_mr", (1.0, 1.0, 1.0)),
    ("fundus", (1.0, 1.0)), ("microscopy", (1.0, 1.0)),
])
def test_sample_data_opens_with_spacing(make_napari_viewer, sample, spacing):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, sample)
    layer = layers[0]
    world = _world_matrix(layer)
    np.testing.assert_allclose(np.abs(np.linalg.norm(world[:-1, :-1], axis=0)), spacing[::-1], rtol=1e-4)
    if sample == "fundus":
        assert layer.rgb
    if sample == "ct":
        assert layer.metadata["medseg"]["intensity"] == "HU"
        assert tuple(layer.contrast_limits) == (-160.0, 240.0)


@pytest.mark.gui
def test_save_labels_in_source_geometry(make_napari_viewer, tmp_path):
    import nibabel as nib
    import SimpleITK as sitk

    source = _oblique_volume()
    src_path = tmp_path / "scan.nii.gz"
    write_labels(np.zeros(source.array.shape, np.uint8), source, src_path)
    viewer = make_napari_viewer()
    (image_layer,) = viewer.open(str(src_path), plugin=PLUGIN)
    from napari_medseg._napari.layers import labels_layer_kwargs

    image = read_image(src_path)
    labels = viewer.add_labels(np.zeros(image.array.shape, np.uint8),
                               **labels_layer_kwargs(image, "scan labels", {1: "lesion"}))
    labels.data[2, 5:9, 6:12] = 1
    out = tmp_path / "labels.nrrd"
    labels.save(str(out), plugin=PLUGIN)
    saved = read_image(out)
    np.testing.assert_allclose(saved.affine, image.affine, atol=1e-5)
    assert saved.metadata.get("label_names", {}).get(1) == "lesion"
    out_nii = tmp_path / "labels.nii.gz"
    labels.save(str(out_nii), plugin=PLUGIN)
    np.testing.assert_allclose(nib.load(out_nii).affine, nib.load(src_path).affine, atol=1e-5)
    itk = sitk.ReadImage(str(out_nii))
    np.testing.assert_allclose(itk.GetDirection(), sitk.ReadImage(str(src_path)).GetDirection(), atol=1e-6)
    assert int(sitk.GetArrayFromImage(itk).sum()) == 24


@pytest.mark.gui
def test_corrupt_file_gives_a_notification_not_a_crash(make_napari_viewer, tmp_path, monkeypatch):
    messages = []
    import napari.utils.notifications as notifications

    monkeypatch.setattr(notifications, "show_error", messages.append)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08 truncated")
    viewer = make_napari_viewer()
    layers = viewer.open(str(bad), plugin=PLUGIN)
    assert layers == [] and len(viewer.layers) == 0
    assert messages and "broken.nii.gz" in messages[0]


def test_core_warnings_during_a_task_become_notifications(make_napari_viewer):
    import logging

    from qtpy.QtCore import QCoreApplication

    from napari_medseg._napari.runner import TaskRunner

    make_napari_viewer()
    messages = []
    runner = TaskRunner(lambda level, text: messages.append((level, text)))

    def job(progress, cancel):
        logging.getLogger("napari_medseg.inference.precision").warning("float16 overflowed; continuing in float32")
        return 1

    runner.run(job, lambda result: None)
    runner.wait(10000)
    QCoreApplication.processEvents()
    assert ("warning", "float16 overflowed; continuing in float32") in messages
    logging.getLogger("napari_medseg").warning("outside any task")
    QCoreApplication.processEvents()
    assert all(text != "outside any task" for _, text in messages)


def test_ome_zarr_opens_multiscale_and_painted_labels_save_into_it(make_napari_viewer, tmp_path):
    """Issue 21: the viewer shows an OME-Zarr pyramid as a multiscale layer at its physical scale; a labels
    layer painted on it is saved into the image's own OME-Zarr (labels group) and comes back on reopening."""
    import zarr

    from napari_medseg._napari.layers import labels_layer_kwargs

    path = tmp_path / "field.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    rng = np.random.default_rng(0)
    for level, side in enumerate((1024, 512)):
        root.create_array(str(level), data=rng.integers(0, 4000, (side, side), dtype=np.uint16), chunks=(256, 256))
    root.attrs.update({"multiscales": [{"version": "0.4", "axes": [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "yx"], "datasets": [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [0.25 * 2 ** i] * 2}]}
        for i in range(2)]}]})
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer.multiscale and len(layer.data) == 2 and tuple(layer.scale) == (0.00025, 0.00025)
    image = read_image(path)
    labels = viewer.add_labels(np.zeros(image.spatial_shape, np.uint8),
                               **labels_layer_kwargs(image, "nuclei", {1: "nucleus"}))
    labels.data[100:140, 200:260] = 1
    labels.save(str(path), plugin=PLUGIN)
    viewer.layers.clear()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"] and layers[1].name == "nuclei"
    assert layers[1].multiscale and int(np.asarray(layers[1].data[0]).sum()) == 40 * 60

"""The doors to the clinical formats: `medseg convert`, `medseg segment -o x.dcm / --format`, the Python API
and the napari reader/writer functions (no viewer)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from napari_medseg.cli import main
from napari_medseg.io import Image, read_image, write_labels
from napari_medseg.io.convert import on_grid

pytest.importorskip("highdicom")


@pytest.fixture
def series(dicom_series, tmp_path):
    return dicom_series(tmp_path / "series", count=4, shape=(12, 10), spacing=2.5)


def mask_on(image: Image) -> np.ndarray:
    labels = np.zeros(image.spatial_shape, np.uint8)
    labels[1:3, 2:6, 1:4] = 1
    labels[3, 7:10, 5:9] = 2
    return labels


def flipped_like_dcm2niix(image: Image, labels: np.ndarray) -> Image:
    """The same voxels on a grid whose x and y axes run the other way (RAS-ordered, as NIfTI converters write)."""
    flipped = labels[:, ::-1, ::-1]
    direction = image.direction.copy()
    origin = np.array(image.origin) + direction[:, 0] * image.spacing[0] * (labels.shape[2] - 1) \
        + direction[:, 1] * image.spacing[1] * (labels.shape[1] - 1)
    direction[:, :2] *= -1
    return Image(np.ascontiguousarray(flipped), image.spacing, origin, direction)


def test_convert_nifti_on_another_grid_to_dicom_seg(series, tmp_path, capsys):
    image = read_image(series)
    labels = mask_on(image)
    other = flipped_like_dcm2niix(image, labels)
    nifti = write_labels(other.array, other, tmp_path / "mask.nii.gz", {1: "liver"})
    out = tmp_path / "mask.dcm"
    assert main(["convert", str(nifti), "--like", str(series), "-o", str(out), "--names", "1=liver,2=spleen"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    back = read_image(out)  # BINARY omits empty frames: the SEG covers slices 1-3, placed in the same space
    assert back.spatial_shape == (3, 12, 10)
    np.testing.assert_array_equal(on_grid(back, image), labels)  # resampled onto the series' own voxels
    assert back.metadata["label_names"] == {1: "liver", 2: "spleen"}

    seg_nrrd = tmp_path / "mask.seg.nrrd"  # names from the labels file when --names is not given
    assert main(["convert", str(out), "--like", str(series), "-o", str(seg_nrrd)]) == 0
    back = read_image(seg_nrrd)
    np.testing.assert_array_equal(back.array, labels)
    assert back.metadata["label_names"] == {1: "liver", 2: "spleen"}

    from napari_medseg import convert_labels  # the Python API is the same function

    api = convert_labels(nifti, series, tmp_path / "api.dcm", dicom_seg_type="LABELMAP")
    assert read_image(api).metadata["segmentation_type"] == "LABELMAP"


def test_convert_refuses_a_seg_of_another_series(series, dicom_series, tmp_path, capsys):
    image = read_image(series)
    seg = write_labels(mask_on(image), image, tmp_path / "seg.dcm")
    other = dicom_series(tmp_path / "other", count=4, shape=(12, 10), spacing=2.5, series_uid="1.2.826.0.1.3680043.9.1.9")
    assert main(["convert", str(seg), "--like", str(other), "-o", str(tmp_path / "x.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "references series" in err and "1.2.826.0.1.3680043.9.1.9" in err
    assert not (tmp_path / "x.nii.gz").exists()


@pytest.mark.parametrize("argv, message", [
    (["--names", "1liver"], "--names takes VALUE=NAME pairs"),
    (["--names", "0=background"], "values above 0"),
    (["-o", "{tmp}/x.jpg"], "Cannot write labels as x.jpg"),
    (["-o", "{tmp}/x.nii.gz", "--format", "dicom-seg"], "dicom-seg files end in .dcm"),
    (["-o", "{tmp}/missing/x.dcm"], "does not exist"),
    (["--like", "{tmp}/mask.nii.gz"], "needs labels drawn on a DICOM image, not on mask.nii.gz"),
])
def test_convert_user_errors_are_one_line_exit_2(series, tmp_path, capsys, argv, message):
    image = read_image(series)
    nifti = write_labels(mask_on(image), image, tmp_path / "mask.nii.gz")
    argv = [a.format(tmp=tmp_path) for a in argv]
    base = {"--like": str(series), "-o": str(tmp_path / "out.dcm")}
    for flag in ("--like", "-o"):
        if flag in argv:
            base.pop(flag)
    args = ["convert", str(nifti), *[x for kv in base.items() for x in kv], *argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medseg: error:") and message in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_segment_writes_dicom_seg_from_the_output_name(tmp_path, pydicom_files, capsys):
    out = tmp_path / "ct_seg.dcm"
    assert main(["segment", str(pydicom_files / "CT_small.dcm"), "-o", str(out), "--box", "30,30,90,90",
                 "--device", "cpu"]) == 0
    back = read_image(out)
    assert back.metadata["format"] == "dicom-seg" and back.array.any()
    assert back.spatial_shape == (128, 128)


def test_segment_refuses_dicom_seg_of_non_dicom_before_loading_the_model(tmp_path, make_nifti, capsys, monkeypatch):
    import napari_medseg.models.load as load

    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    nifti = make_nifti()
    start = time.perf_counter()
    assert main(["segment", str(nifti), "-o", str(tmp_path / "seg.dcm"), "--box", "1,1,4,4,1"]) == 2
    err = capsys.readouterr().err
    assert "needs labels drawn on a DICOM image" in err and time.perf_counter() - start < 5
    assert not (tmp_path / "seg.dcm").exists()


def test_segment_folder_output_with_format_name(tmp_path, pydicom_files):
    import shutil

    cohort = tmp_path / "cohort" / "ct"
    cohort.mkdir(parents=True)
    shutil.copy(pydicom_files / "CT_small.dcm", cohort / "IM0001")
    out = tmp_path / "out"
    assert main(["segment", str(cohort.parent), "-o", str(out), "--box", "30,30,90,90", "--device", "cpu",
                 "--format", "dicom-seg"]) == 0
    manifest = json.loads((out / "medseg_run.json").read_text())
    assert [c["status"] for c in manifest["cases"]] == ["done"]
    assert read_image(out / "ct.dcm").metadata["format"] == "dicom-seg"


def test_napari_reader_and_writer_functions(series, tmp_path):
    pytest.importorskip("napari")
    from napari_medseg._napari.layers import labels_layer_kwargs
    from napari_medseg._napari.reader import read_layers
    from napari_medseg._napari.writer import write_labels_layer

    image = read_image(series)
    labels = mask_on(image)
    attributes = labels_layer_kwargs(image, "mask", {1: "liver", 2: "spleen"})
    [written] = write_labels_layer(str(tmp_path / "mask.dcm"), labels, attributes)
    [(data, kwargs, kind)] = read_layers(written)
    assert kind == "labels"
    np.testing.assert_array_equal(data, labels[1:])  # slice 0 is empty: BINARY omits it
    np.testing.assert_allclose(kwargs["translate"], np.array(image.origin[::-1]) + [2.5, 0, 0])
    info = kwargs["metadata"]["medseg"]
    assert info["label_names"] == {1: "liver", 2: "spleen"} and info["label_colors"][1] == (40, 140, 40)
    np.testing.assert_allclose(kwargs["colormap"].map(np.array([1]))[0][:3], np.array([40, 140, 40]) / 255, atol=0.01)
    [again] = write_labels_layer(str(tmp_path / "again.seg.nrrd"), data, kwargs)  # colours travel on
    assert read_image(again).metadata["label_colors"][1] == (40, 140, 40)


def test_napari_writer_keeps_a_single_slice_position(tmp_path, pydicom_files):
    pytest.importorskip("napari")
    import nibabel as nib

    from napari_medseg._napari.layers import labels_layer_kwargs
    from napari_medseg._napari.writer import write_labels_layer

    ct = read_image(pydicom_files / "CT_small.dcm")
    labels = np.zeros(ct.spatial_shape, np.uint8)
    labels[5:9, 5:9] = 1
    [written] = write_labels_layer(str(tmp_path / "m.nii.gz"), labels, labels_layer_kwargs(ct, "m"))
    np.testing.assert_allclose(nib.load(written).affine[2, 2:], [5.0, -75.7], atol=1e-3)


def test_npe2_save_picks_the_dicom_seg_writer_by_extension(tmp_path, pydicom_files, make_nifti):
    """What napari's Save Selected Layers calls: the .dcm writer contribution; a non-DICOM source is one line."""
    npe2 = pytest.importorskip("npe2")
    from napari_medseg._napari.layers import labels_layer_kwargs
    from napari_medseg.errors import ImageWriteError

    manager = npe2.PluginManager.instance()
    manager.discover()
    ct = read_image(pydicom_files / "CT_small.dcm")
    labels = np.zeros(ct.spatial_shape, np.uint8)
    labels[5:20, 5:20] = 1
    layer = (labels, labels_layer_kwargs(ct, "mask", {1: "liver"}), "labels")
    [written] = npe2.write(str(tmp_path / "mask.dcm"), [layer], plugin_name="napari-medseg")
    assert read_image(written).metadata["label_names"] == {1: "liver"}
    nifti = read_image(make_nifti())
    layer = (np.ones(nifti.spatial_shape, np.uint8), labels_layer_kwargs(nifti, "mask"), "labels")
    with pytest.raises(ImageWriteError, match="needs labels drawn on a DICOM image"):
        npe2.write(str(tmp_path / "other.dcm"), [layer], plugin_name="napari-medseg")
    assert not (tmp_path / "other.dcm").exists()


def test_rtstruct_through_napari_reader_and_writer(tmp_path, dicom_series, dciodvfy):
    """Save Selected Layers offers an RTSTRUCT writer for .dcm beside DICOM-SEG; napari's reader opens that RTSTRUCT
    (its series found in the folder above) as a labels layer with names and colours, on the series' grid."""
    npe2 = pytest.importorskip("npe2")
    from napari.components import LayerList
    from napari.layers import Labels

    from napari_medseg._napari.layers import labels_layer_kwargs
    from napari_medseg.errors import ImageReadError
    from napari_medseg.io.rtstruct import referenced_image

    manager = npe2.PluginManager.instance()
    manager.discover()
    series = read_image(dicom_series(tmp_path / "study" / "ct", count=4, shape=(12, 12)))
    labels = np.zeros(series.spatial_shape, np.uint8)
    labels[1:3, 2:8, 3:9] = 1
    labels[2:4, 9:11, 1:4] = 2
    writers = {w.command: w for w in manager.iter_compatible_writers(["labels"])
               if w.plugin_name == "napari-medseg" and ".dcm" in w.filename_extensions}
    assert set(writers) == {"napari-medseg.write_dicom_seg", "napari-medseg.write_rtstruct"}
    layers = LayerList([Labels(labels, **labels_layer_kwargs(series, "organs", {1: "liver", 2: "my lesion"}))])
    out = tmp_path / "study" / "rt" / "structures.dcm"
    out.parent.mkdir()
    assert layers.save(str(out), _writer=writers["napari-medseg.write_rtstruct"]) == [str(out)]
    import pydicom

    assert pydicom.dcmread(out).Modality == "RTSTRUCT" and dciodvfy(out) == []

    [(data, kwargs, kind)] = npe2.read([str(out)], stack=False, plugin_name="napari-medseg")
    assert kind == "labels" and kwargs["name"] == "structures.dcm"
    np.testing.assert_array_equal(data, labels)
    info = kwargs["metadata"]["medseg"]
    assert info["label_names"] == {1: "liver", 2: "my lesion"} and info["label_colors"][1] == (40, 140, 40)
    assert info["geometry"] == series.geometry() and info["series_key"] == series.metadata["series_key"]
    np.testing.assert_allclose(kwargs["colormap"].color_dict[1][:3], np.array([40, 140, 40]) / 255)
    [seg] = npe2.write(str(tmp_path / "seg.dcm"), [(data, kwargs, kind)], plugin_name="napari-medseg")
    assert read_image(seg).metadata["label_names"] == {1: "liver", 2: "my lesion"}  # back onto the series

    alone = tmp_path / "alone" / "deeper" / "structures.dcm"
    alone.parent.mkdir(parents=True)
    alone.write_bytes(out.read_bytes())
    with pytest.raises(ImageReadError, match="is not in .* or the folder above") as caught:
        referenced_image(alone)
    assert "\n" not in str(caught.value)

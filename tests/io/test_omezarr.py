"""OME-Zarr and pyramidal TIFF read lazily; OME-Zarr labels written chunk by chunk (issue 21).

Pyramids are built by benchmarks/make_pyramid.py (real scikit-image tiles) at 2048^2 with 256^2 chunks.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from napari_medseg.io import read_image, write_labels
from napari_medseg.io.omezarr import read_ome_zarr, read_zarr_labels, write_zarr_labels

SIZE, TILE = 2048, 256
_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "make_pyramid.py"


def _make_pyramid():
    spec = importlib.util.spec_from_file_location("make_pyramid", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pyramid")
    make = _make_pyramid()
    zarr_path = make.write_zarr(folder, SIZE, TILE)
    return zarr_path, make.write_ome_tiff(folder, zarr_path, TILE)


@pytest.fixture
def chunk_reads(monkeypatch):
    """Every chunk (not metadata) that zarr's LocalStore reads, from any thread."""
    from zarr.storage import LocalStore

    reads: list[str] = []
    get = LocalStore.get

    async def counting(self, key, *args, **kwargs):
        if not key.rsplit("/", 1)[-1].startswith((".z", "zarr.json")):
            reads.append(key)
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting)
    return reads


def test_ome_zarr_opens_lazily_and_reads_only_the_chunks_shown(pyramid, chunk_reads):
    reads = chunk_reads
    image = read_ome_zarr(pyramid[0])
    assert reads == []  # opening reads metadata only
    levels = image.metadata["levels"]
    assert [level.shape for level in levels] == [(2048, 2048, 3), (1024, 1024, 3), (512, 512, 3), (256, 256, 3)]
    assert image.is_rgb and image.array is levels[0] and image.spatial_shape == (SIZE, SIZE)
    np.asarray(levels[-1])  # the overview napari shows first: one chunk
    tile = np.asarray(image.array[512:1536, 512:1536])  # one full-resolution 1024^2 view: 4 x 4 chunks
    assert tile.shape == (1024, 1024, 3) and tile.std() > 5  # real tissue, not fill
    assert len(reads) == 1 + 16, reads  # of 64 + 16 + 4 + 1 chunks
    assert image.spacing == (0.0005, 0.0005)  # 0.5 micrometre in mm
    assert image.metadata["physical_size"] == {"y": [0.5, "micrometer"], "x": [0.5, "micrometer"]}
    assert image.metadata["channel_names"] == ["R", "G", "B"]


def test_napari_layers_are_multiscale_with_the_physical_scale(pyramid):
    from napari_medseg._napari.layers import image_layer_data

    data, kwargs, kind = image_layer_data(read_image(pyramid[0]))
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"] and len(data) == 4
    assert kwargs["scale"] == (0.0005, 0.0005)
    assert all(not isinstance(level, np.ndarray) for level in data)  # nothing loaded


def test_channels_of_a_multichannel_ome_zarr(tmp_path):
    import zarr

    root = zarr.open_group(str(tmp_path / "cells.zarr"), mode="w", zarr_format=2)
    data = np.random.default_rng(0).integers(0, 4000, (2, 5, 64, 64), dtype=np.uint16)  # c, z, y, x
    root.create_array("0", data=data, chunks=(1, 1, 32, 32))
    root.attrs.update({"multiscales": [{"version": "0.4", "axes": [
        {"name": "c", "type": "channel"}, {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "nanometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 2.0, 0.3, 250]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2, 2]}]}],
        "omero": {"channels": [{"label": "membrane", "color": "00FF00"}, {"label": "nuclei", "color": "0000FF"}]}})
    image = read_image(tmp_path / "cells.zarr")
    assert image.spatial_shape == (5, 64, 64) and image.channel_axis == -1 and not image.is_rgb
    np.testing.assert_array_equal(np.asarray(image.array), np.moveaxis(data, 0, -1))
    assert image.spacing == pytest.approx((0.0005, 0.0006, 0.002))  # x, y, z in mm: 250 nm x 2, 0.3 um x 2, 2 um
    assert image.metadata["channel_names"] == ["membrane", "nuclei"]
    from napari_medseg._napari.layers import image_layer_data

    _, kwargs, _ = image_layer_data(image)
    assert kwargs["channel_axis"] == 3 and kwargs["name"] == ["cells.zarr [0]", "cells.zarr [1]"]


def test_pyramidal_ome_tiff_is_read_lazily(pyramid, monkeypatch):
    from tifffile.zarr import ZarrTiffStore

    reads = []
    get = ZarrTiffStore.get

    async def counting(self, key, *args, **kwargs):
        if not key.rsplit("/", 1)[-1].startswith((".z", "zarr.json")):
            reads.append(key)
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(ZarrTiffStore, "get", counting)
    image = read_image(pyramid[1])
    assert image.metadata["lazy"] and reads == []
    assert [level.shape for level in image.metadata["levels"]] == [(2048, 2048, 3), (1024, 1024, 3), (512, 512, 3),
                                                                    (256, 256, 3)]
    assert image.is_rgb and image.spacing == (0.0005, 0.0005)
    same = read_image(pyramid[0])
    np.testing.assert_array_equal(np.asarray(image.array[:1024, 1024:]), np.asarray(same.array[:1024, 1024:]))
    assert len(reads) == 16  # 4 x 4 tiles of 256^2


def _labels():
    labels = np.zeros((SIZE, SIZE), np.uint16)
    labels[100:300, 200:420] = 1
    labels[1500:1800, 1200:1300] = 300
    return labels


def test_labels_round_trip_with_names_colours_and_scale(pyramid, tmp_path):
    image = read_image(pyramid[0])
    names, colors = {1: "tumour", 300: "stroma"}, {1: (255, 0, 0), 300: (0, 128, 255)}
    out = write_labels(_labels(), image, tmp_path / "out.zarr", names, label_colors=colors)
    back = read_image(out)
    assert back.metadata["format"] == "ome-zarr-labels"
    np.testing.assert_array_equal(np.asarray(back.array), _labels())
    assert back.metadata["label_names"] == names and back.metadata["label_colors"] == colors
    assert back.spacing == image.spacing and back.array.dtype == np.uint16
    levels = back.metadata["levels"]
    np.testing.assert_array_equal(np.asarray(levels[1]), _labels()[::2, ::2])
    np.testing.assert_array_equal(np.asarray(levels[-1]), _labels()[::4, ::4])  # 512^2 chunks: 3 levels


def _chunk_files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_ino for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".z")}


def test_saving_after_an_edit_writes_only_the_changed_chunks(pyramid, tmp_path):
    image = read_image(pyramid[0])
    out = tmp_path / "out.zarr"
    labels = _labels()
    first = write_zarr_labels(labels, image, out, {1: "a"}, chunk=TILE)
    stored = _chunk_files(out)
    assert first.chunks_written == len(stored) < 20  # empty chunks are not stored
    labels[800:900, 800:900] = 1  # one edit inside level-0 chunk (3, 3)
    second = write_zarr_labels(labels, image, out, {1: "a"}, chunk=TILE)
    after = _chunk_files(out)
    rewritten = {k for k in stored if after[k] != stored[k]} | (set(after) - set(stored))
    level0, level1, level2, level3 = (f"labels/segmentation/{i}/" for i in range(4))
    assert rewritten == {level0 + "3/3", level1 + "1/1", level2 + "0/0", level3 + "0/0"}, rewritten
    assert second.chunks_written == 4 and second.fraction < 0.05
    assert second.changed_chunks == {0: {(3, 3)}, 1: {(1, 1)}, 2: {(0, 0)}, 3: {(0, 0)}}
    same = write_zarr_labels(labels, image, out, {1: "a"}, chunk=TILE)
    assert same.chunks_written == 0 and _chunk_files(out) == after
    labels[800:900, 800:900] = 0  # erased again: the chunk is removed, not stored as zeros
    write_zarr_labels(labels, image, out, {1: "a"}, regions=[(slice(800, 900), slice(800, 900))], chunk=TILE)
    assert level0 + "3/3" not in _chunk_files(out)
    np.testing.assert_array_equal(np.asarray(read_zarr_labels(out).array), labels)


def test_labels_inside_the_image_zarr_are_read_by_ome_zarr_py(pyramid, tmp_path):
    import shutil

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    target = tmp_path / "slide.ome.zarr"
    shutil.copytree(pyramid[0], target)
    image = read_image(target)
    write_labels(_labels(), image, target, {1: "tumour", 300: "stroma"}, label_colors={1: (255, 0, 0)})
    assert read_image(target).metadata["labels"] == ["segmentation"]
    nodes = list(Reader(parse_url(str(target)))())
    labels = [node for node in nodes if any(isinstance(spec, Label) for spec in node.specs)]
    assert len(labels) == 1 and any(isinstance(spec, Multiscales) for spec in nodes[0].specs)
    node = labels[0]
    np.testing.assert_array_equal(np.asarray(node.data[0]), _labels())
    assert [d.shape for d in node.data] == [(2048, 2048), (1024, 1024), (512, 512)]
    assert node.metadata["color"][1] == [1.0, 0.0, 0.0, 1.0]
    assert node.metadata["properties"][300]["name"] == "stroma"
    scale = node.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == [0.5, 0.5]


def test_napari_reader_and_writer_contributions(pyramid, tmp_path):
    import shutil

    from napari_medseg._napari.reader import get_reader
    from napari_medseg._napari.writer import write_labels_layer

    target = tmp_path / "slide.ome.zarr"
    shutil.copytree(pyramid[0], target)
    image_layer = get_reader(str(target))(str(target))[0]
    attributes = {"name": "cells", "metadata": image_layer[1]["metadata"], "scale": image_layer[1]["scale"]}
    labels = _labels()
    assert write_labels_layer(str(target), labels, attributes) == [str(target)]
    layers = get_reader(str(target))(str(target))
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    data, kwargs, _ = layers[1]
    assert kwargs["name"] == "cells" and kwargs["multiscale"] and kwargs["scale"] == (0.0005, 0.0005)
    np.testing.assert_array_equal(np.asarray(data[0]), labels)


def test_medseg_segment_zarr_and_ome_tiff_write_ome_zarr_labels(pyramid, tmp_path, capsys):
    from napari_medseg.cli import main

    for source in pyramid:
        out = tmp_path / f"{source.name}.labels.zarr"
        assert main(["segment", str(source), "-o", str(out), "--box", "600,600,900,900"]) == 0, capsys.readouterr()
        labels = read_image(out)
        mask = np.asarray(labels.array)
        assert mask.shape == (SIZE, SIZE) and labels.spacing == (0.0005, 0.0005)
        assert mask[600:900, 600:900].any() and not mask[:550].any()


def test_every_chunk_goes_through_atomic_py_and_bad_targets_fail_before_the_model(pyramid, tmp_path, monkeypatch,
                                                                                  capsys):
    from napari_medseg import atomic
    from napari_medseg.cli import main
    from napari_medseg.io import omezarr

    written = []
    monkeypatch.setattr(omezarr, "atomic_write_bytes", lambda target, data: (written.append(target),
                                                                            atomic.atomic_write_bytes(target, data)))
    image = read_image(pyramid[0])
    report = write_zarr_labels(_labels(), image, tmp_path / "out.zarr", {1: "a"})
    stored = [p for p in (tmp_path / "out.zarr").rglob("*") if p.is_file()]
    assert set(written) == set(stored) and report.chunks_written == len(_chunk_files(tmp_path / "out.zarr"))
    (tmp_path / "plain.zarr").mkdir()
    (tmp_path / "plain.zarr" / "notes.txt").write_text("not zarr")
    monkeypatch.setattr("napari_medseg.models.load.load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["segment", str(pyramid[0]), "-o", str(tmp_path / "plain.zarr"), "--box", "1,1,9,9"]) == 2
    assert "is not an OME-Zarr" in capsys.readouterr().err
    import zarr

    small = zarr.open_group(str(tmp_path / "small.zarr"), mode="w", zarr_format=2)  # another image
    small.create_array("0", data=np.zeros((64, 64), np.uint8))
    small.attrs.update({"multiscales": [{"version": "0.4", "axes": ["y", "x"], "datasets": [{"path": "0"}]}]})
    assert main(["segment", str(pyramid[0]), "-o", str(tmp_path / "small.zarr"), "--box", "1,1,9,9"]) == 2
    assert "do not belong" in capsys.readouterr().err

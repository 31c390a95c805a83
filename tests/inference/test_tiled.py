"""Automatic 2-D models block by block over a lazily read OME-Zarr, labels written into OME-Zarr (issue 21)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_medseg.inference import auto2d  # noqa: E402
from napari_medseg.inference.tiled import predict_auto2d_to_zarr  # noqa: E402
from napari_medseg.io import read_image  # noqa: E402
from napari_medseg.io.omezarr import read_zarr_labels  # noqa: E402

from test_auto2d import nnunet_preprocessing, pixelwise_model  # noqa: E402


@pytest.fixture
def slide(tmp_path):
    import zarr

    rng = np.random.default_rng(3)
    rgb = rng.integers(1, 256, (3, 1300, 1100), dtype=np.uint8)  # c, y, x; not a multiple of the block
    root = zarr.open_group(str(tmp_path / "slide.zarr"), mode="w", zarr_format=2)
    root.create_array("0", data=rgb, chunks=(3, 256, 256))
    root.attrs.update({"multiscales": [{"version": "0.4", "axes": [
        {"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.5, 0.5]}]}]}]})
    return tmp_path / "slide.zarr", np.moveaxis(rgb, 0, -1)


def test_blocks_match_the_whole_image_and_no_block_is_larger_than_its_halo_allows(slide, tmp_path, monkeypatch):
    path, rgb = slide
    pre = nnunet_preprocessing(["R", "G", "B"], patch=(64, 64), spacing=(0.0005, 0.0005),
                               schemes=["RGBTo01Normalization"] * 3)
    loaded = pixelwise_model(3, pre)
    image = read_image(path)
    whole = auto2d.predict_auto2d(loaded, read_image(path).with_array(rgb, channel_axis=-1), mirroring=False)
    seen = []
    predict = auto2d.predict_auto2d

    def spy(model, part, **kwargs):
        seen.append(part.array.shape)
        assert isinstance(part.array, np.ndarray)
        return predict(model, part, **kwargs)

    monkeypatch.setattr(auto2d, "predict_auto2d", spy)
    out = tmp_path / "out.zarr"
    report = predict_auto2d_to_zarr(loaded, image, out, block=512, mirroring=False)
    assert len(seen) == 9 and max(s[0] for s in seen) <= 512 + 2 * 64 and max(s[1] for s in seen) <= 512 + 2 * 64
    labels = read_zarr_labels(out)
    np.testing.assert_array_equal(np.asarray(labels.array), whole)  # a 1x1 network: blocks change nothing
    assert labels.spacing == (0.0005, 0.0005) and labels.metadata["label_names"] == {1: "a", 2: "b"}
    assert report.chunks_written > 0

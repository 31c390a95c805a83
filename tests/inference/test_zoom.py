"""Box prompts that zoom: the policy, the crop's geometry and growth, lazy reading, and better masks of small
objects than the full-image recipe (real LiteMedSAM weights)."""
from types import SimpleNamespace

import numpy as np
import pytest

import zoom_set
from napari_medseg.errors import PromptError
from napari_medseg.inference import zoom


def test_policy_zooms_where_the_slice_would_be_shrunk_more_than_twice():
    assert not zoom.zoom_applies("auto", (512, 512), 256, (1, 1, 9, 9))  # a 512^2 CT for LiteMedSAM: 2x
    assert zoom.zoom_applies("auto", (400, 513), 256, (1, 1, 9, 9))
    assert not zoom.zoom_applies("auto", (2048, 2048), 1024, (1, 1, 9, 9))  # SAM
    assert zoom.zoom_applies("on", (64, 64), 256, (1, 1, 9, 9))
    assert not zoom.zoom_applies("off", (20000, 20000), 256, (1, 1, 9, 9))
    assert not zoom.zoom_applies("on", (2048, 2048), 256, None)  # points alone: no size to zoom to
    with pytest.raises(PromptError, match="zoom must be one of auto, on, off"):
        zoom.check_zoom("yes")
    from napari_medseg.segmentation import segment

    with pytest.raises(PromptError, match="zoom must be one of"):  # before any model loads
        segment(np.zeros((8, 8), np.float32), "no-such-model", box=(1, 1, 5, 5), zoom=True)


def test_the_crop_is_square_around_the_box_and_at_least_the_model_input():
    w = zoom.context_window((10_000, 5_000, 10_020, 5_030), (20_000, 20_000), 256)
    assert w.shape == (256, 256) and w.top <= 5_000 and w.bottom >= 5_030 and w.left <= 10_000 <= 10_020 <= w.right
    w = zoom.context_window((10_000, 5_000, 10_200, 5_100), (20_000, 20_000), 256)
    assert w.shape == (600, 600)  # 3x the longer side
    assert zoom.context_window((10_000, 5_000, 10_200, 5_100), (20_000, 20_000), 256, growth=2).shape == (1350, 1350)
    w = zoom.context_window((2, 3, 30, 40), (300, 20_000), 256)  # at the image's corner, shorter than the input
    assert (w.top, w.left) == (0, 0) and w.shape == (256, 256)
    w = zoom.context_window((0, 0, 10, 10), (100, 900), 256)
    assert w.shape == (100, 256)
    w = zoom.context_window((100, 100, 200, 200), (2000, 2000), 256, scale=(5.0, 1.0))  # 5x taller pixels
    assert w.shape == (300, 1500)  # square in the plane as the model sees it
    big = zoom.context_window((0, 0, 5_000, 5_000), (20_000, 20_000), 256)
    step = zoom.read_step(big, 256)
    assert step == 29 and all(s % step == 0 for s in zoom.fit_to_step(big, step, (0, 0, 5_000, 5_000)).shape)


class Disc:
    """Stands in for BoxPredictor: the mask is the bright pixels of whatever it was given."""

    profile = SimpleNamespace(size=256)

    def __init__(self):
        self.shapes, self.keys = [], []

    def set_image(self, pixels, key=None, display_range=None):
        self.pixels = pixels
        self.shapes.append(pixels.shape[:2])
        self.keys.append(key)

    def predict(self, box=None, points=None, point_labels=None):
        return self.pixels > 128


@pytest.mark.parametrize("radius, crops", [(20, [(256, 256)]), (200, [(256, 256), (384, 384), (576, 576)])])
def test_the_crop_grows_while_the_mask_touches_its_inner_edges(radius, crops):
    rows, cols = np.mgrid[:3000, :3000]
    image = (np.hypot(rows - 1500, cols - 1500) < radius).astype(np.uint8) * 255
    predictor = Disc()
    mask = zoom.predict_box(predictor, image, (1490, 1490, 1510, 1510))  # a small box inside the object
    assert predictor.shapes == crops
    assert (mask == (image > 128)).all()  # the whole object, at full resolution, in place
    assert all(key[0] == "zoom" for key in predictor.keys)


def test_growth_is_bounded_and_stops_at_the_image_border():
    image = np.full((3000, 3000), 255, np.uint8)  # "object" everywhere
    predictor = Disc()
    zoom.predict_box(predictor, image, (1490, 1490, 1510, 1510))
    assert len(predictor.shapes) == 1 + zoom.MAX_GROWTH_STEPS
    predictor = Disc()
    zoom.predict_box(predictor, image[:700, :700], (340, 340, 360, 360), zoom="on")
    assert predictor.shapes == [(256, 256), (384, 384), (576, 576), (700, 700)] and predictor.keys[-1] is None


@pytest.fixture(scope="module")
def lite_predictor():
    from napari_medseg.inference.box2d import BoxPredictor
    from napari_medseg.models import load_checkpoint
    from napari_medseg.models.sam_family import bundled_lite_medsam_path

    return BoxPredictor(load_checkpoint(bundled_lite_medsam_path()), device="cpu")


def test_segment_reads_only_a_crop_of_a_lazy_image(lite_predictor, monkeypatch):
    """A 6,000 x 6,000 RGB array-like (made where sliced, counted): segment() with a box around one nucleus
    reads one 256 px crop and puts the nucleus's mask in place."""
    from napari_medseg.inference import box2d
    from napari_medseg.segmentation import segment

    tile, nuclei = zoom_set.paste_nuclei(zoom_set.tissue(1), 4, radius=(12, 16), seed=3)
    big = zoom_set.MirroredTissue(tile, 6000, 6000)
    monkeypatch.setattr(box2d, "BoxPredictor", lambda *args, **kwargs: lite_predictor)
    nucleus = nuclei[0]
    box = big.at(nucleus.box, 2, 3)
    labels = segment(big, lite_predictor.loaded, box=box)
    assert big.read <= 2 * 256 * 256  # the first crop (and its display window's look at it), not 36 M pixels
    truth = np.zeros(labels.shape, bool)
    truth[nucleus.rows.start + 2048:nucleus.rows.stop + 2048, nucleus.cols.start + 3072:nucleus.cols.stop + 3072] = \
        nucleus.mask
    assert zoom_set.dice(labels == 1, truth) > 0.9


def test_zoomed_boxes_beat_the_full_image_recipe_on_small_objects(lite_predictor):
    """Four nuclei of 0.02-0.06 % of a 1,024^2 tissue image (shrunk 4x by the full recipe)."""
    image, nuclei = zoom_set.paste_nuclei(zoom_set.tissue(2), 4, radius=(10, 22), seed=5)
    hw = image.shape[:2]
    assert all(n.mask.sum() < 0.01 * image.shape[0] * image.shape[1] for n in nuclei)
    lite_predictor.cache.clear()
    lite_predictor.set_image(image)
    full = [zoom_set.dice(lite_predictor.predict(box=n.box), n.full(hw)) for n in nuclei]
    zoomed = [zoom_set.dice(zoom.predict_box(lite_predictor, image, n.box, "auto"), n.full(hw)) for n in nuclei]
    assert all(z > f for z, f in zip(zoomed, full)) and np.mean(zoomed) > np.mean(full) + 0.05, (full, zoomed)
    crops = [key[4] for key in lite_predictor.cache._items if key[4] is not None]  # (hash, ..., key, precision)
    assert len(crops) == 4 and all(key[0] == "zoom" and key[3] - key[1] == 256 for key in crops)


@pytest.mark.parametrize("family", ["sam", "medsam", "lvm_med_vit"])
def test_every_box_family_gets_the_crop_and_its_mask_back_in_place(family):
    """Toy SAM-family networks (256 px input): a box near the border of a 200 x 900 photo gives a 200 x 256
    crop (not square: MedSAM and LVM-Med squash it as they squash whole images); the zoomed mask is the
    crop's own prediction, placed at the crop's offset."""
    from skimage import data
    from test_precision_policy import vit_families

    from napari_medseg.inference.box2d import BoxPredictor
    from napari_medseg.io.image import Image

    photo = np.ascontiguousarray(np.tile(data.immunohistochemistry(), (1, 2, 1))[100:300, :900])
    image = Image(photo, (1.0, 1.0), (0.0, 0.0), np.eye(2), intensity="rgb", channel_axis=-1)
    predictor = BoxPredictor(vit_families()[family](), device="cpu")
    box = (700, 60, 760, 120)
    region = zoom.predict_on_plane(predictor, image, None, None, None, box, zoom="on")
    w = region.window  # random weights: the mask may reach the crop's edges and grow it
    assert (w.top, w.bottom) == (0, 200) and w.right - w.left in (256, 384, 576, 864)
    assert predictor.embedding.image_hw == w.shape and w.shape[0] != w.shape[1]
    predictor.set_image(photo[:, w.cols])
    assert (region.mask == predictor.predict(box=(700 - w.left, 60, 760 - w.left, 120))).all()
    assert region.full(photo.shape[:2])[:, :w.left].sum() == 0


def test_large_crops_are_read_in_block_averages_and_the_mask_comes_back_at_full_size():
    from napari_medseg.io.image import Image

    rows, cols = np.mgrid[:4000, :4000]
    grey = (np.hypot(rows - 2000, cols - 1800) < 300).astype(np.float32) * 1000  # a 600 px object
    predictor = Disc()
    region = zoom.predict_on_plane(predictor, Image(grey, (1.0, 1.0), (0.0, 0.0), np.eye(2)), None, None, (0, 1000),
                                   (1500, 1700, 2100, 2300))
    assert region.window.shape == (1800, 1800) and predictor.shapes == [(600, 600)]  # 3x3 blocks of 1800 px
    truth = grey[region.window.rows, region.window.cols] > 500
    assert zoom_set.dice(region.mask, truth) > 0.98


def test_a_volume_slice_zooms_and_the_predictor_door_does_too(monkeypatch):
    """segment() on a 1,200 px CT-like volume: the prompted slice is read as a crop, the mask lands on it."""
    from napari_medseg.inference import box2d
    from napari_medseg.inference.box2d import BoxPredictor
    from napari_medseg.models.loaded import LoadedModel
    from napari_medseg.segmentation import segment

    volume = np.zeros((5, 1200, 1200), np.float32)
    volume[1:4, 500:540, 300:330] = 1000
    predictor = Disc()
    monkeypatch.setattr(box2d, "BoxPredictor", lambda *args, **kwargs: predictor)
    labels = segment(volume, LoadedModel(None, "sam", "box2d"), box=(295, 495, 335, 545, 2), window=(0, 1000))
    assert predictor.shapes == [(256, 256)] and predictor.keys[0][0] == "zoom"
    assert (labels[2] == (volume[2] > 500)).all() and not labels[[0, 1, 3, 4]].any()
    predictor.set_image(volume[2])
    whole = predictor.pixels
    assert (BoxPredictor.segment_box(predictor, whole, (295, 495, 335, 545), "on") == (volume[2] > 500)).all()
    assert predictor.shapes[-1] == (256, 256)

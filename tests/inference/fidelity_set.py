"""Real-image boxes and the official LiteMedSAM recipe, for the precision policy's fidelity bound (issue 16).

The boxes lie on pydicom's bundled CT and MR slices, two axial slices of nilearn's MNI152 T1 template
(ventricles, whole brain, cortical grey matter, grey/white boundaries, deep grey nuclei: the ambiguous
boxes where reduced precision flips regions) and scikit-image's retina (optic disc) and IHC images.
Every image is turned into the uint8 RGB slice the recipe takes as input here, so the predictor under
test and the recipe see the same pixels.

``recipe_mask`` follows bowang-lab/MedSAM (branch LiteMedSAM) CVPR24_LiteMedSAM_infer.py step by step,
independently of napari_medseg's box2d: OpenCV INTER_AREA resize of the longest side to 256
(``int(x + 0.5)`` sizes), min-max scaling of the resized image to [0, 1], zero padding to 256 x 256
below and right, the image encoder in float32, the box scaled by ``int(v * 256 / max(H, W))``, prompt
encoder and mask decoder with ``multimask_output=False``, the low-resolution logits cropped to the resized
extent, bilinearly resized (align_corners=False) to the slice, sigmoid > 0.5.
"""
from __future__ import annotations

import os
import sys

import numpy as np

# Where nilearn or scikit-image is absent (the GPU machine), the slices come from an npz written here
# by ``python fidelity_set.py OUT.npz``: one uint8 RGB array per image name.
EXPORTED = os.environ.get("MEDSEG_FIDELITY_IMAGES")


def _dicom(name: str, window: tuple[float, float]) -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(name))
    values = ds.pixel_array * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    return _grey_to_rgb(values, window)


def _mni_axial(z: int) -> np.ndarray:
    """Axial slice ``z`` of the 1 mm MNI152 T1 template, anterior at the top (233 x 197)."""
    from nilearn.datasets import load_mni152_template

    volume = np.asarray(load_mni152_template(resolution=1).get_fdata())
    return _grey_to_rgb(np.rot90(volume[:, :, z]), (0.0, float(volume.max())))


def _grey_to_rgb(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    grey = np.rint(np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _retina() -> np.ndarray:
    from skimage import data

    return data.retina()


def _ihc() -> np.ndarray:
    from skimage import data

    return data.immunohistochemistry()


# image name -> (loader, {box name: (x0, y0, x1, y1) in the slice's pixels})
IMAGES = {
    "ct_small": (lambda: _dicom("CT_small.dcm", (-160, 240)), {
        "spinal_canal": (45, 38, 71, 61), "vertebral_body": (41, 6, 80, 48), "aorta": (72, 0, 111, 27),
        "right_lung": (0, 0, 38, 60)}),
    "mr_small": (lambda: _dicom("MR_small.dcm", (0, 2200)), {
        "round_structure": (38, 31, 57, 50), "elongated_structure": (36, 45, 56, 57)}),
    "mni152_z90": (lambda: _mni_axial(90), {
        "both_lateral_ventricles": (72, 77, 127, 147), "left_lateral_ventricle": (72, 78, 100, 147),
        "whole_brain": (28, 28, 168, 203), "frontal_grey_matter": (83, 50, 110, 77),
        "lateral_grey_white_boundary": (30, 93, 63, 120), "caudate_head": (78, 80, 92, 107),
        "occipital_grey_matter": (80, 140, 117, 173)}),
    "mni152_z100": (lambda: _mni_axial(100), {
        "slit_ventricle": (78, 97, 87, 123), "insular_grey_white_boundary": (35, 70, 70, 100)}),
    "retina": (_retina, {"optic_disc": (200, 560, 345, 725)}),
    "ihc": (_ihc, {"gland": (250, 330, 390, 505), "stained_nuclei_cluster": (20, 20, 200, 200)}),
}


if EXPORTED:
    with np.load(EXPORTED) as _slices:
        IMAGES = {name: ((lambda rgb=_slices[name]: rgb), named) for name, (_, named) in IMAGES.items()}


def boxes() -> list[tuple[str, str, tuple]]:
    """(image name, box name, box) of every box in the set."""
    return [(image, name, box) for image, (_, named) in IMAGES.items() for name, box in named.items()]


def recipe_embedding(network, rgb: np.ndarray):
    """The official script's image embedding of a uint8 (H, W, 3) slice, and the resized (h, w)."""
    import cv2
    import torch

    h, w = rgb.shape[:2]
    scale = 256 / max(h, w)
    resized = cv2.resize(rgb, (int(w * scale + 0.5), int(h * scale + 0.5)), interpolation=cv2.INTER_AREA)
    scaled = (resized - resized.min()) / np.clip(resized.max() - resized.min(), a_min=1e-8, a_max=None)
    padded = np.pad(scaled, ((0, 256 - scaled.shape[0]), (0, 256 - scaled.shape[1]), (0, 0)))
    with torch.no_grad():
        features = network.image_encoder(torch.tensor(padded).float().permute(2, 0, 1).unsqueeze(0))
    return features, resized.shape[:2]


def recipe_mask(network, embedding, resized_hw, image_hw, box) -> np.ndarray:
    """The official script's boolean mask of ``box`` (x0, y0, x1, y1) from a ``recipe_embedding``."""
    import torch
    import torch.nn.functional as F

    ratio = 256 / max(image_hw)
    box_256 = np.array([int(v * ratio) for v in box], dtype=np.float64)
    with torch.no_grad():
        boxes = torch.as_tensor(box_256[None, None, ...], dtype=torch.float)
        sparse, dense = network.prompt_encoder(points=None, boxes=boxes, masks=None)
        logits, _ = network.mask_decoder(image_embeddings=embedding, image_pe=network.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=False)
        logits = logits[..., : resized_hw[0], : resized_hw[1]]
        logits = F.interpolate(logits, size=tuple(image_hw), mode="bilinear", align_corners=False)
    return (torch.sigmoid(logits).squeeze().numpy() > 0.5)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def fidelity(predictor, network) -> list[tuple[str, str, float]]:
    """(image, box, IoU of ``predictor``'s mask with the recipe's) for every box of the set."""
    results = []
    for image_name, (load, named) in IMAGES.items():
        rgb = load()
        reference, resized_hw = recipe_embedding(network, rgb)
        predictor.set_image(rgb)
        for box_name, box in named.items():
            expected = recipe_mask(network, reference, resized_hw, rgb.shape[:2], box)
            results.append((image_name, box_name, iou(predictor.predict(box=box), expected)))
    return results


if __name__ == "__main__":
    np.savez_compressed(sys.argv[1], **{name: load() for name, (load, _) in IMAGES.items()})

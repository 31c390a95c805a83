"""nnU-Net parity: ``predict_auto2d`` against nnunetv2's own ``nnUNetPredictor`` on the same checkpoints
and images, CT and MR normalisation, mirroring on and off, isotropic volumes and volumes whose thick axis
lies across or in the 2-D plane, with the plans' default and torch resampling functions.

nnU-Net runs in its own environment (``scripts/peer_nnunet.sh``: its dynamic-network-architectures pins
timm below this package's), as a separate process that exchanges only .npy and checkpoint files
(``nnunet_peer.py``). The network is ``tiny_net.TinyNet`` with seeded random weights, named by the plans'
``architecture`` so that nnU-Net builds it from the model folder as it builds any network; this package
loads the same checkpoint file. Labels must agree on >= 99.9 % of the voxels nnU-Net is confident about
(top-2 probability margin > 0.01).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

PEERS = Path(__file__).resolve().parent
REPO = PEERS.parents[1]
sys.path.insert(0, str(PEERS))
from tiny_net import TinyNet  # noqa: E402

pytestmark = pytest.mark.peer

CLASSES = {"background": 0, "a": 1, "b": 2, "c": 3}
# image spacing (x, y, z), volume shape (z, y, x), the plans' 2-D spacing (y, x)
GEOMETRIES = {
    "isotropic": ((1.0, 1.0, 1.0), (6, 40, 36), [0.8, 0.8]),
    "thick-across-plane": ((1.0, 1.0, 4.0), (6, 40, 36), [0.8, 0.8]),  # z, the slicing axis, is 4 mm
    "thick-in-plane": ((4.0, 1.0, 1.0), (6, 40, 12), [1.0, 1.0]),  # x, in the 2-D plane, is 4 mm
}
MODELS = [(norm, geometry, "resample_data_or_seg_to_shape") for norm in ("CT", "MR") for geometry in GEOMETRIES]
MODELS += [("MR", "thick-in-plane", "resample_torch_fornnunet"), ("CT", "isotropic", "resample_torch_fornnunet")]
CASES = [(*model, mirroring) for model in MODELS for mirroring in (True, False)]
BORDER = 2  # zero voxels around the image in y and x: nnU-Net crops them


def case_id(case) -> str:
    norm, geometry, function, mirroring = case
    torch_fn = "-torch" if function == "resample_torch_fornnunet" else ""
    return f"{norm}-{geometry}{torch_fn}-{'mirroring' if mirroring else 'no-mirroring'}"


def peer_python() -> Path:
    path = Path(os.environ.get("MEDSEG_PEER_NNUNET") or REPO / ".peer-nnunet" / "bin" / "python")
    if not path.exists():
        message = f"no nnU-Net peer environment at {path}: run scripts/peer_nnunet.sh"
        if os.environ.get("MEDSEG_REQUIRE_PEERS"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def plans_for(norm: str, geometry: str, function: str) -> dict:
    _, shape, spacing = GEOMETRIES[geometry]
    kwargs = {
        "resample_data_or_seg_to_shape": lambda order: {"is_seg": False, "order": order, "order_z": 0,
                                                        "force_separate_z": None},
        "resample_torch_fornnunet": lambda order: {"is_seg": False},
    }[function]
    configuration = {
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [32, 32], "median_image_size_in_voxels": list(shape[1:]), "spacing": spacing,
        "normalization_schemes": ["CTNormalization" if norm == "CT" else "ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": function, "resampling_fn_data_kwargs": kwargs(3),
        "resampling_fn_seg": function, "resampling_fn_seg_kwargs": {**kwargs(1), "is_seg": True},
        "resampling_fn_probabilities": function, "resampling_fn_probabilities_kwargs": kwargs(1),
        "architecture": {"network_class_name": "tiny_net.TinyNet", "arch_kwargs": {"width": 8},
                         "_kw_requires_import": []},
        "batch_dice": True,
    }
    return {
        "dataset_name": "Dataset999_Parity", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
        "original_median_spacing_after_transp": list(GEOMETRIES[geometry][0][::-1]),
        "original_median_shape_after_transp": list(shape),
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"2d": configuration}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1200.0, "mean": 120.0, "median": 100.0, "min": -300.0, "percentile_00_5": -150.0,
            "percentile_99_5": 500.0, "std": 180.0}},
    }


def phantom(norm: str, geometry: str, seed: int) -> np.ndarray:
    """(z, y, x) float32: ellipsoids with sharp edges (cubic overshoot), a smooth field and noise, in mm."""
    from scipy.ndimage import gaussian_filter

    spacing, shape, _ = GEOMETRIES[geometry]
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing[::-1])], indexing="ij")
    extent = [n * s for n, s in zip(shape, spacing[::-1])]
    levels = (-100.0, [40.0, 150.0, 900.0, 300.0]) if norm == "CT" else (100.0, [300.0, 550.0, 800.0, 450.0])
    image = np.full(shape, levels[0])
    for level in levels[1] * 2:
        centre = [rng.uniform(0.2, 0.8) * e for e in extent]
        radii = [rng.uniform(4, 12), rng.uniform(5, 12), rng.uniform(5, 12)]
        distance = sum(((axis - c) / r) ** 2 for axis, c, r in zip((z, y, x), centre, radii))
        image[distance < 1] = level
    image += 60 * gaussian_filter(rng.normal(size=shape), 1.5) + rng.normal(0, 15, size=shape)
    if norm == "MR":
        image = np.maximum(image, 1.0)
    image[:, :BORDER] = image[:, -BORDER:] = image[:, :, :BORDER] = image[:, :, -BORDER:] = 0
    return image.astype(np.float32)


def write_model(folder: Path, norm: str, geometry: str, function: str, seed: int) -> None:
    from napari_medseg.models.nnunet_checkpoint import save_nnunet_checkpoint

    torch.manual_seed(seed)
    network = TinyNet(1, len(CLASSES), width=8)
    with torch.no_grad():
        network.body[-1].weight.mul_(4.0)  # confident outputs: logits of a few units
    plans = plans_for(norm, geometry, function)
    dataset = {"channel_names": {"0": norm}, "labels": CLASSES, "numTraining": 1, "file_ending": ".nii.gz"}
    (folder / "fold_all").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    save_nnunet_checkpoint(folder / "fold_all" / "checkpoint_final.pth", network.state_dict(),
                           trainer_name="nnUNetTrainer", plans=plans, configuration="2d", dataset_json=dataset,
                           mirror_axes=(0, 1))


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    """Every case predicted by nnU-Net in one peer process: case -> (image, model folder, labels, probabilities)."""
    python = peer_python()
    root = tmp_path_factory.mktemp("nnunet_parity")
    manifest, paths = [], {}
    for n, (norm, geometry, function) in enumerate(MODELS):
        model = root / f"model{n}"
        write_model(model, norm, geometry, function, seed=n)
        image = phantom(norm, geometry, seed=100 + n)
        np.save(root / f"image{n}.npy", image[None])
        for mirroring in (True, False):
            case = (norm, geometry, function, mirroring)
            out = root / case_id(case)
            manifest.append({"model": str(model), "image": str(root / f"image{n}.npy"), "mirroring": mirroring,
                             "spacing": list(GEOMETRIES[geometry][0][::-1]),
                             "labels": f"{out}-labels.npy", "probabilities": f"{out}-probabilities.npy"})
            paths[case] = (image, model, manifest[-1]["labels"], manifest[-1]["probabilities"])
    (root / "manifest.json").write_text(json.dumps(manifest))
    env = {**os.environ, "nnUNet_raw": str(root), "nnUNet_preprocessed": str(root), "nnUNet_results": str(root)}
    run = subprocess.run([str(python), str(PEERS / "nnunet_peer.py"), str(root / "manifest.json")],
                         capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, f"nnU-Net's predictor failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return {case: (image, model, np.load(labels), np.load(probabilities))
            for case, (image, model, labels, probabilities) in paths.items()}


def our_labels(image: np.ndarray, model: Path, geometry: str, mirroring: bool) -> np.ndarray:
    from napari_medseg.inference.auto2d import predict_auto2d
    from napari_medseg.io.image import Image
    from napari_medseg.models.checkpoint import read_checkpoint
    from napari_medseg.models.loaded import LoadedModel
    from napari_medseg.models.nnunet_checkpoint import parse_nnunet_checkpoint

    checkpoint = parse_nnunet_checkpoint(read_checkpoint(model / "fold_all" / "checkpoint_final.pth"))
    network = TinyNet(1, checkpoint.labels.heads, **checkpoint.configuration["architecture"]["arch_kwargs"])
    network.load_state_dict(checkpoint.network_weights)
    loaded = LoadedModel(network.eval(), "tiny_net", "auto2d", checkpoint.labels.classes, checkpoint.preprocessing())
    volume = Image(image, GEOMETRIES[geometry][0], (0.0, 0.0, 0.0), np.eye(3))
    return predict_auto2d(loaded, volume, device="cpu", mirroring=None if mirroring else False)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_labels_agree_with_nnunet_predictor(nnunet, case):
    image, model, theirs, probabilities = nnunet[case]
    ours = our_labels(image, model, case[1], case[3])
    assert ours.shape == theirs.shape == image.shape
    top2 = np.sort(probabilities, axis=0)[-2:]
    confident = top2[1] - top2[0] > 0.01
    confident[:, :BORDER] = confident[:, -BORDER:] = confident[:, :, :BORDER] = confident[:, :, -BORDER:] = False
    inner = image[:, BORDER:-BORDER, BORDER:-BORDER].size
    assert confident.sum() > 0.5 * inner and len(np.unique(theirs[confident])) >= 2  # a case worth comparing
    agreement = float((ours[confident] == theirs[confident]).mean())
    print(f"{case_id(case)}: {agreement:.5%} of {int(confident.sum())} confident voxels "
          f"({confident.sum() / inner:.1%} of the image)")
    assert agreement >= 0.999

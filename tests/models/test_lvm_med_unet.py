"""LVM-Med ResNet-50 U-Net: fine-tuned checkpoints, the bare backbone and LVM-Med's input pipeline."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torchvision

from napari_medseg.errors import CheckpointError
from napari_medseg.models import load_checkpoint
from napari_medseg.models import lvm_med_unet as lmu

SHARED = Path(__file__).resolve().parents[3] / "shared"
CASE = SHARED / "conformance" / "lvm_med_resnet50_unet"


def reference_shapes(name: str) -> dict[str, tuple]:
    rows = [line.split("\t") for line in (SHARED / "reference" / "keys" / f"{name}.txt").read_text().splitlines()
            if line and line[0] != "#"]
    return {key: tuple(int(n) for n in shape.strip("()").split(",") if n.strip()) for key, shape, *_ in rows}


@pytest.mark.skipif(not CASE.is_dir(), reason="conformance cases absent")
def test_conformance_case_matches_lvm_med_reference():
    spec = importlib.util.spec_from_file_location("conformance_check", CASE.parent / "check.py")
    check = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(CASE.parent))
    try:
        spec.loader.exec_module(check)
        assert check.check_case(CASE)
    finally:
        sys.path.remove(str(CASE.parent))


@pytest.mark.skipif(not (SHARED / "reference").is_dir(), reason="reference keys absent")
@pytest.mark.parametrize("name,in_channels,classes", [("lvmmed_unet_r50_unet2d_rgb", 3, 2),
                                                      ("lvmmed_unet_r50_unet3d_slicewise_gray", 1, 8)])
def test_installed_smp_builds_lvm_med_layout(name, in_channels, classes):
    state = smp.Unet("resnet50", encoder_weights=None, in_channels=in_channels, classes=classes).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == reference_shapes(name)


def test_finetuned_slicewise_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = smp.Unet("resnet50", encoder_weights=None, in_channels=1, classes=8).eval()
    path = tmp_path / "checkpoint_las_ct_lvm-med-resnet_best_0.pth"
    torch.save(net.state_dict(), path)
    loaded = load_checkpoint(path)
    assert loaded.family == "lvm_med_unet" and loaded.task == "auto2d"
    assert len(loaded.classes) == 8 and loaded.classes[0] == "background"
    assert loaded.preprocessing["in_channels"] == 1 and loaded.preprocessing["channel_order"] == "grey"
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded.network(x), net(x))
    with pytest.raises(CheckpointError, match="input channels"):
        load_checkpoint(path, family="lvm_med_unet", in_channels=3)
    with pytest.raises(CheckpointError, match="class names"):
        load_checkpoint(path, family="lvm_med_unet", classes={0: "background", 1: "heart"})


def test_backbone_gets_untrained_decoder(tmp_path):
    torch.manual_seed(1)
    backbone = torchvision.models.resnet50().state_dict()  # lvmmed_resnet.torch layout (fc included)
    path = tmp_path / "lvmmed_resnet.torch"
    torch.save(backbone, path)
    assert lmu.sniff(backbone) == "lvm_med_unet"
    names = {0: "background", 1: "lesion", 2: "organ"}
    loaded = load_checkpoint(path, family="lvm_med_unet", classes=names, in_channels=1)
    assert loaded.info["untrained_decoder"] and loaded.classes == names
    encoder = loaded.network.encoder.state_dict()
    assert torch.equal(encoder["layer4.2.conv3.weight"], backbone["layer4.2.conv3.weight"])
    # smp adapts the RGB stem to one channel by summing it, as when LVM-Med trained its grey models
    assert torch.allclose(encoder["conv1.weight"], backbone["conv1.weight"].sum(1, keepdim=True))
    with torch.inference_mode():
        assert loaded.network(torch.rand(2, 1, 64, 64)).shape == (2, 3, 64, 64)
    again = load_checkpoint(path, family="lvm_med_unet", classes=3, in_channels=1)
    assert torch.equal(again.network.segmentation_head[0].weight, loaded.network.segmentation_head[0].weight)


def test_sniff_is_precise():
    assert lmu.sniff(torchvision.models.resnet101().state_dict()) is None
    assert lmu.sniff(smp.Unet("resnet34", encoder_weights=None).state_dict()) is None
    assert lmu.sniff({"image_encoder.patch_embed.proj.weight": torch.zeros(1)}) is None


def test_prepare_input_follows_lvm_med_pipeline():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[:, 3:, 2] = 100  # blue on the right half
    x = lmu.prepare_input(rgb, in_channels=3, image_size=8)
    assert x.shape == (3, 8, 8) and x.dtype == np.float32
    # BGR order; (v - min) * 255 / (0.01 + max - min), truncated; nearest resize keeps the halves
    assert x[2].max() == int(200 * 255 / 200.01) and x[0, 0, 0] == 0 and x[0, 0, -1] == int(100 * 255 / 200.01)
    grey = lmu.prepare_input(rgb, in_channels=1, image_size=8)
    luma = np.rint(np.array([200, 0, 100]) @ [0.299, 0.587, 0.114])  # cv2.imread(path, 0)
    assert grey.shape == (1, 8, 8) and grey[0, 0, -1] == int((luma - 60) * 255 / (0.01 + luma - 60))
    ct = np.linspace(-1000, 1000, 64, dtype=np.float32).reshape(8, 8)
    windowed = lmu.prepare_input(ct, in_channels=3, image_size=8, display_range=(-160, 240))
    assert np.array_equal(windowed[0], windowed[2]) and windowed.min() == 0 and windowed.max() == 254

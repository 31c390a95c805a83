"""Cases, validation split, sampling helpers and losses."""
import numpy as np
import pytest
import torch

from napari_medseg.errors import MedsegError
from napari_medseg.training.datasets import (
    Case, box_of, cases_from_folders, class_names, jittered_box, object_samples, random_crop, split_cases,
)
from napari_medseg.training.losses import (
    BinaryDiceCELoss, DeepSupervisionLoss, DiceCELoss, deep_supervision_weights,
)
from napari_medseg.training.store import write_image_copy


def test_split_holds_out_whole_cases_or_a_guarded_slice_block(make_volume):
    cases = [Case(f"c{i}", *make_volume(seed=i)) for i in range(5)]
    train, val = split_cases(cases, 0.2, seed=1)
    assert len(val) == 1 and len(train) == 4 and not {c.name for c in val} & {c.name for c in train}

    image, labels = make_volume((30, 20, 24))
    labels[:] = 0
    labels[5:25, 4:10, 5:12] = 1
    (train,), (val,) = split_cases([Case("one", image, labels, {"all": False, "slices": list(range(30))})], 0.2, seed=0)
    held, kept = val.reviewed["slices"], train.reviewed["slices"]
    assert len(held) == 4 and held == list(range(held[0], held[0] + 4))
    assert all(abs(k - h) > 2 for k in kept for h in held)  # a guard of 2 slices on either side

    with pytest.raises(MedsegError, match="at least 3 slices"):
        split_cases([Case("thin", image, labels * 0, {"all": True})])


def test_object_samples_and_jittered_boxes(make_volume):
    image, labels = make_volume()
    case = Case("c", image, labels, {"all": False, "slices": [0, 2, 3]})
    assert object_samples([case], min_pixels=10) == [(0, 2, 1), (0, 2, 2), (0, 3, 1), (0, 3, 2)]
    mask = labels[2] == 1
    np.testing.assert_array_equal(box_of(mask), [5, 4, 12, 10])
    rng = np.random.default_rng(0)
    boxes = np.array([jittered_box(mask, rng, 0.2) for _ in range(200)])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 24).all() and (boxes[:, 3] <= 20).all()
    assert np.abs(boxes - [5, 4, 12, 10]).max() <= 2.0 + 1e-9 and boxes.std(0).min() > 0.3


def test_random_crop_pads_and_oversamples_foreground():
    labels = np.zeros((40, 50), np.uint8)
    labels[30:34, 40:44] = 1
    image = np.arange(40 * 50, dtype=np.float32).reshape(40, 50, 1)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(50):
        patch, crop_labels = random_crop([image], labels, (16, 64), rng, foreground=1.0)
        assert patch.shape == (16, 64, 1) and crop_labels.shape == (16, 64)
        hits += crop_labels.any()
    assert hits == 50


def test_matched_file_names(tmp_path, make_volume):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(2):
        image, labels = make_volume(seed=i)
        write_image_copy(image, tmp_path / "images" / f"case{i}_0000.nii.gz")
        write_image_copy(image.with_array(labels), tmp_path / "labels" / f"case{i}.nii.gz")
    cases = cases_from_folders(tmp_path / "images", tmp_path / "labels")
    assert [c.name for c in cases] == ["case0", "case1"]
    assert class_names(cases) == {0: "background", 1: "class 1", 2: "class 2"}
    with pytest.raises(MedsegError, match="not an nnU-Net raw dataset"):
        cases_from_folders(tmp_path / "images")


def test_dice_ce_losses_reward_the_truth_and_ignore_invalid_voxels():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    perfect = torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float() * 20 - 10
    wrong = -perfect
    loss = DiceCELoss()
    assert loss(perfect, target) < 0.01 < 1.5 < loss(wrong, target)
    valid = torch.zeros(2, 8, 8)
    valid[:, :4] = 1
    half_wrong = perfect.clone()
    half_wrong[:, :, 4:] = wrong[:, :, 4:]  # wrong only where labels are unknown
    assert loss(half_wrong, target, valid) < 0.01

    binary = BinaryDiceCELoss()
    mask = (target == 1).float()[:, None]
    assert binary(mask * 20 - 10, mask) < 0.01 < 1.0 < binary(10 - mask * 20, mask)


def test_deep_supervision_weights_and_downsampled_targets():
    assert deep_supervision_weights(4) == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[:, 4:12, 4:12] = 1
    outputs = [torch.nn.functional.one_hot(torch.nn.functional.interpolate(target[:, None].float(), size=s)[:, 0].long(), 2)
               .movedim(-1, 1).float() * 20 - 10 for s in (16, 8, 4, 2)]
    outputs = [o.requires_grad_() for o in outputs]
    loss = DeepSupervisionLoss(DiceCELoss())(outputs, target)
    assert loss < 0.01
    loss.backward()
    assert all(o.grad is not None for o in outputs)  # the weight-0 head stays in the graph


def test_negative_training_labels_are_refused(tmp_path, make_volume):
    """-1 became class 255 (an unsigned copy of the labels)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    image, labels = make_volume()
    labels = labels.astype(np.int16)
    labels[0, 0, 0] = -1
    write_image_copy(image, tmp_path / "images" / "case0.nii.gz")
    write_image_copy(image.with_array(labels), tmp_path / "labels" / "case0.nii.gz")
    with pytest.raises(MedsegError, match="case0.nii.gz: label value -1 is negative"):
        cases_from_folders(tmp_path / "images", tmp_path / "labels")

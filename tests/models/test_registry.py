"""Registry cards, the weights manager and the safety of checkpoint loading."""
import pickle
import shutil

import pytest
import torch

from napari_medseg.errors import CheckpointError, WeightsNotInstalled
from napari_medseg.models import FAMILY_MODULES, load_checkpoint
from napari_medseg.models import weights as wm
from napari_medseg.models.checkpoint import read_checkpoint, sha256_of
from napari_medseg.models.registry import class_table, get_card, list_cards


def test_every_card_is_complete():
    cards = list_cards()
    assert len({c.id for c in cards}) == len(cards)
    for card in cards:
        assert card.family in FAMILY_MODULES, card.id
        assert card.weights and card.weight.file and card.weight.url and card.weight.license, card.id
        assert card.citation and card.description, card.id
        names = card.class_names()
        assert card.classes == "from checkpoint" or names.get(0) == "background", card.id
    assert {c.family for c in cards} == set(FAMILY_MODULES)


def test_totalsegmentator_table_has_117_structures():
    table = class_table("totalsegmentator_v2")
    assert len(table["names"]) == 118 and table["names"][0] == "background"
    assert all(len(c) == 3 for k, c in table["colors"].items() if k)
    assert get_card("swin-smt").class_names() == table["names"]


def test_bundled_lite_medsam_is_verified():
    card = get_card("lite-medsam")
    status = wm.verify(card)
    assert status.state == wm.BUNDLED
    assert sha256_of(status.path) == card.weight.sha256


def test_install_from_file_copy_link_and_mismatch(tmp_path):
    card = get_card("lite-medsam")
    bundled = wm.weights_path(card)
    installed = wm.install_from_file(card, bundled)
    assert installed.is_file() and not installed.is_symlink()
    assert wm.weight_status(card, verify=True).state == wm.INSTALLED
    linked = wm.install_from_file(card, bundled, link=True)
    assert linked.is_symlink()
    tampered = tmp_path / "lite_medsam.pth"
    shutil.copyfile(bundled, tampered)
    with open(tampered, "r+b") as f:
        f.seek(-10, 2)
        f.write(b"0123456789")
    with pytest.raises(CheckpointError, match="does not match the published"):
        wm.install_from_file(card, tampered)


def test_installed_file_that_changed_is_a_mismatch():
    card = get_card("lite-medsam")
    installed = wm.install_from_file(card, wm.weights_path(card))
    with open(installed, "r+b") as f:
        f.seek(100)
        f.write(b"corrupted")
    assert wm.verify(card).state == wm.MISMATCH


def test_install_refuses_another_family(tmp_path):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"some.layer.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="cannot be installed as SAM ViT-B"):
        wm.install_from_file(get_card("sam-vit-b"), path, force=True)
    assert wm.weight_status(get_card("sam-vit-b")).state == wm.MISSING


def test_install_compares_family_and_architecture_exactly(tmp_path):
    """LiteMedSAM is a box2d file of the SAM module but not a SAM ViT-B; neither is a ViT-L layout."""
    lite = wm.weights_path(get_card("lite-medsam"))
    with pytest.raises(CheckpointError, match="not a sam checkpoint .*lite_medsam"):
        wm.install_from_file(get_card("sam-vit-b"), lite, force=True)
    sd = {k: v for k, v in read_checkpoint(lite).items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    vit_l = tmp_path / "sam_vit_l.pth"
    torch.save({**sd, "image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16),
                "image_encoder.neck.0.weight": torch.zeros(256, 1024, 1, 1)}, vit_l)
    with pytest.raises(CheckpointError, match="another architecture: size vit_l"):
        wm.install_from_file(get_card("sam-vit-b"), vit_l, force=True)
    assert wm.weight_status(get_card("sam-vit-b")).state == wm.MISSING
    assert not list(wm.weights_dir(get_card("sam-vit-b")).glob("*"))


def test_install_swaps_atomically_and_a_full_disk_keeps_the_old_weights(tmp_path, monkeypatch):
    import os

    from napari_medseg import atomic

    card = get_card("lite-medsam")
    installed = wm.install_from_file(card, wm.weights_path(card))
    before = sha256_of(installed)
    written = []

    def full_disk(fd, data):
        if written:
            raise OSError(28, "No space left on device")
        written.append(os.write(fd, bytes(data)[: len(data) // 2]))

    with monkeypatch.context() as patch:
        patch.setattr(wm, "write_fully", full_disk)
        with pytest.raises(CheckpointError, match="No space left on device.*unchanged"):
            wm.install_from_file(card, wm.bundled_path(card.weight))
    assert written and sha256_of(installed) == before
    assert sorted(p.name for p in installed.parent.iterdir()) == ["installed.json", "lite_medsam.pth"]
    assert not list(installed.parent.glob(f"{atomic.TEMP_MARK}*")) and not list(installed.parent.glob("*.part"))
    assert wm.verify(card).state == wm.INSTALLED


def test_forced_wrong_file_leaves_the_old_model_usable(tmp_path):
    card = get_card("lite-medsam")
    wrong = tmp_path / "lite_medsam.pth"
    torch.save({"some.layer.weight": torch.zeros(2)}, wrong)
    with pytest.raises(CheckpointError, match="cannot be installed"):
        wm.install_from_file(card, wrong, force=True)
    status = wm.weight_status(card)
    assert status.state == wm.BUNDLED and not (wm.weights_dir(card) / "lite_medsam.pth").exists()
    # a forced file of the right layout (not the published bytes) is installed and stays usable
    retrained = tmp_path / "retrained.pth"
    torch.save(read_checkpoint(wm.bundled_path(card.weight)), retrained)
    path = wm.install_from_file(card, retrained, force=True)
    assert wm.verify(card).state == wm.INSTALLED and "--force" in wm.weight_status(card).detail
    assert load_checkpoint(wm.weights_path(card), family="lite_medsam").path == path


def test_damaged_install_record_is_one_line_and_reinstall_repairs_it(capsys):
    from napari_medseg.cli import main

    card = get_card("lite-medsam")
    wm.install_from_file(card, wm.weights_path(card))
    record = wm.weights_dir(card) / "installed.json"
    for damage in (b"{not json", b"\xff\xfe", b"[1, 2]", b'{"lite_medsam.pth": {"size": "big"}}'):
        record.write_bytes(damage)
        with pytest.raises(CheckpointError, match="install record .* is damaged"):
            wm.weight_status(card)
        assert main(["models"]) == 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "damaged" in err and "Traceback" not in err
    assert main(["models", "install", "lite-medsam", str(wm.bundled_path(card.weight))]) == 0
    assert wm.verify(card).state == wm.INSTALLED


def test_install_of_bundled_weights_does_nothing(capsys):
    from napari_medseg.cli import main

    assert main(["models", "install", "lite-medsam"]) == 0
    assert "bundled" in capsys.readouterr().out
    assert not wm.weights_dir(get_card("lite-medsam")).exists()


def test_sam_cards_carry_the_published_sha256():
    for model_id in ("sam-vit-b", "sam-vit-l", "sam-vit-h"):
        card = get_card(model_id)
        assert len(card.weight.sha256) == 64 and card.weight.url and not card.weight.manual_download


def test_missing_weights_say_how_to_install():
    with pytest.raises(WeightsNotInstalled, match="medseg models install medsam"):
        wm.weights_path(get_card("medsam"))


def test_download_without_network_names_url_and_command(monkeypatch):
    card = get_card("sam-vit-b")
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(CheckpointError) as info:
        wm.download(card)
    assert card.weight.url in str(info.value) and "medseg models install sam-vit-b" in str(info.value)
    with pytest.raises(CheckpointError, match="cannot be downloaded automatically"):
        wm.download(get_card("medsam"))


class Arbitrary:
    pass


def test_checkpoint_safety(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"model": Arbitrary()}, evil)
    with pytest.raises(CheckpointError, match="refused for safety"):
        read_checkpoint(evil)
    truncated = tmp_path / "truncated.pth"
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(1000)}, good)
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(truncated)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(empty)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        read_checkpoint(plain_pickle)


@pytest.mark.parametrize("content", [bytes(range(256)) * 20, b"hello world\n" * 10, pickle.dumps({"a": 1})])
def test_files_that_are_no_checkpoint_are_not_called_unsafe(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    text = str(info.value)
    assert "arbitrary Python objects" not in text and "weights_only" not in text and "\n" not in text, text
    assert "not a PyTorch checkpoint" in text or "corrupt or truncated" in text, text


def test_nnunet_numpy_log_entries_are_allowed(tmp_path):
    import numpy as np

    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.ones(1)}, "logging": {"mean_fg_dice": [np.float64(0.8)]},
                "current_epoch": 1000}, path)
    assert read_checkpoint(path)["logging"]["mean_fg_dice"][0] == pytest.approx(0.8)


def test_unknown_layout_and_wrong_family(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"some.layer.weight": torch.ones(3, 3)}, path)
    with pytest.raises(CheckpointError, match="match none of the supported"):
        load_checkpoint(path)
    lite = wm.weights_path(get_card("lite-medsam"))
    with pytest.raises(CheckpointError, match="not a 'vm_unet' checkpoint"):
        load_checkpoint(lite, family="vm_unet")


def test_lvm_med_vit_takes_its_decoder_from_sam(tmp_path):
    from napari_medseg.models.load import load_model

    with pytest.raises(WeightsNotInstalled, match="LVM-Med"):
        load_model("lvm-med-vit", device="cpu")
    assert get_card("lvm-med-vit").decoder_from == "sam-vit-b"


def test_random_bytes_are_not_a_checkpoint_rather_than_unsafe(tmp_path):
    import numpy as np

    noise = tmp_path / "noise.pth"
    for data in (np.random.default_rng(0).bytes(5000), b"\x80\x02" + np.random.default_rng(1).bytes(300)):
        noise.write_bytes(data)
        with pytest.raises(CheckpointError, match="noise.pth is not a PyTorch checkpoint") as info:
            read_checkpoint(noise)
        assert "arbitrary Python objects" not in str(info.value)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(legacy)["w"], torch.ones(3))

"""The Segment widget in a real viewer: draw a box, get a mask, undo, propagate through a volume."""
import numpy as np
import pytest

from napari_medseg._napari.layers import image_layer_data
from napari_medseg._napari.samples import sample_path
from napari_medseg.io import read_image

pytestmark = pytest.mark.gui
PLUGIN = "napari-medseg"


@pytest.fixture
def viewer_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    return viewer, widget


def draw(viewer, widget, start, end):
    """A rectangle from corner ``start`` to ``end`` ((row, col) or (slice, row, col)), as a user drags it."""
    widget.draw_box()
    shapes = viewer.layers["medseg boxes"]
    *lead, r0, c0 = start
    *_, r1, c1 = end
    corners = [(*lead, r0, c0), (*lead, r0, c1), (*lead, r1, c1), (*lead, r1, c0)]
    shapes.add_rectangles(np.array(corners, dtype=float))
    widget.runner.wait(180000)


def test_box_on_ct_gives_a_mask_and_undo_removes_it(viewer_widget):
    viewer, widget = viewer_widget
    viewer.open_sample(PLUGIN, "ct")
    assert widget.model_combo.currentData() == "lite-medsam"
    draw(viewer, widget, (20, 40), (70, 90))  # the vertebral body of pydicom's CT_small
    labels = viewer.layers["CT (pydicom CT_small) labels"]
    mask = labels.data == 1
    assert 200 < mask.sum() < 2500
    rows, cols = np.nonzero(mask)
    assert rows.min() >= 18 and rows.max() <= 72 and cols.min() >= 38 and cols.max() <= 92
    np.testing.assert_allclose(labels.scale, viewer.layers[0].scale)
    (prompt,) = labels.metadata["medseg"]["prompts"]
    assert prompt["model"] == "lite-medsam" and prompt["label"] == 1 and prompt["box"][0] == pytest.approx(40.5)
    draw(viewer, widget, (80, 5), (120, 40))  # a second object gets the next label
    assert set(np.unique(labels.data)) == {0, 1, 2}
    widget.undo()
    assert set(np.unique(labels.data)) == {0, 1}
    widget.accept()
    assert len(viewer.layers["medseg boxes"].data) == 0


def test_prompts_without_image_warn(viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    messages = []
    monkeypatch.setattr(widget, "_notify", lambda level, text: messages.append((level, text)))
    widget.draw_box()
    widget.segment_prompts()
    assert messages and all(level == "warning" for level, _ in messages)
    assert "Open an image" in messages[0][1]


def test_box_on_volume_slice_and_propagate(viewer_widget):
    viewer, widget = viewer_widget
    mr = read_image(sample_path("brain_mr"))
    small = mr.with_array(mr.array[84:96, ::2, ::2].copy())  # 12 axial slices of 1 mm, 2 mm pixels
    small.spacing = (mr.spacing[0] * 2, mr.spacing[1] * 2, mr.spacing[2])
    data, kwargs, _ = image_layer_data(small, name="brain")
    viewer.add_image(data, **kwargs)
    viewer.dims.set_point(0, viewer.layers["brain"].data_to_world((6, 0, 0))[0])
    # the lateral ventricles on an axial slice, with the default (faithful) precision
    assert widget.precision_combo.currentText() == "faithful"
    draw(viewer, widget, (6, 38, 35), (6, 62, 62))
    labels = viewer.layers["brain labels"]
    assert labels.data[6].any() and not labels.data[5].any()
    widget.propagate()
    widget.runner.wait(300000)
    slices = np.nonzero(labels.data.reshape(len(labels.data), -1).any(1))[0]
    assert len(slices) >= 3 and 6 in slices


def test_automatic_3d_shows_named_classes_and_legend(viewer_widget, tmp_path):
    """Swin SMT (small random-weight configuration on CPU) through the widget's automatic mode."""
    import torch

    from napari_medseg.models import weights
    from napari_medseg.models.registry import class_table, get_card
    from napari_medseg.models.swin_smt import SwinSMT, save_swin_smt_checkpoint

    torch.manual_seed(0)
    names = class_table("totalsegmentator_v2")["names"]
    network = SwinSMT(in_channels=1, out_channels=len(names), feature_size=12, num_experts=2)
    path = tmp_path / "swin_smt.pth"
    save_swin_smt_checkpoint(network, path, classes=names, spacing=(4.0, 4.0, 4.0), roi_size=(64, 64, 64))
    weights.install_from_file(get_card("swin-smt"), path)

    viewer, widget = viewer_widget
    mr = read_image(sample_path("brain_mr"))
    small = mr.with_array(mr.array[::2, ::2, ::2].copy())
    small.spacing = tuple(s * 2 for s in mr.spacing)
    data, kwargs, _ = image_layer_data(small, name="volume")
    viewer.add_image(data, **kwargs)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("swin-smt"))
    assert widget.automatic_button.isVisible() or not widget.isVisible()
    widget.run_automatic()
    widget.runner.wait(300000)
    layer = viewer.layers["volume swin-smt"]
    assert layer.data.shape == data.shape and layer.data.any()
    assert list(layer.features["name"][:3]) == [names[0], names[1], names[2]]
    legend = widget.legend
    legend.search.setText("vertebrae_L")
    shown = [item.text(0) for item in legend._items.values() if not item.isHidden()]
    assert shown and all("vertebrae_L" in text for text in shown)
    groups = legend.tree.invisibleRootItem()
    assert [groups.child(i).text(0) for i in range(groups.childCount()) if not groups.child(i).isHidden()] == ["vertebrae"]
    legend.search.setText("")
    found = sorted(int(v) for v in np.unique(layer.data) if v)
    legend.set_visible(found[:1])
    assert legend.visible_labels() == found[:1]
    hidden = found[1] if len(found) > 1 else 117
    assert layer.colormap.map(hidden)[..., 3] == 0 and layer.colormap.map(found[0])[..., 3] == 1


def test_typed_report_through_the_segment_widget(viewer_widget, tmp_path):
    """LLM-Swin-UMamba (project-trained layout, offline MiniLM text tower): type a report, draw a box."""
    import json
    from pathlib import Path

    import torch

    from napari_medseg.io.image import Image
    from napari_medseg.models import llm_swin_umamba as llm
    from napari_medseg.models import weights
    from napari_medseg.models.registry import get_card

    case = Path(__file__).resolve().parents[1] / "conformance_cases" / "llm_swin_umamba_dec2025" / "case.json"
    nnunet = json.loads(case.read_text())["nnunet"]
    torch.manual_seed(0)
    network = llm.new_network()
    with torch.no_grad():  # a head that calls every pixel it sees a lesion, so the mask is the crop
        network.out_layers[0].conv.conv.bias[:] = torch.tensor([0.0, 1e4])
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainerSwinUMamba",
                "init_args": {"plans": nnunet["plans"], "configuration": "2d", "fold": "all",
                              "dataset_json": nnunet["dataset_json"]},
                "inference_allowed_mirroring_axes": [0, 1], "medseg": llm.checkpoint_metadata(network)}, path)
    weights.install_from_file(get_card("llm-swin-umamba"), path)

    viewer, widget = viewer_widget
    volume = np.full((3, 300, 300), -1000, dtype=np.int16)
    volume[:, 20:280, 20:280] = 40
    ct = Image(volume, (0.8, 0.8, 5.0), (0.0, 0.0, 0.0), np.eye(3), modality="CT", intensity="HU")
    data, kwargs, _ = image_layer_data(ct, name="ct")
    viewer.add_image(data, **kwargs)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("llm-swin-umamba"))
    widget.report_box.set_text("Abdomen, liver, hypoattenuating mass")
    viewer.dims.set_point(0, viewer.layers["ct"].data_to_world((1, 0, 0))[0])
    draw(viewer, widget, (1, 140, 140), (1, 160, 160))
    labels = viewer.layers["ct labels"]
    assert labels.data[1].any() and not labels.data[[0, 2]].any()
    rows, cols = np.nonzero(labels.data[1])
    assert rows.min() >= 150 - 128 and rows.max() < 150 + 128  # inside the 256 x 256 lesion crop
    (prompt,) = labels.metadata["medseg"]["prompts"]
    assert prompt["report"] == "Abdomen, liver, hypoattenuating mass" and prompt["model"] == "llm-swin-umamba"
    # the report and the box travel into the annotation store with the labels
    finetune = widget.open_finetune()
    finetune.open_project(tmp_path / "project")
    finetune.image_combo.setCurrentText("ct")
    finetune.labels_combo.setCurrentText("ct labels")
    assert finetune.save_labels(notify=True)
    (entry,) = finetune.store.entries()
    assert entry.report == "Abdomen, liver, hypoattenuating mass"
    assert [p["model"] for p in entry.prompts] == ["llm-swin-umamba"]
    assert not finetune.save_labels()  # unchanged labels are not saved twice


def test_automatic_2d_on_a_colour_image(viewer_widget, tmp_path):
    """VM-UNet (ISIC layout, random weights) in the widget's automatic mode on the fundus sample."""
    import torch

    from napari_medseg.models import weights
    from napari_medseg.models.registry import get_card
    from napari_medseg.models.vm_unet import VMUNet

    torch.manual_seed(0)
    network = VMUNet(input_channels=3, num_classes=1)
    with torch.no_grad():  # a head that calls everything lesion: the mask must cover the whole photo
        network.vmunet.final_conv.bias.fill_(50.0)
    path = tmp_path / "best.pth"
    torch.save(network.state_dict(), path)
    weights.install_from_file(get_card("vm-unet-isic"), path)

    viewer, widget = viewer_widget
    (image_layer,) = viewer.open_sample(PLUGIN, "fundus")
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("vm-unet-isic"))
    widget.run_automatic()
    widget.runner.wait(300000)
    layer = viewer.layers[f"{image_layer.name} vm-unet-isic"]
    assert layer.data.shape == image_layer.data.shape[:2]
    assert layer.data.mean() > 0.99
    assert list(layer.features["name"]) == ["background", "lesion"]


def test_box_on_a_colour_photo(viewer_widget):
    viewer, widget = viewer_widget
    (photo,) = viewer.open_sample(PLUGIN, "fundus")
    draw(viewer, widget, (560, 180), (730, 350))  # the optic disc of scikit-image's retina
    mask = viewer.layers[f"{photo.name} labels"].data == 1
    assert mask.shape == photo.data.shape[:2] and mask.sum() > 2000
    rows, cols = np.nonzero(mask)
    assert rows.min() >= 550 and rows.max() <= 740 and cols.min() >= 170 and cols.max() <= 360


def test_precision_setting_reaches_the_box_predictor(viewer_widget):
    viewer, widget = viewer_widget
    viewer.open_sample(PLUGIN, "ct")
    assert widget.precision_combo.currentText() == "faithful"
    widget.precision_combo.setCurrentText("fast")
    draw(viewer, widget, (20, 40), (70, 90))
    (predictor,) = widget._predictors.values()
    assert predictor.precision == "fast"
    assert (viewer.layers["CT (pydicom CT_small) labels"].data == 1).any()


def test_zoom_setting_reaches_the_box_predictor(viewer_widget):
    """The 1,411 px fundus photo would be shrunk 5.5x for LiteMedSAM: "auto" embeds a crop around the box
    (3x its 170 px side), "off" the whole photo; both outline the optic disc."""
    viewer, widget = viewer_widget
    (photo,) = viewer.open_sample(PLUGIN, "fundus")
    labels_name = f"{photo.name} labels"
    assert widget.zoom_combo.currentText() == "auto"
    for zoom, embedded in (("auto", (510, 510)), ("off", photo.data.shape[:2])):
        widget.zoom_combo.setCurrentText(zoom)
        draw(viewer, widget, (560, 180), (730, 350))
        (predictor,) = widget._predictors.values()
        assert predictor.embedding.image_hw == embedded
        mask = viewer.layers[labels_name].data == viewer.layers[labels_name].data.max()
        rows, cols = np.nonzero(mask)
        assert mask.sum() > 2000 and rows.min() >= 550 and rows.max() <= 740 and cols.min() >= 170
        widget.undo()

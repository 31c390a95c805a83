"""SAM, MedSAM and LVM-Med ViT-B on a CUDA GPU: faithful and fast against each family's official fp32 recipe
on the real boxes of fidelity_set (issue 16). Run on the GPU machine: ``pytest -m gpu -s`` prints the fast
path's IoU. The official weights are not available offline, so the ViT-B networks carry random weights
(seeded); the IoU measures what reduced precision does to the same computation.
"""
import copy

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


def official_vit_b(seed: int):
    from segment_anything import sam_model_registry

    torch.manual_seed(seed)
    return sam_model_registry["vit_b"]().eval()


def reference_masks(family, official, rgb, boxes):
    """The authors' fp32 masks: SamPredictor (SAM), MedSAM_Inference.py and LVM-Med's recipe on the CPU."""
    if family == "sam":
        from segment_anything import SamPredictor

        predictor = SamPredictor(official.cuda())
        predictor.set_image(rgb)
        return [predictor.predict(box=np.asarray(box), multimask_output=False)[0][0] for box in boxes]
    from test_box2d import lvm_med_recipe, medsam_recipe

    recipe = medsam_recipe if family == "medsam" else lvm_med_recipe
    cpu = copy.deepcopy(official).cpu()
    return [recipe(cpu, rgb, box) for box in boxes]


@pytest.mark.parametrize("family", ["sam", "medsam", "lvm_med_vit"])
def test_vit_b_faithful_meets_the_bound_and_fast_is_measured(family):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    import fidelity_set

    from napari_medseg.inference.box2d import BoxPredictor
    from napari_medseg.models import sam_family as sf

    official = official_vit_b(seed=3)
    state = official.state_dict()
    if family == "lvm_med_vit":
        official.image_encoder.pos_embed = None  # LVM-Med's encoder has no absolute positions
        encoder = {k[len("image_encoder."):]: v for k, v in state.items()
                   if k.startswith("image_encoder.") and "pos_embed" not in k}
        loaded = lambda: sf.build(encoder, family, decoder=state)  # noqa: E731
    else:
        loaded = lambda: sf.build(state, family)  # noqa: E731
    predictors = {p: BoxPredictor(loaded(), device="cuda", precision=p) for p in ("faithful", "fast")}
    scores = {p: [] for p in predictors}
    for load, named in fidelity_set.IMAGES.values():
        rgb = load()
        expected = reference_masks(family, official, rgb, list(named.values()))
        for precision, predictor in predictors.items():
            predictor.set_image(rgb)
            scores[precision] += [fidelity_set.iou(predictor.predict(box=box), e)
                                  for box, e in zip(named.values(), expected)]
    for precision, values in scores.items():
        print(f"{family} {precision}: IoU vs official fp32 min {min(values):.4f} mean {np.mean(values):.4f} "
              f"({len(values)} boxes, {torch.cuda.get_device_name()})")
    assert min(scores["faithful"]) >= 0.98 and np.mean(scores["faithful"]) >= 0.99

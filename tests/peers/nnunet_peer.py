"""nnU-Net v2's own predictor on the cases of the parity tests. Runs in the peer environment
(scripts/peer_nnunet.sh), never in .venv:

    .peer-nnunet/bin/python tests/peers/nnunet_peer.py MANIFEST.json

The manifest lists cases: a trained-model folder (dataset.json, plans.json, fold_all/checkpoint_final.pth),
an image (.npy, channels first, numpy axis order), its spacing (numpy order, as nnU-Net's SimpleITKIO gives
it), whether to mirror, and where to write the labels and probabilities (.npy). Each case is predicted
as a user of nnU-Net predicts: nnUNetPredictor.initialize_from_trained_model_folder, then
predict_single_npy_array on the CPU.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(manifest: str) -> None:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the plans' tiny_net.TinyNet
    torch.set_num_threads(2)
    predictors = {}
    for case in json.loads(Path(manifest).read_text()):
        if case["model"] not in predictors:
            predictors[case["model"]] = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True,
                                                        device=torch.device("cpu"), verbose=False, allow_tqdm=False)
            predictors[case["model"]].initialize_from_trained_model_folder(case["model"], use_folds=("all",))
        predictor = predictors[case["model"]]
        predictor.use_mirroring = case["mirroring"]  # nnUNetv2_predict's --disable_tta
        labels, probabilities = predictor.predict_single_npy_array(
            np.load(case["image"]), {"spacing": case["spacing"]}, None, None, True)
        np.save(case["labels"], np.asarray(labels))
        np.save(case["probabilities"], np.asarray(probabilities, dtype=np.float32))


if __name__ == "__main__":
    main(sys.argv[1])

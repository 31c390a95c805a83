"""SAM ViT-B box prompts on a GPU: official SamPredictor (fp32) vs napari-medseg's BoxPredictor.

PyTorch's default backend flags for every timed run, as SamPredictor's users run it; the reference embedding
and masks for the agreement columns are the official predictor in strict float32 (TF32 off for them only).

    python benchmarks/bench_box_gpu.py [--checkpoint sam_vit_b_01ec64.pth] [--repeats 20]

Without a checkpoint the official ViT-B is built with random weights (rel-pos tables and position
embedding randomised too), which is enough for timing and for the fp32-vs-ours agreement.
Prints per-slice embedding time (set_image on a new 1024-px image, preprocessing included), the image
encoder alone, box-on-cached-slice time (to a full-resolution boolean mask on the host), IoU of our
masks against the official fp32 masks and the embedding's relative error. Targets: embedding <= 20 ms, box <= 3 ms.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry
from gpu_timing import strict_fp32
from skimage import data

from napari_medseg.inference.box2d import BoxPredictor
from napari_medseg.models import load_checkpoint
from napari_medseg.models import sam_family as sf

BOXES = [(520, 480, 760, 720), (200, 560, 345, 725), (600, 600, 900, 800), (100, 300, 500, 900)]


def official_sam(checkpoint):
    if checkpoint:
        return load_checkpoint(checkpoint, family="sam", hash=False).network
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.02)
    return sam


def images(count: int) -> list[np.ndarray]:
    """Distinct 1024x1024 RGB slices (so the embedding cache cannot answer)."""
    base = data.retina()[190:1214, 190:1214].astype(np.int16)
    rng = np.random.default_rng(0)
    return [np.clip(base + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8) for _ in range(count)]


def timed(fn, repeats: int) -> float:
    """Median milliseconds of ``fn`` (synchronised)."""
    times = []
    for i in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn(i)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def iou(a, b) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="sam_vit_b_01ec64.pth (random weights without it)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    slices = images(args.repeats + 2)
    box = np.array(BOXES[0])
    sam = official_sam(args.checkpoint).cuda().eval()
    official = SamPredictor(sam)

    def official_embed(i):
        official.set_image(slices[i])

    def official_box(i):
        official.predict(box=np.array(BOXES[i % len(BOXES)]), multimask_output=False)

    official_embed(0)
    official_ms = timed(official_embed, args.repeats)
    official.set_image(slices[0])
    resized = torch.as_tensor(official.transform.apply_image(slices[0]), device="cuda")
    prepared = sam.preprocess(resized.permute(2, 0, 1)[None].float())
    with torch.inference_mode():
        encoder_ms = timed(lambda i: sam.image_encoder(prepared), args.repeats)
    with strict_fp32():
        official.set_image(slices[0])
        reference_features = official.features.float().clone()
        reference_masks = [official.predict(box=np.array(b), multimask_output=False)[0][0] for b in BOXES]
    rows = [("official SamPredictor fp32", official_ms, encoder_ms, timed(official_box, args.repeats), 1.0, 0.0)]

    state = {k: v.cpu() for k, v in sam.state_dict().items()}
    for label, precision, compile_ in [("ours faithful (fp32) + SDPA", "faithful", False),
                                       ("ours fast (bf16) + SDPA", "fast", False),
                                       ("ours fast (bf16) + SDPA + compile", "fast", True)]:
        loaded = sf.build(state, "sam")
        ours = BoxPredictor(loaded, device="cuda", precision=precision, compile=compile_)
        ours.set_image(slices[-1])  # warm-up (compilation)
        ours.predict(box=box)

        def our_embed(i, ours=ours):
            ours.set_image(slices[i + 1])

        embed_ms = timed(our_embed, args.repeats)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "fast"):
            encoder_ms = timed(lambda i, ours=ours: ours._encode(prepared), args.repeats)
        ours.set_image(slices[0])
        features = ours.embedding.features
        error = float((features - reference_features).abs().max() / reference_features.abs().max())
        agreement = min(iou(ours.predict(box=b), m) for b, m in zip(BOXES, reference_masks))

        def our_box(i, ours=ours):
            ours.predict(box=BOXES[i % len(BOXES)])

        rows.append((label, embed_ms, encoder_ms, timed(our_box, args.repeats), agreement, error))
        del ours, loaded
        torch.cuda.empty_cache()

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, PyTorch default flags, image 1024x1024 RGB, SAM ViT-B "
          f"({'checkpoint' if args.checkpoint else 'random weights'}), median of {args.repeats}")
    print(f"{'variant':32s} {'set_image ms':>13s} {'encoder ms':>11s} {'box ms':>8s} "
          f"{'min IoU vs fp32':>16s} {'embed rel err':>14s}")
    for label, embed_ms, encoder_ms, box_ms, agreement, error in rows:
        print(f"{label:32s} {embed_ms:13.1f} {encoder_ms:11.1f} {box_ms:8.2f} {agreement:16.4f} {error:14.2e}")


if __name__ == "__main__":
    main()

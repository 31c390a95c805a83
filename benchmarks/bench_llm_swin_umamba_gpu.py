"""LLM-Swin-UMamba on a CUDA GPU: time per 256^2 slice with its report (target <= 15 ms on an H100).

    python benchmarks/bench_llm_swin_umamba_gpu.py [--weights checkpoint_final.pth] [--tokenizer FOLDER]

Times, by CUDA events (median of --iterations):
  * the text tower for a new report (tokenize + MPNet + pooling) and for a repeated one (cached);
  * the image branch with a given report embedding, batch 1 (one slice) and batch 4 (nnU-Net's mirroring),
    in fp32 (the official numbers) and fp16 autocast (what nnU-Net's predictor runs), plus the fp16 forward
    replayed as one CUDA graph;
  * ``predict_text2d`` end to end on a 512^2 CT slice in HU (window, crop, normalisation, forward replayed from
    its CUDA graph, mask back), wall-clock per slice for a report already seen, without and with mirroring;
and prints the arg-max agreement of fp16 with fp32. Without --weights the network has the official Dec 2025
layout with a BioLORD-2023-C-sized text tower and random weights (timing does not depend on the values).
The tokenizer defaults to the BioLORD-layout vocabulary of the conformance case in tests/.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from gpu_timing import cuda_ms, graphed, strict_fp32

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = REPO / "tests" / "conformance_cases" / "llm_swin_umamba_dec2025" / "tokenizer"
CASE = DEFAULT_TOKENIZER.parent / "case.json"
REPORT = "Chest, lymph node, hilum, chest wall, prominent, axilla, axilla lymph node, fat-containing."


def random_dec2025_model(tokenizer: Path):
    """The official Dec 2025 layout (BioLORD-2023-C-sized MPNet), random weights, DeepLesion plans."""
    import json

    from transformers import MPNetConfig, MPNetModel

    from napari_medseg.models import llm_swin_umamba as llm
    from napari_medseg.models.swin_umamba import SwinUMamba

    torch.manual_seed(0)
    weights = dict(SwinUMamba(1, 2).state_dict())
    mpnet = MPNetModel(MPNetConfig(vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                   intermediate_size=3072, max_position_embeddings=514, layer_norm_eps=1e-5))
    weights.update({f"text_encoder.biolord.{k}": v for k, v in mpnet.state_dict().items()})
    for i, width in enumerate((48, 96, 192, 384, 768, 768)):
        layer = torch.nn.Linear(768, width)
        weights[f"lang_proj.{i}.weight"], weights[f"lang_proj.{i}.bias"] = layer.weight.data, layer.bias.data
    weights["text_encoder.weight_proj.weight"] = torch.randn(1, 768)
    weights["text_encoder.weight_proj.bias"] = torch.zeros(1)
    nnunet = json.loads(CASE.read_text())["nnunet"]
    state = {"network_weights": weights, "trainer_name": nnunet["trainer_name"],
             "inference_allowed_mirroring_axes": [0, 1],
             "init_args": {"plans": nnunet["plans"], "configuration": "2d", "dataset_json": nnunet["dataset_json"]}}
    return llm.build(state, "llm_swin_umamba", tokenizer=tokenizer)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="an official-format checkpoint_final.pth (default: random weights)")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="BioLORD-2023-C tokenizer folder")
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    from napari_medseg.inference.text2d import predict_text2d
    from napari_medseg.io.image import Image
    from napari_medseg.models import load_checkpoint, scan

    torch.backends.cudnn.benchmark = True
    t0 = time.time()
    loaded = (load_checkpoint(args.weights, family="llm_swin_umamba", tokenizer=args.tokenizer) if args.weights
              else random_dec2025_model(Path(args.tokenizer)))
    network = loaded.to(torch.device("cuda")).network.eval()
    loaded.info["device"] = "cuda"
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, scan backend "
          f"{scan.backend_for(torch.device('cuda'))}, generation {loaded.info['generation']}, "
          f"{sum(p.numel() for p in network.parameters()) / 1e6:.1f} M parameters, built in {time.time() - t0:.1f} s")

    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        reports = iter(f"{REPORT} variant {i}" for i in range(10 ** 6))
        network.encode_report(next(reports))  # warm-up
        new = cuda_ms(lambda: network.encode_report(next(reports)), args.iterations)
        cached = cuda_ms(lambda: network.encode_report(REPORT), args.iterations)
        lang_feat = network.encode_report(REPORT)
    print(f"text tower: new report {new:.2f} ms (tokenize + MPNet + pooling), repeated report {cached:.3f} ms (cache)")

    def fp32(x):
        with torch.inference_mode():
            return network.segment(x, lang_feat.float()).float()

    def fp16(x):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
            return network.segment(x, lang_feat).float()

    for batch, label in ((1, "one slice"), (4, "mirroring (4 flips)")):
        x = torch.randn(batch, 1, 256, 256, device="cuda")
        with strict_fp32():  # the reference in strict float32; timed runs keep PyTorch's default flags
            reference = fp32(x).argmax(1)
        variants = {"fp32 eager": fp32, "fp16 autocast": fp16}
        try:
            variants["fp16 + CUDA graph"] = graphed(fp16, x)
        except Exception as exc:  # capture fails with backends that synchronise
            print(f"  CUDA graph capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        print(f"image branch, batch {batch} x 256^2 ({label}):")
        for name, fn in variants.items():
            agreement = (fn(x).argmax(1) == reference).float().mean().item()
            print(f"  {name:20s} {cuda_ms(lambda: fn(x), args.iterations):8.2f} ms   arg-max agreement {agreement:.5f}")

    rng = np.random.default_rng(0)
    ct = rng.normal(40, 60, (512, 512)).astype(np.float32)
    image = Image(ct, (0.7, 0.7), (0.0, 0.0), np.eye(2), modality="CT", intensity="HU")
    for mirror in (False, True):
        predict_text2d(loaded, image, REPORT, box=(230, 240, 270, 290), mirror=mirror)  # warm-up, caches the report
        times = []
        for _ in range(args.iterations):
            torch.cuda.synchronize()
            start = time.perf_counter()
            predict_text2d(loaded, image, REPORT, box=(230, 240, 270, 290), mirror=mirror)
            times.append((time.perf_counter() - start) * 1e3)
        print(f"predict_text2d per slice (report cached), mirroring {'on ' if mirror else 'off'}: "
              f"median {np.median(times):.2f} ms, p90 {np.percentile(times, 90):.2f} ms")


if __name__ == "__main__":
    main()

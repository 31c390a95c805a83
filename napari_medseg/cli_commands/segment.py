"""`medseg segment`: one image or a whole cohort, labels written in each input's geometry."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..batch import LABEL_FORMATS, CaseResult
from ..errors import MedsegError, PromptError
from ..inference.precision import PRECISIONS


def _numbers(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise PromptError(f"--{name} takes comma-separated numbers, got {text!r}") from None


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, folders, DICOM folders or glob patterns")
    parser.add_argument("-o", "--output", required=True,
                        help="labels file (one input) or output folder (one file per case)")
    parser.add_argument("--model", default="lite-medsam", help="model id (default: lite-medsam; see 'medseg models')")
    parser.add_argument("--weights", help="weights file (default: the installed weights of --model)")
    parser.add_argument("--box", help="x0,y0,x1,y1[,z] in pixels; z is the slice index of a volume")
    parser.add_argument("--point", action="append", default=[], help="x,y[,z] object point (repeatable)")
    parser.add_argument("--negative-point", action="append", default=[], help="x,y[,z] background point")
    parser.add_argument("--propagate", action="store_true", help="extend a box mask through neighbouring slices")
    parser.add_argument("--report", help="lesion report for text-guided models")
    parser.add_argument("--tokenizer", help="folder with the text model's tokenizer files (text-guided models)")
    parser.add_argument("--structures", help="comma-separated class names or values to keep (automatic 3D models)")
    parser.add_argument("--precision", choices=PRECISIONS, default="faithful",
                        help="faithful (default): float32, the authors' results; fast: reduced precision where the "
                        "hardware has it (bfloat16), can change masks (see the README's precision section)")
    parser.add_argument("--format", choices=LABEL_FORMATS, help="output format (default: the input's, nii.gz for DICOM)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    parser.add_argument("--manifest", help="run manifest JSON (default: OUTPUT_FOLDER/medseg_run.json)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--devices", help="split the cases over these devices, one process each: CUDA indices "
                        "(0,1) or device names (cuda:0,cpu)")


def _prompt_kwargs(args) -> dict:
    points = [_numbers(p, "point") for p in args.point] + [_numbers(p, "negative-point") for p in args.negative_point]
    return {
        "box": _numbers(args.box, "box") if args.box else None,
        "points": points or None,
        "point_labels": ([1] * len(args.point) + [0] * len(args.negative_point)) or None,
        "report": args.report,
        "propagate": args.propagate,
        "precision": args.precision,
        "structures": [int(s) if s.strip().isdigit() else s.strip() for s in args.structures.split(",")]
        if args.structures else None,
    }


def _load_options(args) -> dict:
    return {"tokenizer": args.tokenizer} if args.tokenizer else {}


def _print_case(result: CaseResult, index: int, total: int) -> None:
    mark = {"done": "ok  ", "skipped": "skip", "failed": "FAIL"}[result.status]
    detail = f" ({result.error})" if result.error else f" {result.seconds:.1f} s"
    prefix = f"[{index}/{total}] " if total else ""
    print(f"{prefix}{mark} {result.name} -> {result.output}{detail}", file=sys.stderr, flush=True)


def _single_file_output(args, cases) -> Path | None:
    out = Path(args.output)
    if len(cases) == 1 and any(out.name.lower().endswith("." + f) for f in (*LABEL_FORMATS, "tiff")):
        return out
    return None


def run(args) -> int:
    from ..batch import expand_inputs, run_cases, write_manifest
    from .progressbar import TerminalProgress

    cases = expand_inputs(args.inputs)
    if not cases:
        raise MedsegError("The inputs hold no images")
    single = _single_file_output(args, cases)
    kwargs = _prompt_kwargs(args)
    if single is not None:
        return _run_single(args, cases[0], single, kwargs)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedsegError(f"{out_dir} is a file; give a folder for {len(cases)} inputs")
    start = time.perf_counter()
    done = []

    def on_case(result):
        done.append(result)
        _print_case(result, len(done), len(cases))

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.devices:
        results, device = _run_on_devices(args, cases, out_dir, kwargs)
    elif world > 1:
        results, device = _run_torchrun(args, cases, out_dir, kwargs, on_case)
        if results is None:
            return 0  # not rank 0: rank 0 reports
    else:
        device = args.device
        results = run_cases(cases, out_dir, args.model, weights=args.weights, device=args.device, fmt=args.format,
                            overwrite=args.overwrite, segment_kwargs=kwargs, on_case=on_case,
                            progress=TerminalProgress(), load_options=_load_options(args))
    from ..models.checkpoint import sha256_of
    from ..models.registry import get_card
    from ..models.weights import weights_path

    sha = sha256_of(args.weights or weights_path(get_card(args.model)))
    manifest = Path(args.manifest) if args.manifest else out_dir / "medseg_run.json"
    write_manifest(manifest, args.model, sha, str(device), results, time.perf_counter() - start)
    failed = [r for r in results if r.status == "failed"]
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; manifest: {manifest}")
    for r in failed:
        print(f"failed: {r.source}: {r.error}")
    return 1 if failed else 0


def _run_single(args, case, target: Path, kwargs) -> int:
    from ..io import read_image, write_labels
    from ..models.load import load_model
    from ..segmentation import segment
    from .progressbar import TerminalProgress

    image = read_image(case.source)
    loaded = load_model(args.model, weights=args.weights, device=args.device, **_load_options(args))
    result = segment(image, loaded, progress=TerminalProgress(), **kwargs)
    names = loaded.classes or {0: "background", 1: "object"}
    out = write_labels(result, image, target, label_names=names)
    values = [int(v) for v in set(result.ravel().tolist()) if v]
    counts = ", ".join(f"{names.get(v, v)}: {int((result == v).sum())} voxels" for v in sorted(values))
    print(f"wrote {out} ({counts or 'empty'})")
    return 0


def _device_worker(job):
    from ..batch import run_cases

    cases, out_dir, args_dict, kwargs, device = job
    return run_cases(cases, out_dir, args_dict["model"], weights=args_dict["weights"], device=device,
                     fmt=args_dict["format"], overwrite=args_dict["overwrite"], segment_kwargs=kwargs,
                     on_case=lambda r: _print_case(r, 0, 0))


def _run_on_devices(args, cases, out_dir, kwargs):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    devices = [f"cuda:{d}" if d.isdigit() else d for d in (d.strip() for d in args.devices.split(",")) if d]
    from ..device import resolve_device

    for d in devices:
        resolve_device(d)
    args_dict = {"model": args.model, "weights": args.weights, "format": args.format, "overwrite": args.overwrite}
    jobs = [(cases[i::len(devices)], out_dir, args_dict, kwargs, d) for i, d in enumerate(devices)]
    with ProcessPoolExecutor(len(devices), mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_device_worker, jobs))
    return [r for part in parts for r in part], ",".join(devices)


def _run_torchrun(args, cases, out_dir, kwargs, on_case):
    """Under torchrun: rank r takes every WORLD_SIZE-th case on cuda:LOCAL_RANK; rank 0 gathers."""
    import torch
    import torch.distributed as dist

    from ..batch import run_cases

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dist.init_process_group("gloo")
    try:
        mine = run_cases(cases[rank::world], out_dir, args.model, weights=args.weights, device=device,
                         fmt=args.format, overwrite=args.overwrite, segment_kwargs=kwargs, on_case=on_case)
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return None, device
    return [r for part in gathered for r in part], f"{world} ranks"

"""`medseg segment`: one image or a whole cohort, labels written in each input's geometry."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..batch import LABEL_FORMATS, CaseResult, format_choices
from ..cli import warn
from ..errors import MedsegError, PromptError
from ..inference.precision import PRECISIONS
from ..inference.zoom import ZOOM_CHOICES


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
    parser.add_argument("--zoom", choices=ZOOM_CHOICES, default="auto",
                        help="box models: predict in a crop around the box, read from the image alone. auto (default): "
                        "where the slice would be shrunk more than 2x to fit the model's input (e.g. > 512 px for "
                        "LiteMedSAM, > 2048 px for SAM), elsewhere the full-image recipe; on: always; off: never")
    parser.add_argument("--format", choices=format_choices(), metavar="FORMAT",
                        help="nifti, nrrd, seg-nrrd (3D Slicer), mha, dicom-seg, rtstruct, png or tiff (default: from -o's "
                        "name, e.g. .dcm is DICOM-SEG, .seg.nrrd 3D Slicer; for folders the input's, nii.gz for DICOM)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    parser.add_argument("--manifest", help="run manifest JSON (default: OUTPUT_FOLDER/medseg_run.json)")
    parser.add_argument("--no-mirroring", action="store_true",
                        help="fast: skip the test-time flips of automatic 2-D models (nnU-Net mirrors by default; "
                        "a quarter of the work, labels may differ)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--devices", help="split the cases over these devices, one process each: CUDA indices "
                        "(0,1) or device names (cuda:0,cpu)")
    parser.add_argument("--server", action="append", default=[], metavar="URL",
                        help="run on a 'medseg serve' server (repeatable: the least busy is used); the token comes "
                        "from MEDSEG_SERVER_TOKEN or --token-file")
    parser.add_argument("--token-file", help="file holding the server's token (with --server)")


def _prompt_kwargs(args) -> dict:
    points = [_numbers(p, "point") for p in args.point] + [_numbers(p, "negative-point") for p in args.negative_point]
    return {
        "box": _numbers(args.box, "box") if args.box else None,
        "points": points or None,
        "point_labels": ([1] * len(args.point) + [0] * len(args.negative_point)) or None,
        "report": args.report,
        "propagate": args.propagate,
        "precision": args.precision,
        "zoom": args.zoom,
        "structures": [int(s) if s.strip().isdigit() else s.strip() for s in args.structures.split(",")]
        if args.structures else None,
        "mirroring": False if args.no_mirroring else None,
    }


def _load_options(args) -> dict:
    return {"tokenizer": args.tokenizer} if args.tokenizer else {}


def _print_case(result: CaseResult, index: int, total: int) -> None:
    mark = {"done": "ok  ", "skipped": "skip", "failed": "FAIL"}[result.status]
    detail = f" ({result.error})" if result.error else f" {result.seconds:.1f} s"
    prefix = f"[{index}/{total}] " if total else ""
    print(f"{prefix}{mark} {result.name} -> {result.output}{detail}", file=sys.stderr, flush=True)
    for message in result.warnings:
        warn(f"{result.name}: {message}")


def _single_file_output(args, cases) -> Path | None:
    """The labels file ``-o`` names (one input), or None when it names a folder. A file name for several
    inputs, or an image suffix that cannot hold labels (``mask.jpg``: lossy), is refused, not made a folder."""
    from ..io.formats import READ_FORMATS, suffix_of
    from ..io.label_formats import format_of

    out = Path(args.output)
    if out.is_dir() and format_of(out) != "ome-zarr":  # OUT.zarr: a labels container, or the image's own OME-Zarr
        return None
    if format_of(out) is not None:
        if len(cases) != 1:
            raise MedsegError(f"-o {out} names one file, but the inputs hold {len(cases)} images: give a folder")
        return out
    suffix = suffix_of(out)
    if suffix in READ_FORMATS or suffix in (".gif", ".webp", ".jp2"):
        raise MedsegError(f"-o {out.name}: {suffix} files cannot hold labels (lossy or not a label format); "
                          f"use .{', .'.join(LABEL_FORMATS)} or a folder")
    return None


def _check_outputs(args, single: Path | None, cases) -> Path | None:
    """Refuse unwritable outputs before any model loads; returns the manifest path (cohorts)."""
    from ..cli import check_output_folder
    from ..io.label_formats import format_of

    if single is not None:
        if single.is_dir() and format_of(single) != "ome-zarr":
            raise MedsegError(f"-o {single} is a folder; give a file name or use it as the output folder")
        check_output_folder(single.parent, "-o")
        return None
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedsegError(f"{out_dir} is a file; give a folder for {len(cases)} inputs")
    check_output_folder(out_dir, "-o", create=True)
    manifest = Path(args.manifest) if args.manifest else out_dir / "medseg_run.json"
    if manifest.is_dir():
        raise MedsegError(f"--manifest {manifest} is a folder; give a file name")
    check_output_folder(manifest.parent, "--manifest", create=True)
    return manifest


def run(args) -> int:
    from ..batch import expand_inputs, run_cases, write_manifest
    from ..segmentation import check_prompts
    from .progressbar import TerminalProgress

    kwargs = _prompt_kwargs(args)
    check_prompts(None, kwargs["box"], kwargs["points"], kwargs["point_labels"])
    client = _connect(args)
    cases = expand_inputs(args.inputs)
    if not cases:
        raise MedsegError("The inputs hold no images")
    single = _single_file_output(args, cases)
    manifest = _check_outputs(args, single, cases)
    if single is not None:
        return _run_single(args, cases[0], single, kwargs, client)
    out_dir = Path(args.output)
    start = time.perf_counter()
    done = []

    def on_case(result):
        done.append(result)
        _print_case(result, len(done), len(cases))

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if client is not None:
        device = client.url
        results = run_cases(cases, out_dir, args.model, fmt=args.format, overwrite=args.overwrite,
                            segment_kwargs=kwargs, on_case=on_case, progress=TerminalProgress(), server=client)
    elif args.devices:
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

    sha = None if client is not None else sha256_of(args.weights or weights_path(get_card(args.model)))
    write_manifest(manifest, args.model, sha, str(device), results, time.perf_counter() - start)
    failed = [r for r in results if r.status == "failed"]
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; manifest: {manifest}")
    for r in failed:
        print(f"failed: {r.source}: {r.error}")
    return 1 if failed else 0


def _connect(args):
    """The server client (None without --server), its token checked against the server before any image is read."""
    if not args.server:
        if args.token_file:
            raise MedsegError("--token-file is for --server")
        return None
    for option, value in (("--weights", args.weights), ("--devices", args.devices), ("--tokenizer", args.tokenizer)):
        if value:
            raise MedsegError(f"{option} cannot be used with --server (the server has its own weights and devices)")
    if args.device not in ("auto", ""):
        raise MedsegError("--device cannot be used with --server (medseg serve --devices chooses)")
    from ..server.client import Client

    client = Client(args.server, token_file=args.token_file)
    client.connect()  # a wrong token, or no server: one line now
    return client


def _run_single(args, case, target: Path, kwargs, client=None) -> int:
    from ..io import read_image, write_labels
    from ..models.load import load_model
    from ..models.registry import get_card
    from ..io.label_formats import NAMES, check_target, format_of
    from ..segmentation import check_prompts, segment
    from .progressbar import TerminalProgress

    image = read_image(case.source)
    for message in image.metadata.get("warnings", []):
        warn(f"{case.source.name}: {message}")
    check_prompts(image, kwargs["box"], kwargs["points"], kwargs["point_labels"], get_card(args.model).task)
    fmt = args.format if args.format in NAMES else None
    check_target(image, target, fmt)  # before the model loads
    if client is not None:
        with client.open(image) as session:
            result = session.segment(args.model, progress=TerminalProgress(), **kwargs)
        names = session.classes or {0: "background", 1: "object"}
    else:
        loaded = load_model(args.model, weights=args.weights, device=args.device, **_load_options(args))
        if image.metadata.get("lazy") and image.ndim == 2 and format_of(target, fmt) == "ome-zarr" and \
                loaded.task == "auto2d":  # a slide: block by block, labels straight into the OME-Zarr
            from ..inference.tiled import predict_auto2d_to_zarr

            report = predict_auto2d_to_zarr(loaded, image, target, progress=TerminalProgress(),
                                            device=args.device, mirroring=kwargs["mirroring"],
                                            precision=kwargs["precision"])
            print(f"wrote {target} ({report.chunks_written} label chunks, block by block)")
            return 0
        result = segment(image, loaded, progress=TerminalProgress(), **kwargs)
        names = loaded.classes or {0: "background", 1: "object"}
    out = write_labels(result, image, target, label_names=names, fmt=fmt)
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

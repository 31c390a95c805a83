"""`medseg segment`: segment an image and write the labels in its geometry."""
from __future__ import annotations

from pathlib import Path

from ..errors import PromptError


def _numbers(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise PromptError(f"--{name} takes comma-separated numbers, got {text!r}") from None


def add_arguments(parser) -> None:
    parser.add_argument("input", help="image file or DICOM folder")
    parser.add_argument("-o", "--output", required=True, help="labels file (.nii.gz, .nrrd, .mha, .png, .tif)")
    parser.add_argument("--model", default="lite-medsam", help="model id (default: lite-medsam)")
    parser.add_argument("--weights", help="weights file (default: the installed weights of --model)")
    parser.add_argument("--box", help="x0,y0,x1,y1[,z] in pixels; z is the slice index of a volume")
    parser.add_argument("--point", action="append", default=[], help="x,y[,z] object point (repeatable)")
    parser.add_argument("--negative-point", action="append", default=[], help="x,y[,z] background point")
    parser.add_argument("--propagate", action="store_true", help="extend a box mask through neighbouring slices")
    parser.add_argument("--report", help="lesion report for text-guided models")
    parser.add_argument("--series", help="DICOM SeriesInstanceUID (default: the largest series)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")


def run(args) -> int:
    from ..io import read_image, write_labels
    from ..models.load import load_model
    from ..segment import segment
    from .progressbar import TerminalProgress

    image = read_image(args.input, series=args.series) if args.series else read_image(args.input)
    loaded = load_model(args.model, weights=args.weights, device=args.device)
    points = [_numbers(p, "point") for p in args.point] + [_numbers(p, "negative-point") for p in args.negative_point]
    labels = [1] * len(args.point) + [0] * len(args.negative_point)
    result = segment(
        image, loaded,
        box=_numbers(args.box, "box") if args.box else None,
        points=points or None, point_labels=labels or None,
        report=args.report, propagate=args.propagate, progress=TerminalProgress(),
    )
    names = loaded.classes or {0: "background", 1: "object"}
    out = write_labels(result, image, Path(args.output), label_names=names)
    counts = {int(v): int((result == v).sum()) for v in set(result.ravel().tolist()) if v}
    print(f"wrote {out} ({', '.join(f'{names.get(k, k)}: {n} voxels' for k, n in counts.items()) or 'empty'})")
    return 0

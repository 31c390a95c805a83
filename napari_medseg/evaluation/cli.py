"""`medseg evaluate PRED GT`: metrics per case and class, a summary, CSV/JSON tables and an HTML report."""
from __future__ import annotations

import argparse
import sys

from ..cli import warn
from ..errors import MedsegError

TABLE_METRICS = (("dice", "Dice"), ("iou", "IoU"), ("hd95", "HD95"), ("assd", "ASSD"), ("nsd", "NSD"))


def parse_labels(text: str):
    """``all``, ``1,2,3`` or ``1=liver,2=spleen``."""
    if text.strip().lower() == "all":
        return "all"
    classes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        value, _, name = item.partition("=")
        try:
            label = int(value)
        except ValueError:
            raise MedsegError(
                f"--labels takes 'all' or label values such as 1,2 or 1=liver,2=spleen; got {item!r}"
            ) from None
        classes[name.strip() or str(label)] = label
    return classes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred", help="predicted label map, or a folder of them")
    parser.add_argument("gt", help="ground-truth label map, or a folder of them (matched by file name)")
    parser.add_argument("--labels", help="label values to measure: 1,2 or 1=liver,2=spleen or 'all' "
                                         "(default: every non-zero voxel is foreground)")
    parser.add_argument("--csv", metavar="FILE", help="write the per-case, per-class table")
    parser.add_argument("--json", metavar="FILE", help="write per-case values and the summary")
    parser.add_argument("--nsd-tolerance", type=float, default=1.0, metavar="MM",
                        help="normalised surface Dice tolerance in mm, or pixels for images without spacing "
                             "(default: 1)")
    parser.add_argument("--report", metavar="FILE.html", help="write an HTML report with plots and overlays")
    parser.add_argument("--image", metavar="DIR_OR_FILE",
                        help="images to draw the report's overlays on (name.ext or name_0000.ext; default: the GT)")
    parser.epilog = ("Exit status: 0 when every GT case was evaluated, 1 when predictions were missing or "
                     "cases failed (the outputs are still written), 2 on errors.")


def _cell(stats: dict) -> str:
    if stats["n"] == 0:
        return "-"
    return f"{stats['mean']:.3f} ± {stats['sd']:.3f}" if stats["n"] > 1 else f"{stats['mean']:.3f}"


def format_summary(evaluation) -> str:
    """A plain-text summary table: mean ± SD per class; n counts the cases with a defined Dice."""
    unit = evaluation.distance_unit
    headers = ["class", "n"] + [
        f"{title} ({unit})" if key in ("hd95", "assd") else
        f"NSD@{evaluation.nsd_tolerance:g}{unit}" if key == "nsd" else title
        for key, title in TABLE_METRICS
    ]
    rows = [[name, str(stats["dice"]["n"])] + [_cell(stats[key]) for key, _ in TABLE_METRICS]
            for name, stats in evaluation.summary().items()]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [headers, *rows])


def check_outputs(args) -> None:
    """Refuse, before the evaluation, an output file whose folder is missing or not writable."""
    from pathlib import Path

    from ..cli import check_output_folder

    for option in ("csv", "json", "report"):
        path = getattr(args, option)
        if path:
            if Path(path).is_dir():
                raise MedsegError(f"--{option} {path} is a folder; give a file name")
            check_output_folder(Path(path).parent, f"--{option}")


def run(args) -> int:
    from ..cli_commands.progressbar import TerminalProgress
    from .evaluate import evaluate

    labels = parse_labels(args.labels) if args.labels else None
    check_outputs(args)
    evaluation = evaluate(args.pred, args.gt, labels=labels, nsd_tolerance=args.nsd_tolerance,
                          progress=TerminalProgress())
    print(format_summary(evaluation))
    for name in evaluation.missing:
        print(f"missing prediction: {name}", file=sys.stderr)
    for name, reason in evaluation.failed.items():
        print(f"failed: {name}: {reason}", file=sys.stderr)
    if evaluation.unmatched:
        shown = ", ".join(evaluation.unmatched[:5]) + (" ..." if len(evaluation.unmatched) > 5 else "")
        print(f"ignored {len(evaluation.unmatched)} prediction(s) without ground truth: {shown}", file=sys.stderr)
    for note in evaluation.notes:
        print(f"note: {note}", file=sys.stderr)
    for message in evaluation.warnings:
        warn(message)
    try:
        for path, write in ((args.csv, evaluation.write_csv), (args.json, evaluation.write_json)):
            if path:
                print(f"wrote {write(path)}")
        if args.report:
            from .report import write_report

            print(f"wrote {write_report(evaluation, args.report, images=args.image)}")
    except OSError as exc:
        raise MedsegError(f"Cannot write {exc.filename or 'the output'}: {exc.strerror or exc}") from None
    return 0 if evaluation.complete else 1

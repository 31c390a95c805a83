"""`medseg convert`: a label file re-written in another format on an image's grid (e.g. NIfTI -> DICOM-SEG)."""
from __future__ import annotations

from pathlib import Path

from ..errors import MedsegError


def add_arguments(parser) -> None:
    from ..io.label_formats import NAMES

    parser.add_argument("labels", help="label map: NIfTI, NRRD, seg.nrrd, MHA, DICOM-SEG, RTSTRUCT, PNG or TIFF")
    parser.add_argument("--like", required=True, help="the image the labels belong to (file or DICOM folder); "
                        "labels on another grid are resampled onto it (nearest neighbour)")
    parser.add_argument("-o", "--output", required=True, help="labels file to write (.dcm is DICOM-SEG, "
                        ".seg.nrrd 3D Slicer, .nii.gz NIfTI with a label table, ...)")
    parser.add_argument("--format", choices=NAMES, help="output format (default: from the output's name)")
    parser.add_argument("--names", help="label names, e.g. 1=liver,2=spleen (default: the labels file's)")
    parser.add_argument("--seg-type", choices=("BINARY", "LABELMAP"), default="BINARY",
                        help="DICOM-SEG type (default BINARY; LABELMAP needs a DICOM 2024 viewer)")


def parse_names(text: str) -> dict[int, str]:
    names = {}
    for item in text.split(","):
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip() or int(value) == 0:
            raise MedsegError(f"--names takes VALUE=NAME pairs with values above 0, e.g. 1=liver,2=spleen; "
                              f"got {item.strip()!r}")
        names[int(value)] = name.strip()
    return names


def run(args) -> int:
    from ..cli import check_output_folder
    from ..io.convert import convert_labels
    from ..io.label_formats import require_format

    names = parse_names(args.names) if args.names else None
    out = Path(args.output)
    require_format(out, args.format)
    check_output_folder(out.parent, "convert -o")
    for path, what in ((args.labels, "labels"), (args.like, "--like")):
        if not Path(path).exists():
            raise MedsegError(f"{what}: {path} does not exist")
    written = convert_labels(args.labels, args.like, out, fmt=args.format, label_names=names,
                             dicom_seg_type=args.seg_type)
    print(f"wrote {written}")
    return 0

"""`medseg models`: the registry and its weights."""
from __future__ import annotations

import sys

from ..errors import CheckpointError
from ..models.registry import TASK_LABELS, get_card, list_cards


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", help="every model with the status of its weights (default)")
    install = sub.add_parser("install", help="install weights: from a FILE you downloaded, else from the official URL")
    install.add_argument("model", help="model id (see 'medseg models')")
    install.add_argument("file", nargs="?", help="the downloaded weights file")
    install.add_argument("--link", action="store_true", help="link to FILE instead of copying it")
    install.add_argument("--force", action="store_true", help="install even if the sha256 differs from the published one")
    verify = sub.add_parser("verify", help="re-hash installed weights")
    verify.add_argument("model", nargs="*", help="model ids (default: all installed)")


def run(args) -> int:
    from ..models import weights

    action = args.action or "list"
    if action == "list":
        rows = [("ID", "MODEL", "TASK", "WEIGHTS", "FILE")]
        for card in list_cards():
            try:
                status = weights.weight_status(card)
            except CheckpointError as exc:  # one model's damaged install record must not hide the others
                print(f"medseg: warning: {exc}", file=sys.stderr)
                status = weights.WeightStatus("damaged", None)
            rows.append((card.id, card.name, TASK_LABELS[card.task], status.state, str(status.path or card.weight.file)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
        return 0
    if action == "install":
        card = get_card(args.model)
        bundled = weights.bundled_path(card.weight)
        if not args.file and bundled is not None:
            print(f"{card.id}: the weights are bundled with {card.weight.bundled['package']} ({bundled}); "
                  "nothing to install")
            return 0
        if args.file:
            path = weights.install_from_file(card, args.file, link=args.link, force=args.force)
        else:
            from .progressbar import TerminalProgress

            path = weights.download(card, progress=TerminalProgress())
        print(f"installed {card.id}: {path}")
        return 0
    failed = 0
    cards = [get_card(m) for m in args.model] if args.model else list_cards()
    for card in cards:
        status = weights.verify(card)
        if args.model or status.state != weights.MISSING:
            print(f"{card.id:<20} {status.state:<14} {status.detail}")
        failed += status.state == weights.MISMATCH or (bool(args.model) and status.state == weights.MISSING)
    return 1 if failed else 0

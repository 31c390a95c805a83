"""``python -m napari_medseg.training`` (alone or under ``torchrun``): the arguments of ``medseg train``.

SIGTERM (the Fine-tune widget's Cancel) stops at the next step, saves the resumable state and exits
with code 130; the next run with the same ``--out`` continues from there.
"""
from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    from napari_medseg.cli_commands import train
    from napari_medseg.errors import Cancelled, MedsegError

    parser = argparse.ArgumentParser(prog="python -m napari_medseg.training", description=__doc__.splitlines()[0])
    train.add_arguments(parser)
    args = parser.parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        return train.run(args, cancel=lambda: bool(stop))
    except (Cancelled, KeyboardInterrupt):
        print("training cancelled; run the same command again to resume", file=sys.stderr)
        return 130
    except MedsegError as exc:
        print(f"medseg train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

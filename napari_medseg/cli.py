"""`medseg`: one entry point with subcommands; each is a thin shell over the core."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import warnings
from pathlib import Path

from .errors import MedsegError

# subcommand -> (module with add_arguments(parser) and run(args) -> int, one-line help)
SUBCOMMANDS = {
    "demo": ("napari_medseg.cli_commands.demo", "open napari with the plugin and a sample image"),
    "info": ("napari_medseg.cli_commands.info", "versions, devices, weights folder, optional dependencies"),
    "models": ("napari_medseg.cli_commands.models", "list, install and verify model weights"),
    "segment": ("napari_medseg.cli_commands.segment", "segment an image and write labels in its geometry"),
    "convert": ("napari_medseg.cli_commands.convert", "re-write a label file in another format on an image's grid"),
    "evaluate": ("napari_medseg.evaluation.cli", "compare predicted and reference label maps"),
    "train": ("napari_medseg.cli_commands.train", "fine-tune or train a model on labelled images"),
    "serve": ("napari_medseg.cli_commands.serve", "serve the models to napari, the CLI and scripts on other machines"),
}


def warn(message: str) -> None:
    """One stderr line for something the user should know (a read warning, a skipped file)."""
    print(f"medseg: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    warn(message)


def check_output_folder(folder: str | Path, what: str, *, create: bool = False) -> None:
    """Refuse, in one line, an output folder that is missing (unless ``create``: then its nearest existing
    parent must take new entries), is a file, or is not writable; a probe file tests writability (root
    and read-only mounts make permission bits unreliable)."""
    folder = Path(folder)
    existing = folder
    if create:
        existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.exists():
        raise MedsegError(f"{what}: folder {folder} does not exist")
    if not existing.is_dir():
        raise MedsegError(f"{what}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".medseg-probe-", dir=existing)
    except OSError as exc:
        raise MedsegError(f"{what}: cannot write in {existing} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description="napari-medseg: medical image segmentation")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        # only the chosen subcommand's module is imported, so `medseg --help` stays instant
        if name == chosen:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise MedsegError(f"'medseg {name}' is not available: {exc}") from None
            module.add_arguments(command)
            command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    shown, warnings.showwarning = warnings.showwarning, _show_warning  # library warnings: one line each too
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if args.version:
            from . import __version__

            print(__version__)
            return 0
        if not getattr(args, "run", None):
            parser.print_help()
            return 0
        return int(args.run(args) or 0)
    except MedsegError as exc:
        print(f"medseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medseg: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())

"""`medseg train`: fine-tune a model on labelled images (folders or an annotation store) and register it.

The same arguments work for ``python -m napari_medseg.training`` and under
``torchrun --nproc_per_node=N -m napari_medseg.training`` (DistributedDataParallel).
"""
from __future__ import annotations

import os

from napari_medseg.inference.precision import PRECISIONS


def add_arguments(parser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--images", help="nnU-Net raw dataset folder (or its imagesTr), or a folder of images")
    data.add_argument("--labels", help="folder of label files named like the images (or labelsTr)")
    data.add_argument("--from-store", metavar="PROJECT", help="annotation store project folder (instead of folders)")
    data.add_argument("--val-fraction", type=float, default=0.2, help="held-out share (at least one case; default 0.2)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="registry id of the model to fine-tune (see 'medseg models')")
    model.add_argument("--init", metavar="FILE", help="start from this weights file instead of the registry's")
    model.add_argument("--scratch", action="store_true", help="start from a new network (automatic models)")
    model.add_argument("--train-encoder", action="store_true", help="prompt models: fine-tune the image encoder too")
    model.add_argument("--arch", action="append", default=[], metavar="KEY=VALUE",
                       help="new networks: e.g. patch_size=256,224 feature_size=24 roi_size=96,96,96 spacing=1.5,1.5,1.5")
    model.add_argument("--name", metavar="NEW_ID", help="id of the registered result (default: <model>-ft-<date>)")
    model.add_argument("--no-register", action="store_true", help="only write the weights file into --out")
    model.add_argument("--register-worse", action="store_true",
                       help="register the result even if it validates worse than the starting model")
    budget = parser.add_argument_group("budget (whichever ends first; default 10 epochs)")
    budget.add_argument("--epochs", type=int)
    budget.add_argument("--steps", type=int)
    budget.add_argument("--time", type=float, metavar="MINUTES", help="wall-clock limit in minutes")
    budget.add_argument("--steps-per-epoch", type=int, help="default: one pass over the samples (at most 250)")
    budget.add_argument("--patience", type=int, default=20, help="epochs without improvement before stopping (0: never)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, default=4, help="per GPU/process (default 4)")
    opt.add_argument("--lr", type=float, default=1e-4)
    opt.add_argument("--weight-decay", type=float, default=0.01)
    opt.add_argument("--schedule", choices=("cosine", "poly"), default="cosine")
    opt.add_argument("--warmup", type=float, default=0.05, help="warm-up share of the budget")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    parser.add_argument("--precision", choices=PRECISIONS, default="faithful",
                        help="precision of the evaluation on the held-out cases: faithful (default, float32) or fast "
                        "(what 'medseg segment --precision fast' runs)")
    opt.add_argument("--workers", type=int, default=0, help="batch-preparing worker processes")
    parser.add_argument("--out", required=True, help="output folder: checkpoints, metrics.json, model/")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (torchrun: one GPU per process)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out holds an interrupted run")


def _architecture(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; numbers stay numbers, true/false become booleans, comma-separated values lists."""
    from napari_medseg.errors import MedsegError

    def number(text: str):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text

    architecture = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MedsegError(f"--arch takes KEY=VALUE, got {item!r}")
        architecture[key] = [number(v) for v in value.split(",")] if "," in value else number(value)
    return architecture


def check_args(args) -> None:
    """Refuse impossible budgets, rates and output paths in one line, before any data or model loads."""
    import math

    from napari_medseg.cli import check_output_folder
    from napari_medseg.errors import MedsegError

    positive_ints = ("epochs", "steps", "steps_per_epoch", "batch_size")
    for name in positive_ints:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise MedsegError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("patience", "workers"):
        if getattr(args, name) < 0:
            raise MedsegError(f"--{name} must be 0 or more, got {getattr(args, name)}")
    checks = {  # name -> (value ok?, what it must be)
        "lr": (lambda v: math.isfinite(v) and v > 0, "a positive number"),
        "weight_decay": (lambda v: math.isfinite(v) and v >= 0, "0 or a positive number"),
        "time": (lambda v: math.isfinite(v) and v > 0, "a positive number of minutes"),
        "warmup": (lambda v: 0 <= v < 1, "a share from 0 up to (not including) 1"),
        "val_fraction": (lambda v: 0 < v < 1, "a share between 0 and 1 (exclusive)"),
    }
    for name, (ok, what) in checks.items():
        value = getattr(args, name)
        if value is not None and not ok(value):
            raise MedsegError(f"--{name.replace('_', '-')} must be {what}, got {value}")
    check_output_folder(args.out, "--out", create=True)  # the run creates --out and its checkpoints


def config_from_args(args):
    from napari_medseg.training.families import TrainOptions
    from napari_medseg.training.trainer import TrainConfig

    config = TrainConfig(
        epochs=args.epochs, steps=args.steps, time_limit=args.time * 60 if args.time else None,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup=args.warmup, schedule=args.schedule, seed=args.seed, amp=not args.no_amp,
        patience=args.patience or None, workers=args.workers,
    )
    return config, TrainOptions(train_encoder=args.train_encoder, architecture=_architecture(args.arch),
                                precision=args.precision)


def run(args, cancel=None) -> int:
    from napari_medseg.cli import warn
    from napari_medseg.errors import MedsegError

    if args.from_store and (args.images or args.labels):
        raise MedsegError("Use either --from-store or --images/--labels, not both")
    check_args(args)

    from napari_medseg.training import distributed
    from napari_medseg.training.pipeline import fine_tune

    from .progressbar import TerminalProgress

    config, options = config_from_args(args)
    main = not distributed.launched_by_torchrun() or os.environ.get("RANK", "0") == "0"
    summary = fine_tune(
        args.model, args.out, store=args.from_store, images=args.images, labels=args.labels, init=args.init,
        scratch=args.scratch, config=config, options=options, device=args.device, name=args.name,
        register=not args.no_register, val_fraction=args.val_fraction, resume=not args.no_resume,
        progress=TerminalProgress() if main else None, cancel=cancel, log=print if main else (lambda *_: None),
        warn=warn if main else (lambda *_: None), register_worse=args.register_worse,
    )
    if main:
        print(f"weights: {summary['weights']}")
        if summary["model_id"]:
            print(f"model: {summary['model_id']} (use --model {summary['model_id']} with medseg segment)")
    return 0

"""`fine_tune`: data -> split -> initial model -> adapter -> trainer -> family-format file -> registry.

One function behind ``medseg train``, ``python -m napari_medseg.training`` (also under torchrun) and
the Fine-tune widget's subprocess.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from napari_medseg.errors import MedsegError

from . import distributed
from .datasets import Case, cases_from_folders, cases_from_store, class_names, data_hash, split_cases
from .families import TrainOptions, make_adapter, scratch_model
from .metrics import update_metrics
from .trainer import TrainConfig, check_resume, train


def initial_model(card, init: str | Path | None = None, scratch: bool = False, cases: list[Case] | None = None,
                  architecture: dict | None = None):
    """The model training starts from: ``init`` (a weights file), the registry's weights, or a new network
    shaped for ``cases``."""
    from napari_medseg.models.families import load_checkpoint
    from napari_medseg.models.weights import weights_path

    if scratch:
        return scratch_model(card, cases, architecture=architecture)
    path = Path(init).expanduser() if init else weights_path(card)
    if not init and card.weight.role == "backbone":
        return scratch_model(card, cases, backbone=path, architecture=architecture)
    options = {}
    if getattr(card, "decoder_from", None):  # LVM-Med ViT: SAM's prompt encoder and mask decoder
        from napari_medseg.models.registry import get_card

        options["decoder"] = str(weights_path(get_card(card.decoder_from)))
    loaded = load_checkpoint(path, family=card.family, **options)
    if not loaded.classes:
        loaded.classes = card.class_names()
    return loaded


def load_cases(store: str | Path | None = None, images: str | Path | None = None, labels: str | Path | None = None,
               progress=None, cancel=None) -> tuple[list[Case], list[str], str]:
    """(cases, skipped-entry messages, a description of the source)."""
    if store:
        from .store import AnnotationStore

        project = AnnotationStore(store, create=False)
        cases = cases_from_store(project, progress=progress, cancel=cancel)
        return cases, list(project.problems), f"annotation store {project.folder}"
    if not images:
        raise MedsegError("Give --images (and --labels) or --from-store PROJECT")
    return cases_from_folders(images, labels), [], f"folders {images}" + (f" + {labels}" if labels else "")


def fine_tune(model: str, out_dir: str | Path, *, store=None, images=None, labels=None, cases: list[Case] | None = None,
              init=None, scratch: bool = False, config: TrainConfig | None = None, options: TrainOptions | None = None,
              device: str | None = None, name: str | None = None, register: bool = True, val_fraction: float = 0.2,
              resume: bool = True, progress=None, cancel=None, log=print, warn=None,
              register_worse: bool = False) -> dict:
    """Train ``model`` (a registry id) on the given data; returns a summary (rank 0 registers the result).

    A result whose best validation Dice is below the starting model's is saved but registered only
    with ``register_worse`` (the summary's ``not_registered`` says why).

    ``warn(message)`` receives what reading the data warned about, one message per warning (default:
    ``log("warning: ...")``).
    """
    context = distributed.setup(device)
    warn = warn or (lambda message: log(f"warning: {message}"))
    try:
        return _fine_tune(context, model, out_dir, store, images, labels, cases, init, scratch, config, options, name,
                          register, val_fraction, resume, progress, cancel, log, warn, register_worse)
    finally:
        distributed.cleanup()


def _fine_tune(context, model, out_dir, store, images, labels, cases, init, scratch, config, options, name, register,
               val_fraction, resume, progress, cancel, log, warn, register_worse) -> dict:
    from napari_medseg.models.registry import get_card

    from .register import check_model_id, default_model_id, register_model

    config = config or TrainConfig()
    options = options or TrainOptions()
    card = get_card(model)
    new_id = check_model_id(name) if name else None
    skipped, source = [], "cases given by the caller"
    if cases is None:
        cases, skipped, source = load_cases(store, images, labels, progress, cancel)
    for problem in skipped:
        log(f"skipped: {problem}")
    for case in cases:
        for message in case.warnings:
            warn(f"{case.name}: {message}")
    if not cases:
        raise MedsegError(f"No usable labelled images in the {source}")
    train_cases, val_cases = split_cases(cases, val_fraction, config.seed)
    on_training = any(case is held for case in train_cases for held in val_cases)  # a single 2-D image
    digest = data_hash(cases)
    fingerprint = {"model": card.id, "init": str(init) if init else ("scratch" if scratch else "registry"),
                   "data": digest, "val_fraction": val_fraction}
    if resume:  # an unusable or foreign interrupted run is refused before any model work
        check_resume(out_dir, {**fingerprint, "batch": config.batch_size, "world": context.world})
    loaded = initial_model(card, init, scratch, cases, options.architecture)
    adapter = make_adapter(loaded, card.id, context.device, options, class_names(cases))
    adapter.prepare(train_cases, val_cases, progress=progress, cancel=cancel)
    log(f"{card.id}: {adapter.sample_count()} training samples from {len(train_cases)} image(s), "
        f"{adapter.validation_count()} validation samples from {len(val_cases)}; device {context.device}"
        + (f" x {context.world} ranks" if context.world > 1 else ""))
    baseline = None
    if context.rank == 0 and not scratch:
        import torch

        adapter.eval_mode()
        with torch.no_grad():
            baseline = adapter.validate()
        log(f"validation Dice before training: {baseline:.4f}" if baseline is not None else "no validation samples")
    result = train(adapter, config, out_dir, resume=resume, fingerprint=fingerprint, progress=progress, cancel=cancel,
                   info={"baseline_dice": baseline, "base_model": card.id})
    summary = {"base_model": card.id, "family": adapter.family, "weights": str(result.weights) if result.weights else None,
               "baseline_dice": baseline, "best_dice": result.best_dice, "best_epoch": result.best_epoch,
               "epochs": result.epochs, "steps": result.steps, "elapsed_s": round(result.elapsed, 1),
               "stopped": result.stopped, "validation_on_training": on_training, "model_id": None}
    if context.rank == 0:
        log(f"trained {result.steps} steps ({result.epochs} epochs, stopped by {result.stopped}); best validation "
            f"Dice {result.best_dice if result.best_dice is None else round(result.best_dice, 4)}")
        worse = baseline is not None and result.best_dice is not None and result.best_dice < baseline
        if register and worse and not register_worse:
            summary["not_registered"] = (
                f"not registered: the best validation Dice {result.best_dice:.4f} is below the starting model's "
                f"{baseline:.4f}; the weights are in {result.weights} (pass --register-worse to register them)")
            log(summary["not_registered"])
        elif register:
            provenance = {
                "base_weights_sha256": loaded.sha256, "init": fingerprint["init"], "data_hash": digest,
                "data": {"source": source, "images": len(cases), "train_samples": adapter.sample_count(),
                         "validation_samples": adapter.validation_count()},
                "epochs": result.epochs, "steps": result.steps, "stopped": result.stopped,
                "metrics": {"val_dice_before": baseline, "val_dice_best": result.best_dice,
                            "best_epoch": result.best_epoch, "validation_on_training": on_training},
                "training": {k: v for k, v in asdict(config).items() if v is not None},
                "options": asdict(options),
                "devices": f"{context.device} x {context.world}",
            }
            registered = register_model(result.weights, model_id=new_id or default_model_id(card.id), base_card=card,
                                        family=adapter.family, task=adapter.task, classes=adapter.classes,
                                        provenance=provenance, input_spec=adapter.input_spec())
            summary["model_id"] = registered.id
            log(f"registered model {registered.id!r} ({registered.source})")
        update_metrics(Path(out_dir) / "metrics.json", status="finished", model_id=summary["model_id"], summary=summary,
                       not_registered=summary.get("not_registered"))
    return summary

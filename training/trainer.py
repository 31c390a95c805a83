"""The training loop shared by every family: AdamW with warm-up and a cosine or poly schedule, AMP on
CUDA, gradient clipping, deterministic seeds, validation Dice each epoch, best-checkpoint keeping,
early stopping, resume after an interruption, time/epoch/step budgets, progress and cancel
callbacks, and a metrics JSON file rewritten as training goes (a GUI plots it live).

Files in ``out_dir``: ``last.pt`` (everything needed to resume), ``best.pt`` (the best network
weights), ``metrics.json``. The family adapter (`families.py`) supplies the batches, the loss, the
validation and the final file in the family's own format.

Batches are a pure function of (seed, step): the sample order of each epoch is a seeded
permutation and every sample's augmentation has its own seeded generator, so a resumed run sees
exactly the batches the interrupted run would have seen, on any number of ranks.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from napari_medseg.errors import Cancelled, MedsegError
from napari_medseg.progress import CancelCheck, ProgressCallback

from . import distributed
from .metrics import MetricsFile


@dataclass
class TrainConfig:
    epochs: int | None = None  # budget: whichever of epochs, steps and time_limit ends first
    steps: int | None = None
    time_limit: float | None = None  # seconds
    steps_per_epoch: int | None = None  # default: one pass over the samples (at most 250, nnU-Net's epoch)
    batch_size: int = 4  # per rank
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of the budget
    schedule: str = "cosine"  # or "poly"
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    amp: bool = True  # CUDA only: bfloat16 where supported, else float16 with loss scaling
    patience: int | None = 20  # epochs without a better validation Dice before stopping
    min_delta: float = 1e-4
    workers: int = 0  # DataLoader worker processes preparing batches
    save_every: float = 300.0  # seconds between mid-epoch checkpoints

    def budget_text(self) -> str:
        parts = [f"{self.epochs} epochs" if self.epochs else "", f"{self.steps} steps" if self.steps else "",
                 f"{self.time_limit:.0f} s" if self.time_limit else ""]
        return ", ".join(p for p in parts if p)


def lr_factor(progress: float, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``progress`` (0..1) through the budget."""
    progress = min(max(progress, 0.0), 1.0)
    if config.warmup > 0 and progress < config.warmup:
        return max(progress / config.warmup, 1e-3)
    rest = (progress - config.warmup) / max(1 - config.warmup, 1e-8)
    if config.schedule == "poly":
        decayed = (1 - rest) ** 0.9
    elif config.schedule == "cosine":
        decayed = 0.5 * (1 + math.cos(math.pi * rest))
    else:
        raise MedsegError(f"Unknown schedule {config.schedule!r}: use cosine or poly")
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * decayed


def step_indices(count: int, step: int, steps_per_epoch: int, batch: int, rank: int, world: int, seed: int) -> np.ndarray:
    """Sample indices of ``rank``'s share of global batch ``step``: a seeded permutation per epoch."""
    epoch, position = divmod(step, steps_per_epoch)
    rng = np.random.default_rng([seed, epoch])
    needed = steps_per_epoch * batch * world
    order = np.concatenate([rng.permutation(count) for _ in range(math.ceil(needed / count))])
    start = (position * world + rank) * batch
    return order[start:start + batch]


class StepBatches(torch.utils.data.Dataset):
    """Batch number ``step`` of this rank, built by the adapter (CPU tensors); a DataLoader prefetches them."""

    def __init__(self, adapter, config: TrainConfig, steps_per_epoch: int, rank: int, world: int):
        self.adapter, self.config, self.steps_per_epoch = adapter, config, steps_per_epoch
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, step: int) -> dict:
        indices = step_indices(self.adapter.sample_count(), step, self.steps_per_epoch, self.config.batch_size,
                               self.rank, self.world, self.config.seed)
        rngs = [np.random.default_rng([self.config.seed, step, self.rank, i]) for i in range(len(indices))]
        return self.adapter.batch(indices.tolist(), rngs)


def _atomic_save(obj, path: Path) -> None:
    from .families import atomic_torch_save

    atomic_torch_save(obj, path)


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _load_resume_state(path: Path):
    from napari_medseg.models.checkpoint import read_checkpoint

    try:
        return read_checkpoint(path)
    except MedsegError as exc:
        raise MedsegError(f"Cannot resume from {path}: {exc}. Delete it or pass --no-resume.") from None


def _not_this_run(path: Path, exc: BaseException | str) -> MedsegError:
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return MedsegError(f"Cannot resume from {path}: it does not hold the state of this run ({reason}). "
                       "Delete it or pass --no-resume.")


def check_resume(out_dir: str | Path, fingerprint: dict) -> None:
    """Before any model work: an interrupted run in ``out_dir`` (``last.pt``, ``best.pt``) must be readable
    and of the data and settings in ``fingerprint`` (the keys given are compared)."""
    out_dir = Path(out_dir).expanduser()
    last_path = out_dir / "last.pt"
    if not last_path.is_file():
        return
    saved = _load_resume_state(last_path)
    theirs = saved.get("fingerprint") if isinstance(saved, dict) else None
    if not isinstance(theirs, dict):
        raise _not_this_run(last_path, "no run fingerprint")
    if any(theirs.get(key) != value for key, value in fingerprint.items()):
        raise MedsegError(f"{out_dir} holds a run with other data or settings ({theirs}); "
                          "choose another output folder or pass --no-resume")
    if (out_dir / "best.pt").is_file() and not isinstance(_load_resume_state(out_dir / "best.pt"), dict):
        raise _not_this_run(out_dir / "best.pt", "not a state dict")


@dataclass
class TrainResult:
    best_dice: float | None
    best_epoch: int | None
    epochs: int
    steps: int
    elapsed: float
    stopped: str  # budget, early stopping, time limit
    weights: Path | None  # the family-format file (rank 0)
    history: list


def train(adapter, config: TrainConfig, out_dir: str | Path, *, resume: bool = True, fingerprint: dict | None = None,
          progress: ProgressCallback | None = None, cancel: CancelCheck | None = None,
          info: dict | None = None) -> TrainResult:
    """Train ``adapter`` (prepared with its data) within ``config``'s budget; see the module docstring.

    ``info`` (plain values, e.g. the Dice before training) goes into the metrics file and the saved model.
    """
    out_dir = Path(out_dir).expanduser()
    context = distributed.current()
    main = context.rank == 0
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    device = context.device if context.world > 1 else adapter.device
    if not (config.epochs or config.steps or config.time_limit):
        config.epochs = 10
    count = adapter.sample_count()
    if count == 0:
        raise MedsegError("No training samples: label some objects on reviewed slices first")
    steps_per_epoch = config.steps_per_epoch or max(1, min(250, math.ceil(count / (config.batch_size * context.world))))
    total_steps = min(x for x in (config.steps, config.epochs and config.epochs * steps_per_epoch, 1 << 62) if x)
    total_epochs = math.ceil(total_steps / steps_per_epoch) if total_steps < 1 << 62 else None
    fingerprint = {**(fingerprint or {}), "family": adapter.family, "samples": count,
                   "batch": config.batch_size, "world": context.world}

    torch.manual_seed(config.seed)
    module = adapter.module.to(device)
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        raise MedsegError("Nothing to train: every parameter of the model is frozen")
    optimizer = torch.optim.AdamW(adapter.param_groups(config.lr), lr=config.lr, weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    cuda = device.type == "cuda"
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda and config.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    trained = distributed.wrap(module, context)

    state = {"step": 0, "elapsed": 0.0, "best_dice": None, "best_epoch": None, "stale_epochs": 0, "history": [],
             "loss_steps": []}
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last_path.is_file():
        saved = _load_resume_state(last_path)
        if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
            theirs = saved.get("fingerprint") if isinstance(saved, dict) else None
            raise MedsegError(f"{out_dir} holds a run with other data or settings ({theirs}); "
                              "choose another output folder or pass --no-resume")
        try:
            adapter.network.load_state_dict(saved["network"])
            optimizer.load_state_dict(saved["optimizer"])
            scaler.load_state_dict(saved["scaler"])
            state.update({k: saved[k] for k in state})
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise _not_this_run(last_path, exc) from None
    elif main:
        best_path.unlink(missing_ok=True)  # a new run: an earlier run's best network must not become this result
    resumed_at = state["step"]

    metrics = MetricsFile(out_dir / "metrics.json", family=adapter.family, model=adapter.model_id,
                          task=adapter.task, budget=config.budget_text(), steps=total_steps if total_epochs else None,
                          epochs=total_epochs, steps_per_epoch=steps_per_epoch, samples=count,
                          validation_cases=adapter.validation_count(), resumed_at=resumed_at,
                          history=list(state["history"]), loss_steps=list(state["loss_steps"]), **(info or {})) \
        if main else None

    def save_last() -> None:
        if main:
            _atomic_save({"fingerprint": fingerprint, "config": asdict(config), "network": _cpu_state(adapter.network),
                          "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                          **{k: state[k] for k in state}}, last_path)

    report_total = total_steps if total_epochs else int(config.time_limit)
    started = time.monotonic()
    elapsed_before = state["elapsed"]
    last_save = started
    stopped = "budget"
    log_every = max(1, steps_per_epoch // 10)

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - started

    def fraction() -> float:
        parts = [state["step"] / total_steps if total_epochs else 0.0,
                 elapsed() / config.time_limit if config.time_limit else 0.0]
        return min(1.0, max(parts))

    def eta() -> float | None:
        done = state["step"] - resumed_at
        if done <= 0:
            return config.time_limit - elapsed() if config.time_limit else None
        by_steps = (time.monotonic() - started) / done * (total_steps - state["step"]) if total_epochs else math.inf
        by_time = config.time_limit - elapsed() if config.time_limit else math.inf
        return max(0.0, min(by_steps, by_time))

    def report(message: str) -> None:
        if progress is not None:
            done = state["step"] if total_epochs else int(min(elapsed(), config.time_limit))
            progress(min(done, report_total), report_total, message)
        if cancel is not None and cancel():
            raise Cancelled("Training cancelled")

    try:
        if metrics:
            metrics.update(force=True, status="training", eta_s=eta())
        report("Training")
        epoch_losses: list[float] = []
        loader = None
        while state["step"] < total_steps:
            epoch, position = divmod(state["step"], steps_per_epoch)
            if loader is None:
                end = min((epoch + 1) * steps_per_epoch, total_steps)
                batches = StepBatches(adapter, config, steps_per_epoch, context.rank, context.world)
                loader = iter(torch.utils.data.DataLoader(
                    batches, batch_size=None, sampler=range(state["step"], end), num_workers=config.workers,
                    pin_memory=cuda))
            batch = next(loader)
            torch.manual_seed(hash((config.seed, state["step"], context.rank)) % (1 << 31))
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_factor(fraction(), config)
            adapter.train_mode()
            batch = adapter.to_device(batch, device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = trained(batch)
            if not torch.isfinite(loss):
                raise MedsegError(f"The loss became {loss.item()} at step {state['step']}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            state["step"] += 1
            epoch_losses.append(float(loss.detach()))
            if main and state["step"] % log_every == 0:
                state["loss_steps"].append([state["step"], float(np.mean(epoch_losses[-log_every:]))])
            out_of_time = config.time_limit is not None and distributed.any_true(elapsed() >= config.time_limit, context)
            epoch_end = state["step"] % steps_per_epoch == 0 or state["step"] >= total_steps or out_of_time
            if metrics:
                metrics.update(step=state["step"], epoch=epoch + 1, elapsed_s=elapsed(), eta_s=eta(),
                               lr=optimizer.param_groups[0]["lr"], loss=epoch_losses[-1],
                               loss_steps=list(state["loss_steps"]))
            report(f"Epoch {epoch + 1}" + (f"/{total_epochs}" if total_epochs else ""))
            if not epoch_end:
                if time.monotonic() - last_save > config.save_every:
                    state["elapsed"] = elapsed()
                    save_last()
                    last_save = time.monotonic()
                continue
            loader = None
            stop = _end_epoch(adapter, config, state, epoch, epoch_losses, elapsed(), optimizer, best_path, context)
            epoch_losses = []
            state["elapsed"] = elapsed()
            save_last()
            last_save = time.monotonic()
            if metrics:  # only what last.pt holds is reported as done
                metrics.update(force=True, eta_s=eta(), history=list(state["history"]),
                               best={"dice": state["best_dice"], "epoch": state["best_epoch"]})
            if stop:
                stopped = "early stopping"
                break
            if out_of_time:
                stopped = "time limit"
                break
    except (Cancelled, KeyboardInterrupt):
        state["elapsed"] = elapsed()
        save_last()
        if metrics:
            metrics.update(force=True, status="cancelled", message="Cancelled; run again to resume from here")
        raise
    except BaseException as exc:
        if metrics:
            metrics.update(force=True, status="failed", message=f"{type(exc).__name__}: {exc}")
        raise

    weights = None
    if main:
        metrics.update(force=True, status="saving", eta_s=0.0)
        if best_path.is_file():
            best = _load_resume_state(best_path)
            try:
                adapter.network.load_state_dict(best)
            except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
                raise _not_this_run(best_path, exc) from None
        extra = {"best_dice": state["best_dice"], "best_epoch": state["best_epoch"], "steps": state["step"],
                 "stopped": stopped, **(info or {})}
        weights = adapter.save(out_dir / "model" / adapter.weights_file, extra)
        metrics.update(force=True, status="trained", weights=str(weights), stopped=stopped)
    distributed.barrier(context)
    epochs_done = math.ceil(state["step"] / steps_per_epoch)
    return TrainResult(state["best_dice"], state["best_epoch"], epochs_done, state["step"], state["elapsed"], stopped,
                       weights, state["history"])


def _end_epoch(adapter, config, state, epoch, losses, elapsed, optimizer, best_path, context) -> bool:
    """Validate (rank 0), keep the best weights, record history; True when early stopping triggers."""
    dice = None
    if context.rank == 0:
        adapter.eval_mode()
        with torch.no_grad():
            dice = adapter.validate()
    dice = distributed.broadcast_float(dice, context)
    loss = distributed.mean_float(float(np.mean(losses)) if losses else float("nan"), context)
    improved = dice is not None and (state["best_dice"] is None or dice > state["best_dice"] + config.min_delta)
    if improved:
        state["best_dice"], state["best_epoch"], state["stale_epochs"] = dice, epoch + 1, 0
        if context.rank == 0:
            _atomic_save(_cpu_state(adapter.network), best_path)
    else:
        state["stale_epochs"] += 1
    state["history"].append({"epoch": epoch + 1, "step": state["step"], "loss": loss, "val_dice": dice,
                             "lr": optimizer.param_groups[0]["lr"], "elapsed_s": elapsed})
    return config.patience is not None and state["stale_epochs"] >= config.patience

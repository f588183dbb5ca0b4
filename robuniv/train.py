"""Adversarial training (Madry et al., L2 PGD) and clean/adversarial evaluation (SPEC 2).

Training is deterministic on CPU for a given seed and resumable after any epoch: the state
written after every epoch (weights, optimizer, schedule, RNG states, history) lets a
restarted job finish with exactly the weights of an uninterrupted one.

Under torchrun (WORLD_SIZE > 1) `train_model` trains data-parallel: each rank sees its
share of every global batch through a DistributedSampler and the SGD step goes through
DistributedDataParallel; rank 0 alone writes the resume state and the final checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from robuniv.attacks import pgd_l2_with_logits
from robuniv.log import progress_kwargs
from robuniv.models import RobustModel, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

LR_SCHEDULES = ("step", "warmup_cosine")

# Keys train_model itself writes into the checkpoint's robuniv metadata.
_OWN_EXTRA_KEYS = ("train_config", "history", "rng", "scaler")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (SPEC 2); the defaults are the paper's CIFAR-10 ones.

    `attack_step_size=None` means 2/3 * eps; `eps=0` is standard training. `amp` trains in
    bfloat16 autocast on CPU, float16 with a GradScaler on CUDA.

    `lr_schedule` "step" multiplies the learning rate by `lr_gamma` every `lr_step_epochs`
    epochs (the paper's). "warmup_cosine" changes it after every batch: linear warm-up
    from 0 over the first `warmup_fraction` of all steps, then cosine decay to 0; short runs
    (a few hundred steps) need the warm-up to stay stable at lr 0.1 and the decay to end well.
    """

    epochs: int
    batch_size: int
    eps: float
    seed: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step_epochs: int = 30
    lr_gamma: float = 0.1
    lr_schedule: str = "step"
    warmup_fraction: float = 0.1
    attack_steps: int = 3
    attack_step_size: float | None = None
    num_workers: int = 0
    amp: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        for name, minimum in (
            ("epochs", 1),
            ("seed", 0),
            ("batch_size", 1),
            ("lr_step_epochs", 1),
            ("attack_steps", 0),
            ("num_workers", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        for name in ("lr", "lr_gamma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.attack_step_size is not None and not self.attack_step_size > 0:
            raise ValueError(f"attack_step_size must be > 0 or None, got {self.attack_step_size!r}")


def _loader(
    dataset: Dataset, batch_size: int, *, device: torch.device, num_workers: int, **kwargs: Any
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        **kwargs,
    )


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """RNG states that decide the rest of a run: augmentation and dropout use the global
    torch RNG (in the main process with num_workers=0; workers are seeded from the loader's
    generator), shuffling uses the loader's generator."""
    state = {"torch": torch.get_rng_state(), "loader": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore(
    path: Path,
    model: RobustModel,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
    config: TrainConfig,
    device: torch.device,
) -> list[dict]:
    """Load the state `train_model` wrote after an epoch; returns the history so far."""
    saved, ckpt = load_checkpoint(path, map_location="cpu")
    meta = ckpt["robuniv"]
    if saved.spec != model.spec:
        raise ValueError(f"{path} holds a {saved.spec}, not the {model.spec} being trained")
    saved_config, wanted = meta["train_config"], dataclasses.asdict(config)
    changed = [
        f"{k} {saved_config.get(k)!r} -> {v!r}"
        for k, v in wanted.items()
        if saved_config.get(k) != v
    ]
    if changed:
        raise ValueError(
            f"{path} was written with other training settings ({', '.join(changed)}); "
            "delete it to start afresh"
        )
    model.load_state_dict(saved.state_dict())
    optimizer.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["schedule"])
    if meta["scaler"]:  # empty when the scaler was disabled
        scaler.load_state_dict(meta["scaler"])
    rng = meta["rng"]
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["loader"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
    return list(meta["history"])


def _lr_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, *, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of `config.lr_schedule` (see `TrainConfig`)."""
    if config.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.lr_step_epochs, gamma=config.lr_gamma
        )
    total = max(1, config.epochs * steps_per_epoch)
    warmup = round(config.warmup_fraction * total)

    def factor(step: int) -> float:
        # Step `step` is the (step + 1)-th batch: warm-up never trains at lr 0.
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _world_size() -> int:
    """Number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _train_epoch(
    model: RobustModel,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    device: torch.device,
    epoch: int,
    step_module: nn.Module | None = None,
    batch_schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, float]:
    """One pass over the data; returns the epoch's history entry.

    `batch_schedule`, where given, steps after every batch (per-step schedules).

    `step_module` (default `model`) computes the logits trained on, e.g. a
    DistributedDataParallel wrapper of `model`, whose ranks then sum the metrics; the attack
    always runs on `model`.
    """
    step_module = model if step_module is None else step_module
    memory_format = torch.channels_last if config.channels_last else torch.preserve_format
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    lr = optimizer.param_groups[0]["lr"]
    # loss sum, clean correct, adversarial correct, images: summed on the device, read once
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    start = time.perf_counter()
    step_module.train()
    for x, y in tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", **progress_kwargs()):
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=config.amp):
            if config.eps > 0:
                # robustness' AttackerModel attacks in eval mode, also during training: batch
                # statistics and running averages then see only the images trained on.
                model.eval()
                x, clean_logits, _ = pgd_l2_with_logits(
                    model,
                    x,
                    y,
                    eps=config.eps,
                    steps=config.attack_steps,
                    step_size=config.attack_step_size,
                )
                step_module.train()
            logits = step_module(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if batch_schedule is not None:
            batch_schedule.step()
        with torch.no_grad():
            correct = logits.argmax(1) == y
            clean_correct = clean_logits.argmax(1) == y if config.eps > 0 else correct
            totals[:3] += torch.stack([loss * len(y), clean_correct.sum(), correct.sum()]).double()
            totals[3] += len(y)
    if isinstance(step_module, DistributedDataParallel):
        dist.all_reduce(totals)
    loss_sum, clean, adv, n = totals.tolist()
    return {
        "epoch": epoch,
        "lr": lr,
        "loss": loss_sum / n,
        "clean_acc": clean / n,
        "adv_acc": adv / n,
        "images_per_s": n / (time.perf_counter() - start),
    }


def train_model(
    model: RobustModel,
    train_set: Dataset,
    config: TrainConfig,
    *,
    checkpoint: Path,
    resume_state: Path,
    device: str = "cpu",
    extra: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Madry adversarial training with L2 PGD; SGD with momentum and a step schedule (SPEC 2).

    Per batch: x_adv = PGD (model in eval mode, as the robustness library), then one SGD step
    on the cross-entropy at x_adv in train mode (eps = 0: on x, standard training). After
    every epoch the full state goes atomically to `resume_state`; if that file exists at the
    start, training continues after its epoch (its settings must equal `config`). At the end
    the model goes atomically to `checkpoint` with `extra`, the config and the history in
    its metadata, and `resume_state` is deleted. On CPU the result depends only on the seed,
    the initial model and the data, not on interruptions.

    Launched by torchrun with WORLD_SIZE > 1, it joins (or initialises: nccl on CUDA, gloo on
    CPU) the default process group, trains on `cuda:LOCAL_RANK` when `device` is CUDA, and
    splits each global batch of `config.batch_size` images evenly over the ranks (a
    DistributedSampler seeded with `config.seed` shuffles). Every rank uses the same global
    RNG seed and returns the same history (metrics summed over the ranks); only rank 0
    writes `resume_state` and `checkpoint` (the unwrapped model, as in a single process),
    the others wait at a barrier. A process group it initialised itself is destroyed at
    the end.

    Parameters
    ----------
    model : RobustModel
        Trained in place; moved to `device`.
    train_set : Dataset
        Yields (image (C, H, W) float in [0, 1], int label); augments by itself.
    config : TrainConfig
    checkpoint, resume_state : Path
        Final checkpoint and per-epoch state (`robuniv.models.save_checkpoint` layout).
    device : str
    extra : Mapping or None
        More metadata for the final checkpoint (weights-only-safe values; not the keys
        "train_config", "history", "rng", "scaler").

    Returns
    -------
    list of dict
        One entry per epoch: epoch, lr, loss (mean at the trained-on images), clean_acc (eval
        mode at the clean images; train mode when eps = 0), adv_acc (train mode at the
        trained-on images). Throughput is logged, not returned.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_OWN_EXTRA_KEYS))
    if clash:
        raise ValueError(f"extra must not contain {clash}: train_model writes those keys")
    world_size = _world_size()
    if world_size > 1 and config.batch_size % world_size:
        raise ValueError(
            f"batch_size {config.batch_size} is the global batch and must be divisible by "
            f"the world size {world_size}"
        )
    dev = torch.device(device)
    own_group = False
    if world_size > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
            own_group = True
        if dist.get_world_size() != world_size:
            raise ValueError(
                f"the process group has {dist.get_world_size()} ranks, WORLD_SIZE says {world_size}"
            )
    try:
        return _train(model, train_set, config, checkpoint, resume_state, dev, extra, world_size)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(
    model: RobustModel,
    train_set: Dataset,
    config: TrainConfig,
    checkpoint: Path,
    resume_state: Path,
    dev: torch.device,
    extra: dict[str, Any],
    world_size: int,
) -> list[dict]:
    """`train_model` after the checks and the process group set-up."""
    distributed = world_size > 1
    rank = dist.get_rank() if distributed else 0
    model.to(dev)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scaler = torch.amp.GradScaler(dev.type, enabled=config.amp and dev.type == "cuda")
    generator = torch.Generator().manual_seed(config.seed)
    # No persistent workers: a restarted job re-seeds its workers from the loader's generator
    # at every epoch, exactly as the uninterrupted job does.
    sampler: DistributedSampler | None = None
    step_module: nn.Module = model
    if distributed:
        # Each rank draws its share of a seeded permutation that changes with set_epoch; the
        # loader's generator then only seeds workers.
        sampler = DistributedSampler(
            train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed
        )
        loader = _loader(
            train_set,
            config.batch_size // world_size,
            device=dev,
            num_workers=config.num_workers,
            sampler=sampler,
            drop_last=False,
            generator=generator,
        )
        step_module = DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    else:
        loader = _loader(
            train_set,
            config.batch_size,
            device=dev,
            num_workers=config.num_workers,
            shuffle=True,
            drop_last=False,
            generator=generator,
        )
    schedule = _lr_schedule(optimizer, config, steps_per_epoch=len(loader))
    per_batch = config.lr_schedule != "step"
    train_config = dataclasses.asdict(config)
    rng_devices = (
        []
        if dev.type != "cuda"
        else [torch.cuda.current_device() if dev.index is None else dev.index]
    )
    # The run seeds the global RNG (augmentation, dropout) without changing the caller's.
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(config.seed)
        history: list[dict] = []
        if resume_state.exists():
            history = _restore(
                resume_state, model, optimizer, schedule, scaler, generator, config, dev
            )
            log.info("resumed from %s after epoch %d", resume_state, len(history))
        if distributed:  # every rank has read resume_state before rank 0 replaces it
            dist.barrier()
        for epoch in range(len(history) + 1, config.epochs + 1):
            if sampler is not None:
                sampler.set_epoch(epoch)
            entry = _train_epoch(
                model,
                loader,
                optimizer,
                scaler,
                config,
                dev,
                epoch,
                step_module=step_module,
                batch_schedule=schedule if per_batch else None,
            )
            if not per_batch:
                schedule.step()
            # Throughput goes to the log only: the checkpoint holds what the run computed,
            # so two runs of one config give byte-identical checkpoints.
            images_per_s = entry.pop("images_per_s")
            history.append(entry)
            log.info(
                "epoch %d/%d: loss %.4f, clean acc %.4f, adv acc %.4f, %.0f img/s, lr %.4g",
                epoch,
                config.epochs,
                entry["loss"],
                entry["clean_acc"],
                entry["adv_acc"],
                images_per_s,
                entry["lr"],
            )
            if rank == 0:
                _save_resume_state(
                    resume_state,
                    model,
                    optimizer,
                    schedule,
                    scaler,
                    generator,
                    dev,
                    epoch,
                    {**extra, "train_config": train_config, "history": history},
                )
            if distributed:
                dist.barrier()
    if rank == 0:
        save_checkpoint(
            checkpoint,
            model,
            epoch=config.epochs,
            extra={**extra, "train_config": train_config, "history": history},
        )
        resume_state.unlink()
    if distributed:
        dist.barrier()
    return history


def _save_resume_state(
    path: Path,
    model: RobustModel,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
    dev: torch.device,
    epoch: int,
    extra: dict[str, Any],
) -> None:
    save_checkpoint(
        path,
        model,
        epoch=epoch,
        optimizer=optimizer.state_dict(),
        schedule=schedule.state_dict(),
        extra={**extra, "rng": _rng_state(generator, dev), "scaler": scaler.state_dict()},
    )


def evaluate_model(
    model: RobustModel,
    dataset: Dataset,
    *,
    eps: float,
    attack_steps: int = 3,
    attack_step_size: float | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    num_workers: int = 0,
) -> dict:
    """Clean accuracy and accuracy under L2 PGD at `eps`, in eval mode (SPEC 2, Tables 1-3).

    Parameters
    ----------
    model : RobustModel
        Put in eval mode and moved to `device`.
    dataset : Dataset
        Yields (image (C, H, W) float in [0, 1], int label).
    eps, attack_steps, attack_step_size
        As `robuniv.attacks.pgd_l2` (use_best); eps = 0 gives adv_acc = clean_acc.

    Returns
    -------
    dict
        {"n": images, "clean_acc": float, "adv_acc": float, "eps": float}.
    """
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    dev = torch.device(device)
    model.to(dev).eval()
    loader = _loader(dataset, batch_size, device=dev, num_workers=num_workers, shuffle=False)
    clean = adv = n = 0
    for x, y in tqdm(loader, desc=f"evaluation at eps {eps:g}", **progress_kwargs()):
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        _, clean_logits, adv_logits = pgd_l2_with_logits(
            model, x, y, eps=eps, steps=attack_steps, step_size=attack_step_size
        )
        clean += int((clean_logits.argmax(1) == y).sum())
        adv += int((adv_logits.argmax(1) == y).sum())
        n += len(y)
    return {"n": n, "clean_acc": clean / n, "adv_acc": adv / n, "eps": float(eps)}

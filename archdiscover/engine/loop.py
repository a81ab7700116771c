"""The training loop: one loop for classification, denoising and deblurring, with logs and
exact resume.

``train(config, run_dir)`` builds the supernet (:mod:`archdiscover.models`), the data
(:mod:`archdiscover.data`), the optimizer (Bregman or ``torch.optim``) with its regularizer
recipe (:mod:`.recipes`), the sparse initialization and the schedulers from a
:class:`~.config.TrainConfig`, and trains:

* a tqdm progress bar per epoch, validation after every epoch;
* ``run_dir/log.jsonl``: one JSON object per epoch (losses, accuracy or PSNR, density,
  active units and widths per layer, lam, lr, seconds);
* ``run_dir/checkpoints/epoch_NNNN.pt`` after every epoch, written atomically (temporary
  file, fsync, rename): model, optimizer, schedulers, RNG state and epoch; the last
  ``keep_checkpoints`` are kept;
* ``run_dir/model.pt`` at the end: the model's name, arguments, input shape and weights
  (what ``archdiscover compile`` reads).

A run started again in the same directory resumes from its newest checkpoint and ends
bit for bit where an uninterrupted run ends (same seed, same device): batches are drawn
from a generator seeded by ``(seed, epoch)``, the noise of denoising batches from one seeded
by ``(seed, epoch, batch)``, and torch's global RNG state is saved with each checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import data as _data
from .._io import remove_temporaries, save_atomic
from ..init import sparse_init_
from ..metrics import psnr_from_mse
from ..schedule import LamScheduler
from ..sparsity import report as sparsity_report
from .checkpoint import (
    CheckpointError,
    RunLock,
    append_log,
    check_checkpoint,
    checkpoints,
    last_record,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from .config import ConfigError, TrainConfig
from .dist import Dist, barrier, init_distributed
from .recipes import build_optimizer, lr_scheduler, unit_counter

__all__ = ["DivergenceError", "RunResult", "build_model", "load_split", "load_trained", "train"]

#: models with fewer parameters than this train on one thread unless ``threads`` says otherwise
SMALL_MODEL = 1_000_000
#: a training loss this many times the first one (or NaN / Inf) stops the run as diverged
EXPLODED = 1e6


class DivergenceError(RuntimeError):
    """Training produced a non-finite or exploded loss, or non-finite weights; the run
    stopped before saving them."""


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config: device {name!r} requested but CUDA is not available")
    return torch.device(name)


def build_model(cfg: TrainConfig) -> nn.Module:
    """The model ``cfg.model`` (a registered supernet, its arguments checked against its
    signature, or ``package.module:factory``) with ``cfg.model_args``."""
    from . import resolve

    try:
        return resolve.build(cfg.model, cfg.model_args)
    except (TypeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if f"model {cfg.model!r}" not in first:
            first = f"bad model_args for model {cfg.model!r}: {first}"
        raise ConfigError(f"config: {first}") from None


def _check_fits(model: nn.Module, cfg: TrainConfig, split: _data.Split, x: Tensor) -> None:
    """One forward pass on two training images: the model must run on the data and give
    what the task needs, else one :class:`ConfigError` line that says what to change."""
    what = f"model {cfg.model!r} with model_args {cfg.model_args}"
    shape = tuple(x.shape[1:])
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"config: {what} cannot run on {cfg.dataset} images of shape {shape}: {first}"
        ) from None
    finally:
        model.train(was)
    got = tuple(out.shape[1:]) if isinstance(out, Tensor) else type(out).__name__
    if cfg.task == "classification":
        if got != (split.num_classes,):
            raise ConfigError(
                f"config: {what} outputs {got} per image, but classification on "
                f"{cfg.dataset} needs {split.num_classes} class scores (set the model's "
                "output size, e.g. out_features or num_classes)"
            )
    elif got != shape:
        raise ConfigError(
            f"config: {what} outputs {got} per image, but denoising needs an image of the "
            f"input's shape {shape} (use an autoencoder: dense_autoencoder, conv_autoencoder)"
        )


def _divergence(
    cfg: TrainConfig, epoch: int, where: str, what: str, value: float
) -> DivergenceError:
    """A one-line :class:`DivergenceError` that names the epoch and the likely cause."""
    hints = []
    big = 1.0 if cfg.optimizer in ("linbreg", "sgd", "proxsgd") else 0.01
    if cfg.lr > big:
        hints.append(f"lr = {cfg.lr:g} is large for {cfg.optimizer}")
    if cfg.optimizer in ("linbreg", "sgd") and cfg.momentum > 0.99:
        hints.append(f"momentum = {cfg.momentum:g} is close to 1")
    if cfg.task == "denoising" and cfg.noise_std > 10:
        hints.append(f"noise_std = {cfg.noise_std:g} is huge for standardized images")
    cause = "; ".join(hints) if hints else f"the learning rate (lr = {cfg.lr:g}) is too large"
    return DivergenceError(
        f"training diverged in epoch {epoch}{where}: the {what} is {value:.3g}; likely cause: "
        f"{cause}. Stopped before saving: the last finite checkpoint is kept"
    )


def _threads(cfg: TrainConfig, model: nn.Module, device: torch.device) -> int | None:
    """The thread count this run sets (None: leave torch's): ``cfg.threads``, or one thread
    for small models on the CPU, whose speed-up from more threads is small and whose slowdown
    on a busy machine (more threads than free cores) can be 100x."""
    if cfg.threads > 0:
        return cfg.threads
    if device.type == "cpu" and sum(p.numel() for p in model.parameters()) < SMALL_MODEL:
        return 1
    return None


def _prepare_run_dir(run_dir: pathlib.Path) -> None:
    """Create ``run_dir/checkpoints``; a run directory of the wrong kind is one line."""
    for p in (run_dir, *run_dir.parents):
        if p.exists() and not p.is_dir():
            raise ConfigError(f"run directory {run_dir}: {p} is a file, not a directory")
    for name, want_dir in (("checkpoints", True), ("log.jsonl", False), ("config.json", False)):
        p = run_dir / name
        if p.exists() and p.is_dir() != want_dir:
            kind = "a directory" if want_dir else "a file"
            raise ConfigError(f"run directory {run_dir}: {p} must be {kind}")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)


@dataclass
class RunResult:
    """What :func:`train` returns: the trained model and optimizer, the last log line."""

    model: nn.Module
    last: dict[str, Any]
    run_dir: pathlib.Path
    resumed_from: int = 0
    optimizer: torch.optim.Optimizer | None = None
    dist: Dist = field(default_factory=Dist)


def load_split(cfg: TrainConfig) -> _data.Split:
    return _data.load(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.seed, pad_to=cfg.pad_to)


def train(
    config: TrainConfig | Mapping[str, Any],
    run_dir: str | os.PathLike,
    *,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    measure: Callable[[nn.Module], float] | None = None,
) -> RunResult:
    """Train as ``config`` says, logging and checkpointing into ``run_dir``.

    Args:
        config: a :class:`TrainConfig` or its plain-data form.
        run_dir: created if needed; holds ``config.json``, ``log.jsonl``, ``checkpoints/``
            and, at the end, ``model.pt``.
        resume: continue from the newest checkpoint in ``run_dir`` (a truncated or
            corrupted newest checkpoint raises :class:`CheckpointError` naming it; older
            ones are left in place). With ``resume=False`` an existing run is an error.
        progress: show tqdm progress bars.
        stop_after: stop after this epoch (as if interrupted; for tests and time budgets).
        on_epoch: called with each epoch's log record.
        measure: what ``target_density`` is a target for: called with the model after each
            epoch, it returns the fraction the ``LamScheduler`` compares with the target
            (default: the non-zero fraction of the regularized parameters). For a FLOPs
            budget pass e.g. ``lambda m: (c := archdiscover.compile(m.eval(), x).report)
            .macs_after / c.macs_before`` (called on rank 0's model on every rank, so it
            must be deterministic). Its value is logged as ``measured`` (for the sparse start
            too, in epoch 1's ``initial``).

    Raises:
        ConfigError: a bad config, or a model that cannot run on the data / give what the
            task needs, or a run directory of the wrong kind.
        CheckpointError: another ``train`` holds the run directory; a checkpoint that is
            unreadable, malformed, past the run's end, non-finite, or from another config.
        DivergenceError: a training loss that is NaN / Inf or ``EXPLODED`` times the first
            one, or non-finite weights after an epoch. The run stops before that epoch is
            logged or saved, so the last checkpoint is the last finite state.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg.validate()
    if not isinstance(run_dir, (str, os.PathLike)) or not str(run_dir):
        raise ConfigError(f"config: the run directory must be a path, got {run_dir!r}")
    run_dir = pathlib.Path(run_dir)
    dd = init_distributed(cfg.device)
    lock = RunLock(run_dir)
    if dd.main:
        _prepare_run_dir(run_dir)
        lock.acquire()  # a second train on this directory stops here, with one line
    threads = torch.get_num_threads()
    try:
        if dd.main:  # what killed writes left behind (no other writer: we hold the lock)
            remove_temporaries(run_dir)
            remove_temporaries(run_dir / "checkpoints")
        barrier(dd)
        return _train(cfg, run_dir, dd, resume, progress, stop_after, on_epoch, measure)
    finally:
        torch.set_num_threads(threads)
        lock.release()


def _train(
    cfg: TrainConfig,
    run_dir: pathlib.Path,
    dd: Dist,
    resume: bool,
    progress: bool,
    stop_after: int | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    measure: Callable[[nn.Module], float] | None,
) -> RunResult:
    progress = progress and dd.main
    device = _device(cfg.device)
    if dd.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dd.local_rank)
        torch.cuda.set_device(device)
    if dd.world > 1 and cfg.batch_size < dd.world:
        raise ConfigError(f"config: batch_size {cfg.batch_size} < {dd.world} processes")
    split = load_split(cfg)
    xs, ys = (t.to(device) for t in split.train.tensors)
    xt, yt = (t.to(device) for t in split.test.tensors)
    denoise = cfg.task in ("denoising", "deblurring")
    degrade = _degradation(cfg)
    if denoise:
        gen = torch.Generator().manual_seed(cfg.seed + 7919)
        noise_t = torch.randn(xt.shape, generator=gen).to(device) * cfg.noise_std
        peak = float(xt.max() - xt.min())

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    n_threads = _threads(cfg, model, device)
    if n_threads is not None:
        torch.set_num_threads(n_threads)
    _check_fits(model, cfg, split, xs[:2])
    opt = build_optimizer(model, cfg, xs[:2])
    count_units = unit_counter(model, cfg, xs[:2])
    if cfg.optimizer not in ("sgd", "adam"):
        gen = torch.Generator().manual_seed(cfg.seed)
        sparse_init_(
            model,
            cfg.init_density,
            reg=opt,
            bias=cfg.resolved_bias_init,
            generator=gen,
            min_units=cfg.init_min_units,
        )
    lr_sched = lr_scheduler(opt, cfg)
    lam_sched = (
        LamScheduler(opt, cfg.target_density, patience=cfg.lam_patience)
        if cfg.target_density is not None and cfg.optimizer not in ("sgd", "adam")
        else None
    )

    start = 0
    existing = checkpoints(run_dir)
    if existing and not resume:
        raise CheckpointError(f"{run_dir} already holds a run; resume it or use a new directory")
    if existing:
        ck = load_checkpoint(existing[-1])  # every process reads it: a shared filesystem
        check_checkpoint(ck, existing[-1], cfg.epochs)
        if ck["config"] != cfg.to_dict():
            raise ConfigError(_config_differs(run_dir, ck["config"], cfg.to_dict()))
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if lr_sched is not None:
                lr_sched.load_state_dict(ck["lr_scheduler"])
            if lam_sched is not None:
                lam_sched.load_state_dict(ck["lam_scheduler"])
            set_rng_state(ck["rng"], device)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(
                f"checkpoint {existing[-1]} does not fit this run: {first}"
            ) from None
        start = ck["epoch"]
    elif dd.main:
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        (run_dir / "log.jsonl").write_text("")
    barrier(dd)
    # gradients are all-reduced before the step, so every process takes the same step and
    # keeps the same optimizer state (v, momentum, Adam moments) and the same density
    net = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if dd.world > 1
        else model
    )

    loss_fn: Callable[[Tensor, Tensor], Tensor] = (
        nn.functional.mse_loss if denoise else nn.functional.cross_entropy
    )
    widths = {r.name: r.units for r in sparsity_report(model).layers if r.units is not None}
    # the sparse start, logged with epoch 1 so that plots can draw the path from epoch 0
    initial = None if start else _sparsity(model, count_units)
    if initial is not None:
        initial["lam"] = _first_lam(opt)
        if measure is not None:  # e.g. the FLOPs of the sparse start
            initial["measured"] = float(measure(model))
            model.train()
    last: dict[str, Any] = last_record(run_dir / "log.jsonl", start)
    n = len(xs)
    first_loss: float | None = None
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        total, count = torch.zeros((), device=device), 0
        batches = range(0, n, cfg.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
        for bi, i in enumerate(bar):
            batch = perm[i : i + cfg.batch_size]
            if len(batch) < dd.world:  # too few samples left to give every process one
                continue
            idx = batch[dd.rank :: dd.world].to(device)  # this process's share
            xb = xs[idx]
            if denoise:  # the global batch's noise, then this process's share of it
                g = torch.Generator().manual_seed((cfg.seed * 100003 + epoch) * 100003 + bi)
                noise = torch.randn((len(batch), *xb.shape[1:]), generator=g)
                target = xb
                xb = degrade(xb) + cfg.noise_std * noise[dd.rank :: dd.world].to(device)
            else:
                target = ys[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), target)
            value = float(loss.detach())
            if first_loss is None:
                first_loss = value
            if not math.isfinite(value) or value > EXPLODED * max(1.0, abs(first_loss)):
                raise _divergence(cfg, epoch, f", batch {bi + 1}", "training loss", value)
            # DDP averages gradients over processes: weight each share by its size so the
            # result is the gradient of the mean loss over the global batch
            (loss * (len(idx) * dd.world / len(batch))).backward()
            opt.step()
            total += loss.detach() * len(idx)
            count += len(idx)
            if progress and bi % 10 == 0:
                bar.set_postfix(loss=f"{float(total) / count:.4f}")
        if dd.world > 1:
            sums = torch.stack([total, torch.tensor(float(count), device=total.device)])
            dist.all_reduce(sums)
            total, count = sums[0], int(sums[1])
        if lr_sched is not None:
            lr_sched.step()
        record = _evaluate(model, xt, yt, noise_t if denoise else None, loss_fn, cfg, degrade)
        if not math.isfinite(record["val_loss"]):
            raise _divergence(cfg, epoch, "", "validation loss", record["val_loss"])
        bad = next((n for n, t in model.state_dict().items() if t.is_floating_point()
                    and not bool(torch.isfinite(t).all())), None)  # fmt: skip
        if bad is not None:
            raise _divergence(cfg, epoch, "", f"weight {bad!r}", float("nan"))
        if denoise:
            record["val_psnr"] = psnr_from_mse(record["val_loss"], peak)
        sparsity = _sparsity(model, count_units)
        units = sparsity["active_units"]
        measured = None
        if measure is not None:
            measured = float(measure(model))
            model.train()
        if lam_sched is not None:
            lam_sched.step(measured)
        record = {
            "epoch": epoch,
            "train_loss": float(total) / count,
            "samples": count,
            **record,
            **sparsity,
            "widths": widths,
            "unit_density": sum(units.values()) / max(1, sum(widths.get(k, 0) for k in units)),
            "lam": _first_lam(opt),
            **({"measured": measured} if measured is not None else {}),
            "lr": float(opt.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t0,
            **({"initial": initial} if initial is not None and epoch == 1 else {}),
        }
        last = record
        if on_epoch is not None:
            on_epoch(record)
        if not dd.main:
            barrier(dd)  # rank 0 writes the log and the checkpoint
            if stop_after is not None and epoch >= stop_after:
                return RunResult(model, last, run_dir, start, opt, dd)
            continue
        append_log(run_dir / "log.jsonl", record, epoch)
        ck = {
            "format": "archdiscover.checkpoint/1",
            "epoch": epoch,
            "config": cfg.to_dict(),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "lr_scheduler": lr_sched.state_dict() if lr_sched is not None else None,
            "lam_scheduler": _plain_lam_state(lam_sched),
            "rng": rng_state(device),
        }
        save_atomic(ck, run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt")
        for old in checkpoints(run_dir)[: -cfg.keep_checkpoints]:
            old.unlink()
        if progress:
            metric = (
                f"psnr {record['val_psnr']:.2f} dB"
                if denoise
                else f"acc {record.get('val_accuracy', 0):.2f}%"
            )
            tqdm.write(
                f"epoch {epoch}: loss {record['train_loss']:.4f}, {metric}, "
                f"density {record['density']:.4f}, units {list(record['active_units'].values())}"
            )
        barrier(dd)
        if stop_after is not None and epoch >= stop_after:
            return RunResult(model, last, run_dir, start, opt, dd)
    if not last and start:  # a finished run whose log lost its last line: measure it again
        last = {"epoch": start, **_evaluate(model, xt, yt, noise_t if denoise else None,
                                            loss_fn, cfg), **_sparsity(model)}  # fmt: skip
        if denoise:
            last["val_psnr"] = psnr_from_mse(last["val_loss"], peak)
    if not dd.main:
        return RunResult(model, last, run_dir, start, opt, dd)
    save_atomic(
        {
            "format": "archdiscover.model/1",
            "model": cfg.model,
            "model_args": cfg.model_args,
            "input_shape": list(split.image_shape),
            "task": cfg.task,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        run_dir / "model.pt",
    )
    return RunResult(model, last, run_dir, start, opt, dd)


def _degradation(cfg: TrainConfig) -> Callable[[Tensor], Tensor]:
    """What the task does to a clean batch before the noise: a Gaussian blur for
    ``deblurring``, nothing otherwise."""
    if cfg.task == "deblurring":
        return lambda x: _data.gaussian_blur(x, cfg.blur_kernel, cfg.blur_sigma)
    return lambda x: x


def _first_lam(opt: torch.optim.Optimizer) -> float | None:
    """The ``lam`` of the first regularized param group (what the log reports)."""
    lams = [g["reg"].lam for g in opt.param_groups if "reg" in g and not g["reg"].is_null]
    return lams[0] if lams else None


def _sparsity(model: nn.Module, count_units: Callable[[nn.Module], dict] | None = None) -> dict:
    """Density, weight density and active units (``count_units``: the recipe's own count,
    e.g. active channel groups of a coupled regularizer; else non-zero rows per layer)."""
    rep = sparsity_report(model)
    return {
        "density": rep.density,
        "weight_density": rep.weight_density,
        "active_units": count_units(model) if count_units is not None else rep.active_units(),
    }


def _config_differs(run_dir: pathlib.Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in keys[:6])
    more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
    return (
        f"{run_dir}: the config differs from the one the run was started with in {shown}{more} "
        f"(see {run_dir / 'config.json'}); use the same config to resume, or a new run directory"
    )


def _plain_lam_state(sched: LamScheduler | None) -> dict[str, Any] | None:
    if sched is None:
        return None
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sched.state_dict().items()}


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    xt: Tensor,
    yt: Tensor,
    noise: Tensor | None,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    cfg: TrainConfig,
    degrade: Callable[[Tensor], Tensor] = lambda x: x,
) -> dict[str, float]:
    model.eval()
    total, correct = 0.0, 0
    for i in range(0, len(xt), 512):
        xb = xt[i : i + 512]
        if noise is not None:
            out = model(degrade(xb) + noise[i : i + 512])
            total += float(loss_fn(out, xb, reduction="sum")) / xb[0].numel()
        else:
            out = model(xb)
            total += float(loss_fn(out, yt[i : i + 512], reduction="sum"))
            correct += int((out.argmax(1) == yt[i : i + 512]).sum())
    rec = {"val_loss": total / len(xt)}
    if noise is None:
        rec["val_accuracy"] = 100.0 * correct / len(xt)
    return rec


def load_trained(run_dir: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The final model of a finished run (``run_dir/model.pt``) and its metadata."""
    from . import resolve

    path = pathlib.Path(run_dir) / "model.pt"
    meta = load_checkpoint(path, kind="model file")
    try:
        model = resolve.build(meta["model"], meta["model_args"])
        model.load_state_dict(meta["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"model file {path} does not fit its model: {e}") from None
    return model.eval(), meta

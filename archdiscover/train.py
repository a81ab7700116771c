"""The training engine: one loop for classification and denoising, with logs and exact resume.

``train(config, run_dir)`` builds the supernet (:mod:`models`), the data
(:mod:`archdiscover.data`), the optimizer (Bregman or ``torch.optim``) with its regularizer,
the sparse initialization and the schedulers from a :class:`TrainConfig`, and trains:

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

import dataclasses
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

from . import data as _data
from ._io import save_atomic
from .graph import coupled_param_groups, inspect
from .init import _WEIGHTED, BIAS_INITS, sparse_init_
from .optim import AdaBreg, LinBreg, ProxSGD
from .regularizers import L1, GroupL12, Null, Regularizer
from .schedule import LamScheduler
from .sparsity import report as sparsity_report

__all__ = [
    "CheckpointError",
    "ConfigError",
    "TrainConfig",
    "load_checkpoint",
    "load_trained",
    "save_atomic",
    "train",
]

OPTIMIZERS = ("linbreg", "adabreg", "proxsgd", "sgd", "adam")
REGULARIZERS = ("l1", "group", "kernels", "coupled", "coupled_weights", "none")
TASKS = ("classification", "denoising")
LR_SCHEDULES = ("constant", "cosine")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""


class CheckpointError(RuntimeError):
    """A checkpoint or model file cannot be read (missing, truncated, not ours)."""


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything a run needs; the same keys in a TOML file or as CLI flags.

    Attributes:
        model: a name from ``models.available()``; ``model_args`` its keyword arguments.
        dataset: ``mnist5k``, ``digits``, ``mnist``, ``fashion_mnist`` or ``cifar10``
            (the last three read from ``data_dir`` or ``$ARCHDISCOVER_DATA``); ``pad_to``
            zero-pads images to a square size (e.g. 32 for CIFAR ResNets on MNIST).
        task: ``classification`` (cross-entropy, accuracy) or ``denoising`` (the model
            maps ``x + noise_std * N(0, 1)`` to ``x``; MSE, PSNR).
        optimizer: ``linbreg`` (``momentum`` and ``dampening`` as in ``torch.optim.SGD``;
            the paper's momentum is ``dampening = momentum``), ``adabreg``, ``proxsgd``, or
            the dense baselines ``sgd`` / ``adam``.
        regularizer: ``l1`` (entries of every Conv/Linear weight), ``group`` (output units
            of every Conv/ConvTranspose/Linear weight), ``kernels`` (each k x k kernel of a
            convolution, the rows of a Linear: the paper's Table 2), ``coupled`` (coupled
            channel groups, BatchNorm scale and shift included: dead channels are exactly
            zero), ``coupled_weights`` (coupled groups of filters only, biases kept
            non-zero, so dead channels can come back), or ``none``; ``lam`` its strength.
            With ``group`` and ``kernels``, a layer none of whose outputs can be removed
            (it makes the model's output) gets entry-wise L1 instead: switching off one of
            its output units would only switch off an output.
        init_density: fraction of weights / units kept by the sparse initialization
            (1.0 = a dense Kaiming start).
        bias_init: biases at the sparse initialization: ``zero``, ``keep`` (torch's
            default), ``positive`` (``U(0, 1/sqrt(fan_in))``, the paper's code: units with
            zero weights still output ``relu(b) > 0``, so their weights get a gradient and
            can enter), or ``auto`` (``keep`` for ``coupled_weights``, else ``zero``).
        target_density: if set, a :class:`~archdiscover.schedule.LamScheduler` steers
            ``lam`` toward this non-zero fraction (or toward whatever ``train``'s
            ``measure`` returns, e.g. a FLOPs fraction), once per epoch; ``lam_patience``
            is its ``patience`` (stalled epochs below the target before ``lam`` is lowered).
        lr_schedule: ``constant`` or ``cosine`` (over ``epochs``).
        fused: ``auto`` / ``on`` / ``off``: the Bregman optimizers' compiled step.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist5k"
    data_dir: str | None = None
    pad_to: int | None = None
    task: str = "classification"
    noise_std: float = 0.5
    optimizer: str = "linbreg"
    lr: float = 0.1
    momentum: float = 0.9
    dampening: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    regularizer: str = "l1"
    lam: float = 0.03
    init_density: float = 0.01
    bias_init: str = "auto"
    target_density: float | None = None
    lam_patience: int = 1
    epochs: int = 10
    batch_size: int = 64
    lr_schedule: str = "constant"
    seed: int = 0
    device: str = "auto"
    fused: str = "auto"
    keep_checkpoints: int = 2

    # -- construction / validation -------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "config") -> TrainConfig:
        """Build from plain data; unknown keys and wrong types raise :class:`ConfigError`."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(
                    f"{where}: unknown config key {key!r} (known: {', '.join(sorted(known))})"
                )
            kwargs[key] = _coerce(key, value, known[key].type, where)
        cfg = cls(**kwargs)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "config") -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{where}: {msg}")

        import models

        need(
            self.model in models.available(),
            f"unknown model {self.model!r} (available: {', '.join(models.available())})",
        )
        need(
            self.dataset in _data.DATASETS,
            f"unknown dataset {self.dataset!r} (known: {', '.join(sorted(_data.DATASETS))})",
        )
        need(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        need(
            self.optimizer in OPTIMIZERS,
            f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}",
        )
        need(
            self.regularizer in REGULARIZERS,
            f"regularizer must be one of {REGULARIZERS}, got {self.regularizer!r}",
        )
        need(
            self.lr_schedule in LR_SCHEDULES,
            f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}",
        )
        need(self.fused in ("auto", "on", "off"), f"fused must be auto/on/off, got {self.fused!r}")
        need(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"device must be auto, cpu or cuda[:N], got {self.device!r}",
        )
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.lam >= 0, f"lam must be >= 0, got {self.lam}")
        need(0 < self.init_density <= 1, f"init_density must be in (0, 1], got {self.init_density}")
        need(
            self.bias_init in ("auto", *BIAS_INITS),
            f"bias_init must be one of {('auto', *BIAS_INITS)}, got {self.bias_init!r}",
        )
        need(
            self.target_density is None or 0 < self.target_density < 1,
            f"target_density must be in (0, 1), got {self.target_density}",
        )
        need(self.lam_patience >= 1, f"lam_patience must be >= 1, got {self.lam_patience}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(
            self.keep_checkpoints >= 1,
            f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}",
        )
        need(self.noise_std >= 0, f"noise_std must be >= 0, got {self.noise_std}")
        need(0 <= self.dampening <= 1, f"dampening must be in [0, 1], got {self.dampening}")
        need(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def resolved_bias_init(self) -> str:
        """``bias_init`` with ``auto`` resolved: ``coupled_weights`` keeps torch's default
        (non-zero) biases so dead units still get a gradient; the others start at zero."""
        if self.bias_init != "auto":
            return self.bias_init
        return "keep" if self.regularizer == "coupled_weights" else "zero"


def _coerce(key: str, value: Any, typ: Any, where: str) -> Any:
    """Check ``value`` against the field's annotation (a string under __future__)."""
    t = str(typ)
    optional = "None" in t
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: config key {key!r} must not be empty")
    base = t.replace(" | None", "").strip()
    bad = ConfigError(
        f"{where}: config key {key!r} must be {base}, got {type(value).__name__} {value!r}"
    )
    if base == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise bad
        return value
    if base.startswith("dict"):
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    if base.startswith("list"):
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise bad
        return [float(v) for v in value]
    return value  # pragma: no cover - every field has one of the types above


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike, kind: str = "checkpoint") -> dict[str, Any]:
    """Read a checkpoint or model file with ``weights_only=True``; a clear error if it's bad."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{kind} {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{kind} {path} is unreadable (truncated or corrupted?): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not isinstance(obj, dict) or not str(obj.get("format", "")).startswith("archdiscover."):
        raise CheckpointError(f"{kind} {path} is not an archdiscover file")
    return obj


def _checkpoints(run_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted((run_dir / "checkpoints").glob("epoch_*.pt"))


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config: device {name!r} requested but CUDA is not available")
    return torch.device(name)


def build_model(cfg: TrainConfig) -> nn.Module:
    import models

    try:
        return models.build(cfg.model, **cfg.model_args)
    except TypeError as e:
        raise ConfigError(f"config: bad model_args for model {cfg.model!r}: {e}") from None


def _param_groups(model: nn.Module, cfg: TrainConfig, example: Tensor) -> list[dict[str, Any]]:
    if cfg.regularizer in ("coupled", "coupled_weights"):
        kw = (
            {"roles": ("out",), "params": ("weight",)}
            if cfg.regularizer == "coupled_weights"
            else {}
        )
        return coupled_param_groups(model, example, cfg.lam, **kw)
    lam = cfg.lam
    if cfg.regularizer == "none":
        return [{"params": list(model.parameters()), "reg": Null(), "name": "all"}]
    # output units that cannot be removed (the model's outputs): entries (L1), not rows
    fixed = _fixed_layers(model, example) if cfg.regularizer != "l1" else set()
    buckets: dict[str, tuple[Regularizer, list[nn.Parameter]]] = {}

    def put(name: str, reg: Regularizer, p: nn.Parameter) -> None:
        buckets.setdefault(name, (reg, []))[1].append(p)

    seen: set[int] = set()
    for mname, m in model.named_modules():
        if not isinstance(m, _WEIGHTED) or id(m.weight) in seen:
            continue
        seen.add(id(m.weight))
        transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
        if cfg.regularizer == "l1" or mname in fixed:
            put("weights" if cfg.regularizer == "l1" else "output weights", L1(lam), m.weight)
        elif cfg.regularizer == "group":  # output units: rows / filters
            put(
                "transposed" if transposed else "weights",
                GroupL12(lam, axis=1 if transposed else 0),
                m.weight,
            )
        elif m.weight.dim() > 2:  # kernels: each k x k kernel of a convolution
            name = "transposed kernels" if transposed else "conv kernels"
            put(name, GroupL12.kernels(lam), m.weight)
        else:  # kernels: the rows (neurons) of a Linear
            put("linear rows", GroupL12(lam, axis=0), m.weight)
    groups = [{"params": ps, "reg": reg, "name": name} for name, (reg, ps) in buckets.items()]
    others = [p for p in model.parameters() if id(p) not in seen]
    if others:
        groups.append({"params": others, "reg": Null(), "name": "other"})
    return groups


def _fixed_layers(model: nn.Module, example: Tensor) -> set[str]:
    """Layers none of whose output units can be removed (they make the model's output):
    a row group there would only switch outputs off, so they get entry-wise L1 instead."""
    rep = inspect(model, example)
    if not rep.traceable:
        return set()
    return {name for name, (removable, _total) in rep.layers.items() if removable == 0}


def build_optimizer(model: nn.Module, cfg: TrainConfig, example: Tensor) -> torch.optim.Optimizer:
    fused = {"auto": None, "on": True, "off": False}[cfg.fused]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    groups = _param_groups(model, cfg, example)
    if cfg.optimizer == "linbreg":
        return LinBreg(
            groups, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening, fused=fused
        )
    if cfg.optimizer == "adabreg":
        return AdaBreg(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)
    return ProxSGD(groups, lr=cfg.lr)


def _lr_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _psnr(mse: float, peak: float) -> float:
    return 10.0 * math.log10(peak * peak / mse) if mse > 0 else float("inf")


# ---------------------------------------------------------------------------------------------
# Several processes (torchrun)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    """Where this process stands in a ``torch.distributed`` job (1 process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes logs, checkpoints, the model and plots."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group that ``torchrun`` describes in the environment.

    ``WORLD_SIZE > 1`` (set by ``torchrun``) starts ``torch.distributed`` with NCCL when CUDA
    is used and gloo on the CPU (rendezvous from ``MASTER_ADDR`` / ``MASTER_PORT``, which
    ``torchrun`` sets, also across machines). Without it, or with a group already started
    by the caller, nothing is started.
    """
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    cuda = device != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
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
            must be deterministic). Its value is logged as ``measured``.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg.validate()
    run_dir = pathlib.Path(run_dir)
    dd = init_distributed(cfg.device)
    progress = progress and dd.main
    if dd.main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    _barrier(dd)
    device = _device(cfg.device)
    if dd.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dd.local_rank)
        torch.cuda.set_device(device)
    if dd.world > 1 and cfg.batch_size < dd.world:
        raise ConfigError(f"config: batch_size {cfg.batch_size} < {dd.world} processes")
    split = load_split(cfg)
    xs, ys = (t.to(device) for t in split.train.tensors)
    xt, yt = (t.to(device) for t in split.test.tensors)
    denoise = cfg.task == "denoising"
    if denoise:
        gen = torch.Generator().manual_seed(cfg.seed + 7919)
        noise_t = torch.randn(xt.shape, generator=gen).to(device) * cfg.noise_std
        peak = float(xt.max() - xt.min())

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    opt = build_optimizer(model, cfg, xs[:2])
    if cfg.optimizer not in ("sgd", "adam"):
        gen = torch.Generator().manual_seed(cfg.seed)
        sparse_init_(model, cfg.init_density, reg=opt, bias=cfg.resolved_bias_init, generator=gen)
    lr_sched = _lr_scheduler(opt, cfg)
    lam_sched = (
        LamScheduler(opt, cfg.target_density, patience=cfg.lam_patience)
        if cfg.target_density is not None and cfg.optimizer not in ("sgd", "adam")
        else None
    )

    start = 0
    existing = _checkpoints(run_dir)
    if existing and not resume:
        raise CheckpointError(f"{run_dir} already holds a run; resume it or use a new directory")
    if existing:
        ck = load_checkpoint(existing[-1])  # every process reads it: a shared filesystem
        if ck.get("config") != cfg.to_dict():
            raise ConfigError(
                f"{run_dir}: the config differs from the one the run was started with "
                f"(see {run_dir / 'config.json'})"
            )
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if lr_sched is not None:
            lr_sched.load_state_dict(ck["lr_scheduler"])
        if lam_sched is not None:
            lam_sched.load_state_dict(ck["lam_scheduler"])
        _set_rng_state(ck["rng"], device)
        start = int(ck["epoch"])
    elif dd.main:
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        (run_dir / "log.jsonl").write_text("")
    _barrier(dd)
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
    last: dict[str, Any] = _last_record(run_dir / "log.jsonl", start)
    n = len(xs)
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
                xb = xb + cfg.noise_std * noise[dd.rank :: dd.world].to(device)
            else:
                target = ys[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), target)
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
        record = _evaluate(model, xt, yt, noise_t if denoise else None, loss_fn, cfg)
        if denoise:
            record["val_psnr"] = _psnr(record["val_loss"], peak)
        rep = sparsity_report(model)
        measured = None
        if measure is not None:
            measured = float(measure(model))
            model.train()
        if lam_sched is not None:
            lam_sched.step(measured)
        lams = [g["reg"].lam for g in opt.param_groups if "reg" in g and not g["reg"].is_null]
        record = {
            "epoch": epoch,
            "train_loss": float(total) / count,
            "samples": count,
            **record,
            "density": rep.density,
            "weight_density": rep.weight_density,
            "active_units": rep.active_units(),
            "widths": widths,
            "lam": lams[0] if lams else None,
            **({"measured": measured} if measured is not None else {}),
            "lr": float(opt.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t0,
        }
        last = record
        if on_epoch is not None:
            on_epoch(record)
        if not dd.main:
            _barrier(dd)  # rank 0 writes the log and the checkpoint
            if stop_after is not None and epoch >= stop_after:
                return RunResult(model, last, run_dir, start, opt, dd)
            continue
        _append_log(run_dir / "log.jsonl", record, epoch)
        ck = {
            "format": "archdiscover.checkpoint/1",
            "epoch": epoch,
            "config": cfg.to_dict(),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "lr_scheduler": lr_sched.state_dict() if lr_sched is not None else None,
            "lam_scheduler": _plain_lam_state(lam_sched),
            "rng": _rng_state(device),
        }
        save_atomic(ck, run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt")
        for old in _checkpoints(run_dir)[: -cfg.keep_checkpoints]:
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
        _barrier(dd)
        if stop_after is not None and epoch >= stop_after:
            return RunResult(model, last, run_dir, start, opt, dd)
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


def _last_record(path: pathlib.Path, epoch: int) -> dict[str, Any]:
    """The log record of ``epoch`` (the one a resumed run starts after), or {}."""
    if epoch == 0 or not path.exists():
        return {}
    for line in reversed(path.read_text().splitlines()):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("epoch") == epoch:
            return rec
    return {}


def _plain_lam_state(sched: LamScheduler | None) -> dict[str, Any] | None:
    if sched is None:
        return None
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sched.state_dict().items()}


def _append_log(path: pathlib.Path, record: dict[str, Any], epoch: int) -> None:
    """Append one line; lines of epochs >= ``epoch`` left by an interrupted run are dropped."""
    lines = path.read_text().splitlines() if path.exists() else []
    keep = []
    for line in lines:
        try:
            if json.loads(line).get("epoch", 0) < epoch:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    keep.append(json.dumps(record))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(keep) + "\n")
    os.replace(tmp, path)


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    xt: Tensor,
    yt: Tensor,
    noise: Tensor | None,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    cfg: TrainConfig,
) -> dict[str, float]:
    model.eval()
    total, correct = 0.0, 0
    for i in range(0, len(xt), 512):
        xb = xt[i : i + 512]
        if noise is not None:
            out = model(xb + noise[i : i + 512])
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
    import models

    path = pathlib.Path(run_dir) / "model.pt"
    meta = load_checkpoint(path, kind="model file")
    try:
        model = models.build(meta["model"], **meta["model_args"])
        model.load_state_dict(meta["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"model file {path} does not fit its model: {e}") from None
    return model.eval(), meta

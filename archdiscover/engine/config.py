"""``TrainConfig``: everything a run needs, as plain data, checked key by key.

The same keys come from a TOML file, from ``archdiscover train --key value`` flags or from
Python. Each value is checked against the field's type hint (:func:`coerce`, or
:func:`parse_flag` for the text of a flag) and then against its range
(:meth:`TrainConfig.validate`); every refusal is one :class:`ConfigError` line naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import data as _data
from ..init import BIAS_INITS
from ..optim import IMPLS

__all__ = [
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "REGULARIZERS",
    "TASKS",
    "ConfigError",
    "TrainConfig",
    "coerce",
    "parse_flag",
]

OPTIMIZERS = ("linbreg", "adabreg", "proxsgd", "sgd", "adam")
REGULARIZERS = ("l1", "group", "kernels", "coupled", "coupled_weights", "none")
TASKS = ("classification", "denoising", "deblurring")
LR_SCHEDULES = ("constant", "cosine")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""


@dataclass
class TrainConfig:
    """Everything a run needs; the same keys in a TOML file or as CLI flags.

    Attributes:
        model: a name from ``archdiscover.models.available()``, or your own model as
            ``package.module:factory`` (imported from the installed packages or the current
            directory; ``factory(**model_args)`` returns the ``nn.Module``); ``model_args``
            its keyword arguments.
        dataset: ``mnist5k``, ``digits``, ``mnist``, ``fashion_mnist`` or ``cifar10``
            (the last three read from ``data_dir`` or ``$ARCHDISCOVER_DATA``); ``pad_to``
            zero-pads images to a square size (e.g. 32 for CIFAR ResNets on MNIST).
        task: ``classification`` (cross-entropy, accuracy), ``denoising`` (the model
            maps ``x + noise_std * N(0, 1)`` to ``x``; MSE, PSNR) or ``deblurring`` (it
            maps ``blur(x) + noise_std * N(0, 1)`` to ``x``, ``blur`` a Gaussian of
            ``blur_kernel`` x ``blur_kernel`` pixels and std ``blur_sigma``).
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
            its output units would only switch off an output. Gates of gated connections
            (scalar parameters scaling a whole tensor) get ``L1(gate_lam)`` in a group of
            their own (``gate_lam`` unset: ``lam``). ``linear_lam``: with ``group`` and
            ``kernels``, the strength on the rows (neurons) of Linear layers (unset:
            ``lam``), as the paper's code sets the conv and the Linear strengths apart
            (``lamda_0``, ``lamda_1``). ``coupled_delta``: the Bregman
            ``delta`` of the coupled group (unset: the optimizer's 1; see
            :func:`archdiscover.coupled_param_groups`: 10 to 100 let a BatchNorm scale that
            enters late reach its natural size under AdaBreg).
        init_density: fraction of weights / units kept by the sparse initialization
            (1.0 = a dense Kaiming start). ``init_min_units``: the fewest units (channels,
            neurons) any layer starts with, ``>= 1`` (``sparse_init_``'s ``min_units``).
        bias_init: biases at the sparse initialization: ``zero``, ``keep`` (torch's
            default), ``positive`` (``U(0, 1/sqrt(fan_in))``, the paper's code: units with
            zero weights still output ``relu(b) > 0``, so their weights get a gradient and
            can enter), or ``auto`` (``keep`` for ``coupled_weights``, else ``zero``).
        target_density: if set, a :class:`~archdiscover.schedule.LamScheduler` steers
            ``lam`` toward this non-zero fraction (or toward whatever ``train``'s
            ``measure`` returns, e.g. a FLOPs fraction), once per epoch; ``lam_patience``
            is its ``patience`` (stalled epochs below the target before ``lam`` is lowered).
        lr_schedule: ``constant`` or ``cosine`` (over ``epochs``).
        impl: the Bregman optimizers' implementation (``auto``, ``single``, ``foreach``,
            ``compiled``, ``ckernel``; see :mod:`archdiscover.optim`).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
        threads: torch's intra-op threads for this run (``0``: at most 4, fewer on a
            machine with fewer cores; small models on a busy machine are far slower with
            more threads than cores).
    """

    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist5k"
    data_dir: str | None = None
    pad_to: int | None = None
    task: str = "classification"
    noise_std: float = 0.5
    blur_kernel: int = 9
    blur_sigma: float = 5.0
    optimizer: str = "linbreg"
    lr: float = 0.1
    momentum: float = 0.9
    dampening: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    regularizer: str = "l1"
    lam: float = 0.03
    gate_lam: float | None = None
    linear_lam: float | None = None
    coupled_delta: float | None = None
    init_density: float = 0.01
    init_min_units: int = 1
    bias_init: str = "auto"
    target_density: float | None = None
    lam_patience: int = 1
    epochs: int = 10
    batch_size: int = 64
    lr_schedule: str = "constant"
    seed: int = 0
    device: str = "auto"
    impl: str = "auto"
    threads: int = 0
    keep_checkpoints: int = 2

    # -- construction / validation -------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "config") -> TrainConfig:
        """Build from plain data; unknown keys and wrong types raise :class:`ConfigError`."""
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"{where}: a config must be a table of keys, got {type(values).__name__}"
            )
        known = _hints()
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(
                    f"{where}: unknown config key {key!r} (known: {', '.join(sorted(known))})"
                )
            kwargs[key] = coerce(key, value, where)
        cfg = cls(**kwargs)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "config") -> None:
        """Check every value's type and range; the first problem is a :class:`ConfigError`."""
        for f in dataclasses.fields(self):  # types too, for configs built in Python
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), where))

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{where}: {msg}")

        from .. import models
        from .resolve import is_import_path, model_error

        why = model_error(self.model)
        need(why is None, str(why))
        if not is_import_path(self.model):
            try:
                models.check_args(self.model, self.model_args)
            except TypeError as e:
                raise ConfigError(f"{where}: model_args: {e}") from None
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
        need(self.impl in IMPLS, f"impl must be one of {IMPLS}, got {self.impl!r}")
        need(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"device must be auto, cpu or cuda[:N], got {self.device!r}",
        )
        need(
            self.optimizer not in ("sgd", "adam") or self.regularizer == "none",
            f"optimizer {self.optimizer!r} trains dense and would ignore regularizer "
            f'{self.regularizer!r}: set regularizer = "none", or use linbreg, adabreg or proxsgd',
        )
        need(
            self.optimizer not in ("sgd", "adam") or self.target_density is None,
            f"optimizer {self.optimizer!r} has no lam to steer: unset target_density",
        )
        need(
            self.impl != "ckernel" or self.optimizer == "linbreg",
            f"impl 'ckernel' is LinBreg's only, not {self.optimizer!r}'s",
        )
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.lam >= 0, f"lam must be >= 0, got {self.lam}")
        need(
            self.gate_lam is None or self.gate_lam >= 0,
            f"gate_lam must be >= 0, got {self.gate_lam}",
        )
        need(
            self.linear_lam is None or self.linear_lam >= 0,
            f"linear_lam must be >= 0, got {self.linear_lam}",
        )
        need(
            self.linear_lam is None or self.regularizer in ("group", "kernels"),
            f"linear_lam acts on the Linear rows of the group and kernels recipes, "
            f"not on regularizer {self.regularizer!r}: unset linear_lam",
        )
        need(
            self.coupled_delta is None or self.coupled_delta > 0,
            f"coupled_delta must be > 0, got {self.coupled_delta}",
        )
        need(
            self.blur_kernel >= 1 and self.blur_kernel % 2 == 1,
            f"blur_kernel must be an odd number >= 1, got {self.blur_kernel}",
        )
        need(self.blur_sigma > 0, f"blur_sigma must be > 0, got {self.blur_sigma}")
        need(0 < self.init_density <= 1, f"init_density must be in (0, 1], got {self.init_density}")
        need(self.init_min_units >= 1, f"init_min_units must be >= 1, got {self.init_min_units}")
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
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(0 <= self.dampening <= 1, f"dampening must be in [0, 1], got {self.dampening}")
        need(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        need(self.threads >= 0, f"threads must be >= 0 (0: automatic), got {self.threads}")
        need(
            self.pad_to is None or 1 <= self.pad_to <= 1024,
            f"pad_to must be between 1 and 1024, got {self.pad_to}",
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


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _describe(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def coerce(key: str, value: Any, where: str = "config") -> Any:
    """``value`` checked against the type hint of config key ``key`` (ints become floats
    where a float is expected); a wrong type is a :class:`ConfigError` naming the key."""
    hint = _hints()[key]
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: config key {key!r} must not be empty")
    origin = typing.get_origin(base) or base
    bad = ConfigError(
        f"{where}: config key {key!r} must be {_describe(base)}, got "
        f"{type(value).__name__} {value!r}"
    )
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if origin is int:
        if not (number and float(value).is_integer()) or isinstance(value, float):
            raise bad
        return int(value)
    if origin is float:
        if not number:
            raise bad
        if not math.isfinite(value):
            raise ConfigError(f"{where}: config key {key!r} must be a finite number, got {value}")
        return float(value)
    if origin is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise bad
        return dict(value)
    if origin is list:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        ):
            raise bad
        return [float(v) for v in value]
    raise AssertionError(f"config key {key!r} has an unhandled type {hint!r}")  # pragma: no cover


def parse_flag(key: str, text: str) -> Any:
    """The value of ``--key text`` for config key ``key`` (JSON for tables and lists, ``none``
    for an empty optional value), checked as :func:`coerce` checks it."""
    hint = _hints()[key]
    flag = f"--{key.replace('_', '-')}"
    optional = type(None) in typing.get_args(hint)
    base = (
        next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    )
    origin = typing.get_origin(base) or base
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    try:
        if origin is int:
            value: Any = int(text)
        elif origin is float:
            value = float(text)
        elif origin is bool:
            value = {"true": True, "false": False}[text.strip().lower()]
        elif origin in (dict, list):
            value = json.loads(text)
        else:
            value = text
    except (ValueError, KeyError, json.JSONDecodeError):
        raise ConfigError(f"{flag}: expected {_describe(base)}, got {text!r}") from None
    return coerce(key, value, where=flag)

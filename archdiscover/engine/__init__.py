"""The training engine: a run directory in, a trained supernet out.

* :mod:`.config` -- :class:`TrainConfig` (TOML keys, CLI flags), :class:`ConfigError`;
* :mod:`.recipes` -- a regularizer name becomes optimizer param groups;
* :mod:`.loop` -- :func:`train` (logs, checkpoints, exact resume), :func:`load_trained`;
* :mod:`.checkpoint` -- the run directory's files, :class:`CheckpointError`;
* :mod:`.dist` -- several processes or machines (``torchrun``).
"""

from .._lazy import lazy

__all__ = [
    "CheckpointError",
    "ConfigError",
    "RunResult",
    "TrainConfig",
    "build_model",
    "load_checkpoint",
    "load_split",
    "load_trained",
    "train",
]

__getattr__, __dir__ = lazy(
    __name__,
    {
        "ConfigError": ".config",
        "TrainConfig": ".config",
        "CheckpointError": ".checkpoint",
        "load_checkpoint": ".checkpoint",
        "RunResult": ".loop",
        "build_model": ".loop",
        "load_split": ".loop",
        "load_trained": ".loop",
        "train": ".loop",
    },
)

"""The run directory's files: the lock, checkpoints, the JSON-lines log, RNG state.

* ``.lock`` -- held (``flock``) by the process that trains in the directory, so a second
  ``archdiscover train`` on it stops at once with one line instead of interleaving;
* ``checkpoints/epoch_NNNN.pt`` -- written atomically (:func:`archdiscover._io.save_atomic`):
  model, optimizer, schedulers, RNG state and epoch, read back with ``weights_only=True``
  and checked key by key (:func:`check_checkpoint`) before anything is loaded from them;
* ``log.jsonl`` -- one strict JSON object per epoch (no ``NaN`` / ``Infinity`` tokens: a
  non-finite number is written as ``null``), rewritten atomically on every append.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._io import load_plain

__all__ = [
    "CheckpointError",
    "RunLock",
    "append_log",
    "check_checkpoint",
    "checkpoints",
    "last_record",
    "load_checkpoint",
    "plain_json",
    "rng_state",
    "set_rng_state",
]


class CheckpointError(RuntimeError):
    """A checkpoint or model file cannot be read (missing, truncated, not ours)."""


class RunLock:
    """An exclusive, non-blocking lock on a run directory (``run_dir/.lock``, ``flock``).

    The operating system releases it when the process ends, however it ends (a ``kill -9``
    leaves no stale lock). Where ``fcntl`` does not exist the lock is a no-op.
    """

    def __init__(self, run_dir: pathlib.Path) -> None:
        self.path = run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CheckpointError(
                f"{self.path.parent} is in use by another archdiscover train (it holds "
                f"{self.path}); wait for it to finish or use another run directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def load_checkpoint(path: str | os.PathLike, kind: str = "checkpoint") -> dict[str, Any]:
    """Read a checkpoint or model file with ``weights_only=True``; a clear error if it's bad."""
    path = pathlib.Path(path)
    try:
        obj = load_plain(path, kind)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(obj, dict) or not str(obj.get("format", "")).startswith("archdiscover."):
        raise CheckpointError(f"{kind} {path} is not an archdiscover file")
    return obj


_CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "config": dict,
    "model": dict,
    "optimizer": dict,
    "lr_scheduler": (dict, type(None)),
    "lam_scheduler": (dict, type(None)),
    "rng": dict,
}


def check_checkpoint(ck: Mapping[str, Any], path: pathlib.Path, epochs: int) -> None:
    """Refuse, with one line naming the key, a checkpoint that is malformed, past the run's
    end, or holds non-finite weights (a diverged run must not resume silently)."""
    for key, typ in _CHECKPOINT_KEYS.items():
        if key not in ck:
            raise CheckpointError(f"checkpoint {path} lacks the key {key!r}")
        if not isinstance(ck[key], typ) or isinstance(ck[key], bool):
            raise CheckpointError(
                f"checkpoint {path}: {key!r} is a {type(ck[key]).__name__}, not what a "
                "checkpoint holds"
            )
    if not 1 <= ck["epoch"] <= epochs:
        raise CheckpointError(
            f"checkpoint {path} is at epoch {ck['epoch']}, outside this run's 1..{epochs} "
            f"(epochs = {epochs}); raise epochs or use another run directory"
        )
    if not isinstance(ck["rng"].get("torch"), Tensor):
        raise CheckpointError(f"checkpoint {path}: 'rng' lacks torch's RNG state")
    for name, t in ck["model"].items():
        if not isinstance(t, Tensor):
            raise CheckpointError(f"checkpoint {path}: model entry {name!r} is not a tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"checkpoint {path}: model weight {name!r} is not finite (NaN/Inf): the run "
                "diverged before this checkpoint; resume from an older one or start over"
            )


def checkpoints(run_dir: pathlib.Path) -> list[pathlib.Path]:
    """The run's checkpoints, oldest first."""
    return sorted((run_dir / "checkpoints").glob("epoch_*.pt"))


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """torch's global RNG state (and CUDA's on a CUDA device)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Tensor], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def plain_json(x: Any) -> Any:
    """``x`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: plain_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain_json(v) for v in x]
    return x


def last_record(path: pathlib.Path, epoch: int) -> dict[str, Any]:
    """The log record of ``epoch`` (the one a resumed run starts after), or {}."""
    if epoch == 0 or not path.is_file():
        return {}
    for line in reversed(path.read_text().splitlines()):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("epoch") == epoch:
            return rec
    return {}


def append_log(path: pathlib.Path, record: dict[str, Any], epoch: int) -> None:
    """Append one line; lines of epochs >= ``epoch`` left by an interrupted run are dropped."""
    lines = path.read_text().splitlines() if path.is_file() else []
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int) and rec["epoch"] < epoch:
            keep.append(line)
    keep.append(json.dumps(plain_json(record), allow_nan=False))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(keep) + "\n")
    os.replace(tmp, path)

"""The run directory's files: checkpoints, the JSON-lines log, RNG state.

* ``checkpoints/epoch_NNNN.pt`` -- written atomically (:func:`archdiscover._io.save_atomic`):
  model, optimizer, schedulers, RNG state and epoch, read back with ``weights_only=True``;
* ``log.jsonl`` -- one JSON object per epoch, rewritten atomically on every append (lines of
  epochs an interrupted run already logged are replaced).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CheckpointError",
    "append_log",
    "checkpoints",
    "last_record",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
]


class CheckpointError(RuntimeError):
    """A checkpoint or model file cannot be read (missing, truncated, not ours)."""


def load_checkpoint(path: str | os.PathLike, kind: str = "checkpoint") -> dict[str, Any]:
    """Read a checkpoint or model file with ``weights_only=True``; a clear error if it's bad."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{kind} {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{kind} {path} is unreadable (truncated or corrupted?): {type(e).__name__}: {first}"
        ) from None
    if not isinstance(obj, dict) or not str(obj.get("format", "")).startswith("archdiscover."):
        raise CheckpointError(f"{kind} {path} is not an archdiscover file")
    return obj


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


def last_record(path: pathlib.Path, epoch: int) -> dict[str, Any]:
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


def append_log(path: pathlib.Path, record: dict[str, Any], epoch: int) -> None:
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

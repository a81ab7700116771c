"""Writing files so that a crash never leaves a partial one (shared by compile and train)."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import torch


def save_atomic(obj: Any, path: str | os.PathLike) -> pathlib.Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename onto ``path``.

    A crash leaves either the old file or the new one, never a partial one at ``path``.
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    return path

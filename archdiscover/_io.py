"""Files that survive crashes: atomic writes, plain-data reads, cleanup of killed writes.

* :func:`save_atomic` -- ``torch.save`` to ``.<name>.<pid>.tmp`` beside the target, fsync,
  rename: a crash leaves the old file or the new one, never a partial one;
* :func:`load_plain` -- ``torch.load(weights_only=True)`` with one clear error line (never
  torch's advice to load untrusted files with ``weights_only=False``);
* :func:`remove_temporaries` -- the ``.tmp`` files a killed write left behind.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

import torch

__all__ = ["TEMP_SUFFIX", "alive", "load_plain", "remove_temporaries", "save_atomic"]

TEMP_SUFFIX = ".tmp"
_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")


def save_atomic(obj: Any, path: str | os.PathLike) -> pathlib.Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename onto ``path``.

    A crash leaves either the old file or the new one, never a partial one at ``path``;
    a killed write leaves ``.<name>.<pid>.tmp``, which :func:`remove_temporaries` removes.
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
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


def load_plain(path: pathlib.Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is a ``ValueError``
    of one line that names ``what`` and ``path`` (missing files: ``FileNotFoundError``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "weights_only" in text or "Unpickl" in type(e).__name__ or "WeightsUnpickler" in text:
            why = "it holds pickled Python objects, which are never loaded (plain data only)"
        else:
            first = text.splitlines()[0] if text else ""
            why = f"truncated or corrupted? {type(e).__name__}: {first}"
        raise ValueError(f"{what} {path} is unreadable: {why}") from None


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this process included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is not ours
        return True
    return True


def remove_temporaries(folder: pathlib.Path) -> list[pathlib.Path]:
    """Delete the ``.<name>[.<tag>].<pid>.tmp`` files that killed writes (:func:`save_atomic`,
    the ONNX exporter, the log) left in ``folder`` (not recursive): those whose process is
    gone; returns what was removed."""
    removed: list[pathlib.Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m and p.is_file() and not alive(int(m.group(1))):
            try:
                p.unlink()
                removed.append(p)
            except OSError:  # pragma: no cover - a file we may not delete: leave it
                pass
    return removed

"""Which model a run trains: a registered supernet, or the user's own ``module:factory``.

``model = "resnet20"`` names a supernet of :mod:`archdiscover.models`; ``model =
"mypkg.nets:small_cnn"`` imports ``mypkg.nets`` (from the installed packages or the current
directory) and calls ``small_cnn(**model_args)``, which must return an ``nn.Module``. The run
stores the name and arguments, so ``archdiscover compile`` rebuilds the model the same way.
Every failure is one :class:`~archdiscover.engine.config.ConfigError` line naming the model.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["build", "is_import_path", "model_error", "resolve"]

_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


class _Fail(ValueError):
    pass


def is_import_path(name: str) -> bool:
    """True for ``package.module:factory`` (a user's model), False for a registered name."""
    return ":" in name


def resolve(name: str) -> Callable[..., nn.Module]:
    """The constructor ``name`` stands for; ``ValueError`` (one line) when there is none."""
    from .. import models

    if not is_import_path(name):
        if name not in models.available():
            raise _Fail(
                f"unknown model {name!r} (available: {', '.join(models.available())}; or your "
                "own as package.module:factory)"
            )
        return lambda **kw: models.build(name, **kw)
    if not _PATH.match(name):
        raise _Fail(f"model {name!r} is not of the form package.module:factory")
    module, _, attr = name.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:  # `archdiscover` is a console script: let it see the project
        sys.path.append(cwd)
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # ModuleNotFoundError, SyntaxError, an error in the module, ...
        first = str(e).splitlines()[0] if str(e) else ""
        raise _Fail(
            f"model {name!r}: cannot import {module!r} ({type(e).__name__}: {first})"
        ) from None
    fn = getattr(mod, attr, None)
    if fn is None:
        raise _Fail(f"model {name!r}: module {module!r} has no attribute {attr!r}")
    if not callable(fn):
        raise _Fail(f"model {name!r}: {module}.{attr} is a {type(fn).__name__}, not a callable")
    return fn


def model_error(name: str) -> str | None:
    """Why ``name`` does not resolve to a model constructor (None when it does)."""
    try:
        resolve(name)
    except _Fail as e:
        return str(e)
    return None


def build(name: str, args: dict[str, Any]) -> nn.Module:
    """``resolve(name)(**args)``, checked to be an ``nn.Module``; ``ValueError`` otherwise."""
    fn = resolve(name)
    try:
        model = fn(**args)
    except TypeError as e:
        raise _Fail(f"bad model_args for model {name!r}: {e}") from None
    if not isinstance(model, nn.Module):
        raise _Fail(f"model {name!r} returned a {type(model).__name__}, not an nn.Module")
    return model

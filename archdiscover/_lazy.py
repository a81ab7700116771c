"""PEP 562 lazy re-exports: a package names its public objects without importing them.

``__getattr__, __dir__ = lazy(__name__, {"LinBreg": ".optim", ...})`` in a package's
``__init__`` makes ``package.LinBreg`` import ``package.optim`` on first access only, so
importing the package (or one light part of it) never loads the heavy parts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy"]


def lazy(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the
    (relative) module that defines it; ``"name": ".module:other"`` exports ``other`` as
    ``name``, and ``"name": ".module:"`` the module itself."""
    table = dict(exports)
    mod = importlib.import_module(package)

    def __getattr__(name: str) -> Any:
        where = table.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        modname, colon, attr = where.partition(":")
        module = importlib.import_module(modname, package)
        value = module if colon and not attr else getattr(module, attr or name)
        setattr(mod, name, value)  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(mod)) | set(table))

    return __getattr__, __dir__

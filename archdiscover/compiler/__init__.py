"""The graph compiler: physically remove dead channels, fold constants, drop zero branches.

* :mod:`.analysis` -- which channels are constant, and what constant;
* :mod:`.passes` -- drop zero branches, plan the removal, round widths, fold constants;
* :mod:`.prune` -- physical removal (Torch-Pruning's per-layer functions), size counting;
* :mod:`.serialize` -- compact models as plain data (:func:`load_compiled`);
* :mod:`.pipeline` -- one compile: :class:`Compiled`, :class:`CompileReport`;
* :mod:`.tune` -- ``round_to="auto"``; :mod:`.api` -- :func:`compile`.

Whether the compact model is the same function is judged by :mod:`archdiscover.verify`.
Names are imported on first use.
"""

from .._lazy import lazy

__all__ = ["CompileError", "CompileReport", "Compiled", "compile", "load_compiled"]

__getattr__, __dir__ = lazy(
    __name__,
    {
        "CompileError": ".errors",
        "CompileReport": ".pipeline",
        "Compiled": ".pipeline",
        "compile": ".api",
        "load_compiled": ".serialize",
    },
)

"""archdiscover: discover compact neural architectures by sparse Bregman training.

The training core:

* :mod:`archdiscover.optim` -- ``LinBreg``, ``AdaBreg``, ``ProxSGD`` (``torch.optim`` optimizers);
* :mod:`archdiscover.regularizers` -- ``L1``, ``GroupL12``, ``Null``;
* :mod:`archdiscover.init` -- ``sparse_init_``;
* :mod:`archdiscover.schedule` -- ``LamScheduler``;
* :mod:`archdiscover.sparsity` -- ``report``.
"""

from .compile import Compiled, CompileError, CompileReport, compile, load_compiled
from .export import export_onnx, onnx_latency
from .graph import ChannelGroup, Slice, channel_groups, inspect
from .init import sparse_init_
from .optim import AdaBreg, LinBreg, ProxSGD, RegularizedOptimizer
from .regularizers import L1, GroupL12, Null, Regularizer
from .schedule import LamScheduler
from .sparsity import SparsityReport
from .sparsity import report as sparsity_report

__version__ = "0.1.0"

__all__ = [
    "L1",
    "AdaBreg",
    "ChannelGroup",
    "CompileError",
    "CompileReport",
    "Compiled",
    "GroupL12",
    "LamScheduler",
    "LinBreg",
    "Null",
    "ProxSGD",
    "RegularizedOptimizer",
    "Regularizer",
    "Slice",
    "SparsityReport",
    "channel_groups",
    "compile",
    "export_onnx",
    "inspect",
    "load_compiled",
    "onnx_latency",
    "sparse_init_",
    "sparsity_report",
]

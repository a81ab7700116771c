"""archdiscover: discover compact neural architectures by sparse Bregman training.

The path of a model through the library::

    archdiscover.models.build  ->  sparse_init_  ->  train (LinBreg / AdaBreg + LamScheduler)
        ->  compile (channel graph -> analysis -> passes -> prune -> verify)  ->  export_onnx

Every name below is imported on first use (PEP 562): ``from archdiscover import LinBreg``
loads torch and the optimizers only; the compiler's networkx and Torch-Pruning, the
exporter's onnx and onnxruntime, and the plots' matplotlib load when first used.

* :mod:`archdiscover.optim` -- ``LinBreg``, ``AdaBreg``, ``ProxSGD`` (``torch.optim`` optimizers);
* :mod:`archdiscover.regularizers` -- ``L1``, ``GroupL12``, ``CoupledGroupL12``, ``Null``;
* :mod:`archdiscover.init` -- ``sparse_init_``; :mod:`archdiscover.schedule` -- ``LamScheduler``;
* :mod:`archdiscover.sparsity` -- who is zero; :mod:`archdiscover.metrics` -- PSNR, SSIM;
* :mod:`archdiscover.graph` -- ``channel_groups``, ``inspect``;
  :mod:`archdiscover.coupling` -- ``coupled_param_groups``, ``active_channels``;
* :mod:`archdiscover.growth` -- ``enable_growth``: ReLU's subgradient 1 at 0 in training,
  so that units a sparse start switched off can enter (``sparse_init_`` installs it);
* :mod:`archdiscover.compiler` -- ``compile``, ``Compiled``, ``load_compiled``;
* :mod:`archdiscover.export` -- ``export_onnx``, ``onnx_latency``;
* :mod:`archdiscover.engine` -- ``TrainConfig``, ``train``; :mod:`archdiscover.models` -- the
  supernets.
"""

from ._lazy import lazy

__version__ = "0.1.0"

__all__ = [
    "L1",
    "AdaBreg",
    "ChannelGroup",
    "CompileError",
    "CompileReport",
    "Compiled",
    "CoupledGroupL12",
    "GroupL12",
    "LamScheduler",
    "LinBreg",
    "Null",
    "ProxSGD",
    "RegularizedOptimizer",
    "Regularizer",
    "Slice",
    "SparsityReport",
    "TrainConfig",
    "active_channels",
    "channel_groups",
    "compile",
    "coupled_param_groups",
    "disable_growth",
    "enable_growth",
    "export_onnx",
    "inspect",
    "load_compiled",
    "onnx_latency",
    "sparse_init_",
    "sparsity_report",
    "train",
]

__getattr__, __dir__ = lazy(
    __name__,
    {
        "AdaBreg": ".optim",
        "LinBreg": ".optim",
        "ProxSGD": ".optim",
        "RegularizedOptimizer": ".optim",
        "L1": ".regularizers",
        "GroupL12": ".regularizers",
        "CoupledGroupL12": ".regularizers",
        "Null": ".regularizers",
        "Regularizer": ".regularizers",
        "sparse_init_": ".init",
        "LamScheduler": ".schedule",
        "SparsityReport": ".sparsity",
        "sparsity_report": ".sparsity:report",
        "ChannelGroup": ".graph.groups",
        "Slice": ".graph.groups",
        "channel_groups": ".graph.groups",
        "inspect": ".graph.groups",
        "coupled_param_groups": ".coupling",
        "active_channels": ".coupling",
        "enable_growth": ".growth",
        "disable_growth": ".growth",
        "CompileError": ".compiler.errors",
        "CompileReport": ".compiler.pipeline",
        "Compiled": ".compiler.pipeline",
        "compile": ".compiler.api",
        "load_compiled": ".compiler.serialize",
        "export_onnx": ".export",
        "onnx_latency": ".latency",
        "TrainConfig": ".engine.config",
        "train": ".engine.loop",
        "models": ".models:",
    },
)

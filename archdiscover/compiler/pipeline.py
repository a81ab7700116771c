"""The compile pipeline for one rounding: trace, analyse, drop, plan, fold, prune, verify.

:func:`compile_once` works on a copy of ``model`` in eval mode:

1. trace it (:mod:`archdiscover.graph`) and analyse which channels are constant
   (:mod:`.analysis`);
2. topology (:mod:`.topology`): remove the connections whose gate is exactly zero, fold
   the other gates into their consumers where exact, drop the layers that no longer reach
   the output; then drop residual branches that are exactly zero, re-tracing until none is
   left (depth);
3. plan which coupled channel groups go (zero, dead downstream, or foldable constants),
   merge the constants that enter zero-padded convolutions into one carrier channel per
   set of consumers (:mod:`.carry`), round the widths (:mod:`.passes`), fold the
   constants into the consumers' biases and the merged ones into their carriers' weights;
4. remove the channels physically (:mod:`.prune`, Torch-Pruning's per-layer functions);
5. verify (:mod:`.verify`): the compact model must reproduce the original on the example
   inputs and on fresh random inputs to ``atol`` relative to the output scale, and neither
   may be NaN, else :class:`CompileError`.
"""

from __future__ import annotations

import copy
import os
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from .._inputs import Inputs, as_inputs
from ..export import export_onnx
from ..graph.ops import EVAL_IDENTITY_FUNCTIONS, producer_widths, qualified_name
from ..graph.trace import TraceError, trace, weight_depth
from ..verify import fresh_inputs, max_error, outputs
from . import carry, passes, topology
from .analysis import ValueAnalysis
from .errors import CompileError
from .prune import count, pad_mixing_norms, prune
from .rewrite import rewrite_sizes, update_attributes
from .serialize import save_compiled

__all__ = ["CompileReport", "Compiled", "checked_inputs", "compile_once"]


@dataclass
class CompileReport:
    """What ``compile`` did, with sizes before and after.

    ``macs`` are multiply-accumulates for one sample (FLOPs = 2 x MACs); ``depth`` is the
    largest number of Conv/ConvTranspose/Linear layers on a path from input to output;
    ``layers`` maps each weight layer to ``(width before, width after)`` (``after`` is 0 for
    a layer that was dropped with its residual branch or because it no longer reached the
    output). ``connections`` lists every gated connection (:class:`.topology.Connection`
    as a dict: gate, source, targets, value, status ``removed`` / ``folded`` / ``kept``);
    ``dropped_layers`` the layers that no longer reached the output, ``constant_layers``
    the Linear layers with all-zero weights that became their bias.
    """

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    depth_before: int
    depth_after: int
    layers: dict[str, tuple[int, int]]
    removed_groups: int
    folded_groups: int
    kept: dict[str, int]
    dropped_branches: list[str]
    round_to: int
    max_error: float
    seconds: float
    auto: dict[int, dict[str, float]] = field(default_factory=dict)
    connections: list[dict[str, Any]] = field(default_factory=list)
    dropped_layers: list[str] = field(default_factory=list)
    constant_layers: list[str] = field(default_factory=list)
    tracer: str = "torch.fx"
    attributes: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def flops_before(self) -> int:
        return 2 * self.macs_before

    @property
    def flops_after(self) -> int:
        return 2 * self.macs_after

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["layers"] = {k: list(v) for k, v in self.layers.items()}
        d["flops_before"], d["flops_after"] = self.flops_before, self.flops_after
        return d

    def __str__(self) -> str:
        def frac(a: int, b: int) -> str:
            return f"{a / b:.1%}" if b else "-"

        rows = [
            ("parameters", self.params_before, self.params_after),
            ("MACs / sample", self.macs_before, self.macs_after),
            ("depth (weight layers)", self.depth_before, self.depth_after),
        ]
        w = max([len(n) for n in self.layers] + [22])
        lines = [f"{'':<{w}}  {'before':>12}  {'after':>12}  {'kept':>6}"]
        lines += [f"{n:<{w}}  {a:>12,}  {b:>12,}  {frac(b, a):>6}" for n, a, b in rows]
        lines.append("")
        lines.append(f"{'layer width':<{w}}  {'before':>12}  {'after':>12}")
        for n, (a, b) in self.layers.items():
            lines.append(f"{n:<{w}}  {a:>12}  {b if b else 'dropped':>12}")
        lines.append("")
        lines.append(
            f"removed {self.removed_groups} channel groups ({self.folded_groups} constant ones "
            f"folded into the next layer), dropped {len(self.dropped_branches)} residual "
            f"branch(es); widths rounded to multiples of {self.round_to}; "
            f"max relative error {self.max_error:.2e}; {self.seconds:.2f} s"
        )
        for reason, n in self.kept.items():
            lines.append(f"kept {n} removable-looking group(s): {reason}")
        if self.connections:
            c = topology.summarize(self.connections)
            lines.append(
                f"gated connections: {c['folded'] + c['kept']} of {c['total']} kept "
                f"({c['folded']} folded into their consumer, {c['kept']} as a multiplication); "
                f"{c['removed']} removed with their zero gate, {c['dropped']} with their layer"
            )
        if self.dropped_layers:
            lines.append(
                "layers dropped (no longer reach the output): " + ", ".join(self.dropped_layers)
            )
        if self.constant_layers:
            lines.append(
                "zero-weight layers replaced by their bias: " + ", ".join(self.constant_layers)
            )
        odd = [n for n, (a, b) in self.layers.items() if 8 < b < a and b % 8]
        if self.round_to == 1 and odd:
            lines.append(
                f"note: {len(odd)} width(s) are not multiples of 8 ({odd[0]}: "
                f"{self.layers[odd[0]][1]}); in onnxruntime such widths can run slower than the "
                "dense model: compile with round_to='auto' (or 8 / 16) for deployment"
            )
        if self.auto:
            lines.append("round_to='auto' (onnxruntime median latency, ms):")
            for r, d in self.auto.items():
                cells = ", ".join(f"batch {k}: {v:.3f}" for k, v in d.items())
                lines.append(
                    f"  round_to={r}: {cells}" + ("  <- chosen" if r == self.round_to else "")
                )
        return "\n".join(lines)


class Compiled:
    """A compact model produced by :func:`compile`.

    Attributes:
        model: the compact ``nn.Module`` (the input model's class with narrower layers, or a
            ``torch.fx.GraphModule`` when residual branches were dropped).
        report: a :class:`CompileReport`.
        example_inputs: the inputs it was verified on.
    """

    def __init__(
        self, model: nn.Module, report: CompileReport, example_inputs: tuple[Tensor, ...]
    ) -> None:
        self.model = model
        self.report = report
        self.example_inputs = example_inputs

    def __repr__(self) -> str:
        r = self.report
        return (
            f"Compiled(params {r.params_before:,} -> {r.params_after:,}, "
            f"MACs {r.macs_before:,} -> {r.macs_after:,}, depth {r.depth_before} -> "
            f"{r.depth_after})"
        )

    def export_onnx(
        self,
        path: str | os.PathLike,
        dynamic_batch: bool = True,
        *,
        atol: float = 1e-5,
        dynamo: bool = False,
    ) -> pathlib.Path:
        """Export the compact model to ONNX, check it and verify it in onnxruntime.

        Runs ``onnx.checker``, then compares onnxruntime (CPU provider) with the compact torch
        model on the example inputs and on fresh inputs at another batch size; raises
        :class:`archdiscover.export.OnnxVerificationError` with the max error beyond ``atol``.
        Returns the path.
        """
        return export_onnx(
            self.model,
            path,
            self.example_inputs,
            dynamic_batch=dynamic_batch,
            atol=atol,
            dynamo=dynamo,
        )

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write the compact shapes and weights (plain data and tensors, no pickled code).

        Reload with :func:`archdiscover.load_compiled` and the supernet's constructor.
        """
        return save_compiled(self.model, self.report.to_dict(), path)


def checked_inputs(model: nn.Module, example_inputs: Inputs) -> tuple[Tensor, ...]:
    """The example inputs as a tuple of tensors with a non-empty batch, else CompileError."""
    try:
        inputs = as_inputs(example_inputs)
    except TypeError as e:
        raise CompileError(f"compile: {e}") from None
    for i, x in enumerate(inputs):
        if x.dim() == 0 or x.shape[0] == 0:
            raise CompileError(
                f"compile: example input {i} of shape {tuple(x.shape)} has no samples; give "
                f"{type(model).__name__} a batch of at least one"
            )
    return inputs


def compile_once(
    model: nn.Module,
    example_inputs: Inputs,
    atol: float,
    round_to: int,
    strict: bool,
    n_random: int,
) -> Compiled:
    """:func:`compile` with one rounding ``round_to`` (what ``"auto"`` calls per candidate)."""
    t0 = time.perf_counter()
    inputs = checked_inputs(model, example_inputs)
    work = copy.deepcopy(model).eval()
    checks = [inputs] + [fresh_inputs(inputs, seed) for seed in range(n_random)]
    try:
        refs = [outputs(work, x) for x in checks]
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        shapes = ", ".join(
            f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}" for x in inputs
        )
        raise CompileError(
            f"{type(model).__name__} cannot run on the example inputs ({shapes}): {first}"
        ) from None
    if any(bool(torch.isnan(t).any()) for r in refs for t in r):
        raise CompileError(
            f"{type(model).__name__} computes NaN on the example inputs (diverged weights?); "
            "nothing was compiled"
        )
    macs0, params0 = count(work, inputs)
    widths0 = producer_widths(work)
    try:
        g = trace(work, inputs)
    except TraceError as e:
        raise CompileError(str(e)) from e
    depth0 = weight_depth(g)
    # gates are found on torch.fx graphs (torch.export's are specialized to the shapes)
    topo = (
        topology.simplify(g, ValueAnalysis(g, inputs))
        if g.tracer == "torch.fx"
        else topology.TopologyResult()
    )
    if topo.changed:
        g = trace(g.gm, inputs)
    dropped: list[str] = []
    a = ValueAnalysis(g, inputs)
    # torch.export's graph is specialized to the example shapes: keep the user's module
    for _ in range(64 if g.tracer == "torch.fx" else 0):  # each pass drops >= 1 branch
        new = passes.drop_zero_branches(g, a)
        if not new:
            break
        dropped += new
        g = trace(g.gm, inputs)
        a = ValueAnalysis(g, inputs)
    p = passes.plan(g, a)
    if strict and p.blocked:
        raise CompileError(
            "exactly zero channels cannot be removed: "
            + "; ".join(p.blocked)
            + ". Pass strict=False to keep them (see archdiscover.inspect)."
        )
    merges = carry.plan_carriers(g, a, p)
    passes.round_widths(g, p, round_to)
    merges = {lab: c for lab, c in merges.items() if lab in p.remove}
    passes.fold_constants(g, a, p.fold - set(merges))
    carry.merge_carriers(g, a, merges)
    prune(g, p.remove, work)
    padded = pad_mixing_norms(g, p.remove, work)
    changed = rewrite_sizes(g, p.remove)
    attributes = update_attributes(g, work, changed)
    # the user's class when it computes the new sizes itself, else the rewritten graph
    if dropped or topo.changed:
        choices: list[nn.Module] = [_rooted(work, g.gm)]
        choices[0].delete_all_unused_submodules()  # type: ignore[operator]
        if topo.changed:  # e.g. the gates of connections that went
            topology.delete_unused_tensors(choices[0])  # type: ignore[arg-type]
    elif (g.sizes or padded) and p.remove and _general(g):
        choices = [work, _rooted(work, g.gm)]
    else:
        choices = [work]
    worst, out_model, failure = None, choices[-1], ""
    for cand in choices:
        if isinstance(cand, torch.fx.GraphModule):
            _drop_eval_identities(cand)
            cand.graph.lint()
        try:
            errors = [max_error(outputs(cand, x), r) for r, x in zip(refs, checks, strict=True)]
        except Exception as e:  # e.g. a reshape by a size the class computes from elsewhere
            failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            continue
        worst, out_model = max(errors, key=lambda e: e.rel), cand
        if worst.rel <= atol:
            break
    if worst is None:
        raise CompileError(
            f"the compact {type(model).__name__} does not run ({failure}); nothing was "
            "returned. Please report this model."
        )
    if not worst.rel <= atol:
        detail = f" ({worst.note})" if worst.note else ""
        raise CompileError(
            f"the compact model differs from the original by {worst.rel:.3e} (relative to the "
            f"output scale; atol={atol:g}){detail}; nothing was returned"
            + ("" if "NaN" in worst.note else ". Please report this model.")
        )
    macs1, params1 = count(out_model, inputs)
    widths1 = producer_widths(out_model)
    layers = {n: (w, widths1.get(n, 0)) for n, w in widths0.items()}
    report = CompileReport(
        params_before=params0,
        params_after=params1,
        macs_before=macs0,
        macs_after=macs1,
        depth_before=depth0,
        depth_after=weight_depth(trace(out_model, inputs)),
        layers=layers,
        removed_groups=len(p.remove),
        folded_groups=len(p.fold),
        kept=p.kept,
        dropped_branches=dropped,
        round_to=round_to,
        max_error=worst.rel,
        seconds=time.perf_counter() - t0,
        connections=[vars(c).copy() for c in topo.connections],
        dropped_layers=topo.dropped_layers,
        constant_layers=topo.constant_layers,
        tracer=g.tracer,
        attributes=attributes if out_model is work else {},
    )
    return Compiled(out_model, report, inputs)


def _general(g: Any) -> bool:
    """True when ``g``'s graph runs at any batch size: fx's, or torch.export's with a dynamic
    batch (one exported for the example's batch only is not returned as the model)."""
    from ..graph.export_trace import DYNAMIC_BATCH

    return g.tracer == "torch.fx" or bool(g.gm.meta.get(DYNAMIC_BATCH, False))


def _rooted(model: nn.Module, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``gm``'s graph over ``model``'s own submodules (so ``compiled.model.blocks[0].attn``
    is the user's attention module, with its updated head count), named after its class."""
    for node in gm.graph.nodes:  # buffers the passes created (constant branches)
        if node.op == "get_attr" and str(node.target).startswith(passes.CONST_PREFIX):
            if not hasattr(model, node.target):
                model.register_buffer(node.target, getattr(gm, node.target))
    out = torch.fx.GraphModule(model, gm.graph, class_name=type(model).__name__)
    for name, child in model.named_children():
        setattr(out, name, child)
    return out


def _drop_eval_identities(gm: torch.fx.GraphModule) -> None:
    """Replace calls that are the identity in eval mode (stochastic depth, drop path) by
    their input in a compiled graph (traced in eval mode, they compute nothing)."""
    hit = False
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and qualified_name(node.target) in EVAL_IDENTITY_FUNCTIONS:
            x = node.args[0] if node.args else None
            if isinstance(x, torch.fx.Node):
                node.replace_all_uses_with(x)
                gm.graph.erase_node(node)
                hit = True
    if hit:
        gm.recompile()

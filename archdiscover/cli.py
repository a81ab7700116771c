"""The ``archdiscover`` command line: train, compile, report, demo.

    archdiscover train --config run.toml [--run-dir DIR] [--epochs 5 --lr 0.05 ...]
    archdiscover compile RUN_DIR [--onnx model.onnx] [--round-to auto]
    archdiscover report RUN_DIR
    archdiscover demo

Every config key of :class:`archdiscover.engine.TrainConfig` is also a flag (``model_args``
as JSON: ``--model-args '{"widths": [100, 100]}'``); flags override the TOML file. Errors
(unknown key, wrong type, missing dataset, unknown model, unreadable checkpoint, a compiled
model that does not verify) print one line on stderr and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_FAIL = 1
EXIT_INTERNAL = 70


class _Fail(Exception):
    """An expected failure: print the message, exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# Config from TOML and flags
# ---------------------------------------------------------------------------------------------
def _read_toml(path: pathlib.Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise _Fail("reading TOML needs Python >= 3.11 or the tomli package") from None
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise _Fail(f"config file {path} {what}", EXIT_USAGE)
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise _Fail(f"config file {path}: invalid TOML: {e}", EXIT_USAGE) from None
    except UnicodeDecodeError:
        raise _Fail(f"config file {path} is not a TOML text file (not UTF-8)", EXIT_USAGE) from None
    return values


def _config_from_args(args: argparse.Namespace) -> tuple[Any, pathlib.Path]:
    from .engine.config import ConfigError, TrainConfig, parse_flag

    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(_read_toml(args.config))
    toml_run_dir = values.pop("run_dir", None)  # a TOML file may name its run directory
    if toml_run_dir is not None and (not isinstance(toml_run_dir, str) or not toml_run_dir):
        raise _Fail(
            f"config file {args.config}: run_dir must be a path (a string), got "
            f"{type(toml_run_dir).__name__} {toml_run_dir!r}",
            EXIT_USAGE,
        )
    run_dir = args.run_dir or toml_run_dir
    where = str(args.config) if args.config else "flags"
    try:
        for f in dataclasses.fields(TrainConfig):
            text = getattr(args, f"cfg_{f.name}", None)
            if text is not None:
                values[f.name] = parse_flag(f.name, text)
        cfg = TrainConfig.from_dict(values, where=where)
    except ConfigError as e:
        raise _Fail(str(e), EXIT_USAGE) from None
    if run_dir is None:
        stem = args.config.stem if args.config else "run"
        run_dir = pathlib.Path("runs") / stem
    return cfg, pathlib.Path(run_dir)


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
def _cmd_train(args: argparse.Namespace) -> int:
    from .engine.loop import train

    cfg, run_dir = _config_from_args(args)
    result = train(cfg, run_dir, resume=not args.fresh, progress=not args.quiet)
    if not result.dist.main:  # under torchrun only rank 0 reports
        return 0
    last = result.last
    metric = (
        f"test PSNR {last['val_psnr']:.2f} dB"
        if last.get("val_psnr") is not None
        else f"test accuracy {last.get('val_accuracy', float('nan')):.2f}%"
    )
    print(
        f"{run_dir}: {metric}, non-zero {last.get('density', float('nan')):.2%}, active units "
        f"{last.get('active_units')}; model in {run_dir / 'model.pt'}"
    )
    return 0


def _example_inputs(run_dir: pathlib.Path, n: int) -> tuple[Any, Any]:
    """The run's own test images (real data) as example inputs, and its config."""
    from .engine import ConfigError, TrainConfig, load_split

    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise _Fail(f"{run_dir} is not a run directory (no config.json)", EXIT_USAGE)
    try:
        cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()), where=str(cfg_path))
    except ConfigError as e:
        raise _Fail(str(e), EXIT_USAGE) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _Fail(f"{cfg_path} is not valid JSON: {e}", EXIT_USAGE) from None
    split = load_split(cfg)
    return split.test.tensors[0][:n], cfg


def _cmd_compile(args: argparse.Namespace) -> int:
    import torch

    from ._io import remove_temporaries
    from .compiler import compile as compile_model
    from .engine import load_trained
    from .export import export_onnx
    from .latency import compare_latency

    run_dir = _run_dir_arg(args.run_dir)
    batch_sizes = _batch_sizes(args.batch_sizes)
    if args.repeats < 1:
        raise _Fail(f"--repeats must be >= 1, got {args.repeats}", EXIT_USAGE)
    # a relative --onnx path is relative to the run directory, like every file of the run
    onnx_path = run_dir / (args.onnx or "model.onnx")
    if onnx_path.is_dir():
        raise _Fail(f"--onnx {onnx_path} is a directory", EXIT_USAGE)
    if not onnx_path.parent.is_dir():
        raise _Fail(f"--onnx {onnx_path}: the folder {onnx_path.parent} does not exist", EXIT_USAGE)
    remove_temporaries(run_dir)  # what a killed compile or export left behind
    model, meta = load_trained(run_dir)
    x, _cfg = _example_inputs(run_dir, 64)
    round_to: int | str = args.round_to if args.round_to == "auto" else int(args.round_to)
    compiled = compile_model(model, x, round_to=round_to, auto_batch_sizes=batch_sizes)
    compiled.export_onnx(onnx_path)
    compiled.save(run_dir / "compiled.pt")
    print(compiled.report)
    dense_path = export_onnx(model, run_dir / "supernet.onnx", x[:8])
    lat = compare_latency(
        dense_path, onnx_path, tuple(x.shape[1:]), batch_sizes, repeats=args.repeats, rounds=4
    )
    print(
        f"\nONNX: {onnx_path} (verified in onnxruntime); compact model: {run_dir / 'compiled.pt'}"
    )
    print("onnxruntime latency, median ms (dense -> compact):")
    for b, d in lat.items():
        print(
            f"  batch {b:>4}: {d['dense']['median_ms']:9.3f} -> {d['compact']['median_ms']:9.3f}"
            f"  ({d['speedup']:.2f}x)"
        )
    with torch.no_grad():
        same = (
            bool((model(x).argmax(1) == compiled.model(x).argmax(1)).all())
            if meta.get("task") == "classification"
            else True
        )
    if not same:  # pragma: no cover - compile() verifies outputs already
        raise _Fail("the compiled model's predictions differ from the trained model's")
    return 0


def _run_dir_arg(path: pathlib.Path) -> pathlib.Path:
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise _Fail(f"run directory {path} {what}")
    return path


def _out_dir_arg(flag: str, path: pathlib.Path | None) -> pathlib.Path | None:
    if path is not None and path.exists() and not path.is_dir():
        raise _Fail(f"{flag} {path} is a file, not a directory", EXIT_USAGE)
    return path


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(b < 1 for b in sizes):
        raise _Fail(f"--batch-sizes must be positive ints like 1,64, got {text!r}", EXIT_USAGE)
    return sizes


def _cmd_report(args: argparse.Namespace) -> int:
    from .plots import report

    _run_dir_arg(args.run_dir)
    paths = report(args.run_dir, _out_dir_arg("--out", args.out))
    arch = _architecture_plot(args.run_dir, paths[0].parent)
    for p in [*paths, *([arch] if arch is not None else [])]:
        print(p)
    return 0


def _architecture_plot(run_dir: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path | None:
    """``architecture.png``: the supernet's topology beside the compiled one's (layers with
    their widths, connections), for a finished run (one with ``model.pt``)."""
    if not (run_dir / "model.pt").is_file():
        return None
    from .compiler import compile as compile_model
    from .compiler.errors import CompileError
    from .compiler.topology import layer_graph, summarize
    from .engine import load_trained
    from .plots import plot_architecture

    model, _meta = load_trained(run_dir)
    x, _cfg = _example_inputs(run_dir, 64)
    try:
        compiled = compile_model(model, x)
    except CompileError as e:
        first = str(e).splitlines()[0]
        print(f"archdiscover: architecture.png not drawn: {first}", file=sys.stderr)
        return None
    rep = compiled.report
    c = summarize(rep.connections)
    kept = c["folded"] + c["kept"]
    gates = f", {kept} of {c['total']} gated connections" if c["total"] else ""
    return plot_architecture(
        {
            f"supernet: {rep.params_before:,} parameters": layer_graph(model, x),
            f"discovered (compiled): {rep.params_after:,} parameters{gates}": layer_graph(
                compiled.model, x
            ),
        },
        out_dir / "architecture.png",
        title=run_dir.resolve().name,
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .compiler import compile as compile_model
    from .engine import TrainConfig, train
    from .export import export_onnx, ort_session
    from .latency import compare_latency

    cfg = TrainConfig(
        model="mlp",
        model_args={
            "in_features": 784,
            "widths": [400, 400] if not args.quick else [100, 100],
            "out_features": 10,
        },
        dataset="mnist5k",
        optimizer="linbreg",
        lr=0.1,
        momentum=0.9,
        regularizer="coupled",
        lam=0.3,
        init_density=0.05,
        epochs=15 if not args.quick else 4,
        batch_size=64,
    )
    run_dir = _out_dir_arg("--out", args.out)
    assert run_dir is not None
    print(
        f"training a {cfg.model_args['widths']} MLP supernet on the MNIST 5k subset "
        f"(LinBreg, neuron groups, 5% of each layer's neurons at the start) into {run_dir}"
    )
    result = train(
        cfg,
        run_dir,
        resume=False if not (run_dir / "checkpoints").exists() else True,
        progress=not args.quiet,
    )
    model = result.model.eval()
    x, _ = _example_inputs(run_dir, 10_000)
    predicted = result.last["active_units"]
    compiled = compile_model(model, x[:64])
    print(compiled.report)
    onnx_path = compiled.export_onnx(run_dir / "model.onnx")
    compiled.save(run_dir / "compiled.pt")
    sess = ort_session(onnx_path)
    ort_out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    err = float(np.abs(ort_out - ref).max() / max(1.0, float(np.abs(ref).max())))
    same = bool((ort_out.argmax(1) == ref.argmax(1)).all())
    widths = {n: w for n, (_, w) in compiled.report.layers.items()}
    if not same or err > 1e-5:
        raise _Fail(f"onnxruntime disagrees with the trained model (max error {err:.2e})")
    if widths != predicted:
        raise _Fail(f"compiled widths {widths} differ from the active units {predicted}")
    dense = export_onnx(model, run_dir / "supernet.onnx", x[:8])
    lat = compare_latency(dense, onnx_path, tuple(x.shape[1:]), (1, 64), repeats=40, rounds=4)
    speed = ", ".join(f"batch {b}: {d['speedup']:.2f}x" for b, d in lat.items())
    print(
        f"\ntest accuracy {result.last['val_accuracy']:.2f}% with hidden widths "
        f"{list(widths.values())[:-1]} (supernet {cfg.model_args['widths']}); onnxruntime "
        f"({onnx_path}) reproduces all {len(x)} test predictions (max error {err:.1e}); "
        f"onnxruntime speed-up {speed}"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (and the same for every sub-command)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exit_on_error", True)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from .engine.config import TrainConfig

    ap = _Parser(
        prog="archdiscover", description="Discover compact architectures by sparse training."
    )
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a supernet (TOML config and/or flags)")
    t.add_argument("--config", type=pathlib.Path, help="a TOML file of TrainConfig keys")
    t.add_argument("--run-dir", type=pathlib.Path, help="default: runs/<config name>")
    t.add_argument("--fresh", action="store_true", help="refuse to resume an existing run")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    for f in dataclasses.fields(TrainConfig):
        t.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f"cfg_{f.name}",
            metavar="VALUE",
            help=f"config key {f.name} ({f.type!s})",
        )
    t.set_defaults(fn=_cmd_train)

    c = sub.add_parser("compile", help="compile a run's model, verify, export ONNX, time it")
    c.add_argument("run_dir", type=pathlib.Path)
    c.add_argument("--onnx", type=pathlib.Path, help="default: RUN_DIR/model.onnx")
    c.add_argument("--round-to", default="auto", help="auto (measure 1/4/8/16) or an int")
    c.add_argument("--batch-sizes", default="1,64", help="latency batch sizes, e.g. 1,64")
    c.add_argument("--repeats", type=int, default=40)
    c.set_defaults(fn=_cmd_compile)

    r = sub.add_parser(
        "report", help="PNG plots of a run (metrics, scale space, widths, architecture)"
    )
    r.add_argument("run_dir", type=pathlib.Path)
    r.add_argument("--out", type=pathlib.Path, help="default: RUN_DIR/plots")
    r.set_defaults(fn=_cmd_report)

    d = sub.add_parser("demo", help="train, compile, export and verify a small MLP (minutes)")
    d.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/demo"))
    d.add_argument("--quick", action="store_true", help="a narrower supernet, 4 epochs")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(fn=_cmd_demo)
    return ap


def _one_line(e: BaseException) -> str:
    """The first line of an error's message (an OSError as ``path: reason``)."""
    if isinstance(e, OSError) and e.strerror and not isinstance(e, _Fail):
        where = e.filename if e.filename is not None else ""
        return f"{where}: {e.strerror}" if where else e.strerror
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _expected(e: BaseException) -> bool:
    """Errors the library raises on purpose for bad input (their message says what to do)."""
    names = {
        ("archdiscover.compiler.errors", "CompileError"),
        ("archdiscover.engine.checkpoint", "CheckpointError"),
        ("archdiscover.engine.loop", "DivergenceError"),
        ("archdiscover.graph.trace", "TraceError"),
        ("archdiscover.export", "OnnxExportError"),
        ("archdiscover.export", "OnnxVerificationError"),
    }
    for mod, name in names:
        cls = getattr(sys.modules.get(mod), name, None)
        if cls is not None and isinstance(e, cls):
            return True
    return isinstance(e, (OSError, ValueError, TypeError))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``archdiscover`` console script; returns the exit status.

    Every failure is one line on stderr and a non-zero status (2: bad usage or config,
    1: a run, file or model that fails, 130: interrupted, 70: an internal error); set
    ``ARCHDISCOVER_DEBUG=1`` to see the traceback instead.
    """
    args = _parser().parse_args(argv)
    from .engine.config import ConfigError

    if getattr(args, "round_to", "auto") != "auto":
        try:
            if int(args.round_to) < 1:
                raise ValueError
        except ValueError:
            print(
                f"archdiscover: error: --round-to must be auto or a positive int, got "
                f"{args.round_to!r}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    debug = bool(os.environ.get("ARCHDISCOVER_DEBUG"))
    try:
        return int(args.fn(args) or 0)
    except _Fail as e:
        print(f"archdiscover: error: {e}", file=sys.stderr)
        return e.code
    except ConfigError as e:
        print(f"archdiscover: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "archdiscover: interrupted (the last checkpoint is kept; run again to resume)",
            file=sys.stderr,
        )
        return 130
    except Exception as e:
        if debug:
            raise
        if _expected(e):
            print(f"archdiscover: error: {_one_line(e)}", file=sys.stderr)
            return EXIT_FAIL
        print(
            f"archdiscover: internal error: {type(e).__name__}: {_one_line(e)} (please report "
            "it; ARCHDISCOVER_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())

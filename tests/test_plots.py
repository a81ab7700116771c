"""Tests of archdiscover.plots: reading the JSON-lines log and writing the PNGs."""

from __future__ import annotations

import json
import re

import matplotlib.image
import pytest

from archdiscover import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record(epoch: int, *, psnr: bool = False, n_layers: int = 3, **extra) -> dict:
    names = [f"layers.{2 * i + 1}" for i in range(n_layers)]
    widths = {n: (400 if i < n_layers - 1 else 10) for i, n in enumerate(names)}
    active = {n: min(w, 5 * epoch + i) for i, (n, w) in enumerate(widths.items())}
    r = {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "val_loss": 1.2 / epoch,
        "density": 0.02 * epoch,
        "weight_density": 0.018 * epoch,
        "active_units": active,
        "widths": widths,
        "lam": None if epoch == 1 else 0.5,
        "lr": 0.1,
        "seconds": 1.9,
    }
    if psnr:
        r["val_psnr"] = 18.0 + epoch
    else:
        r["val_accuracy"] = 80.0 + epoch
    r.update(extra)
    return r


def _write(path, records, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


@pytest.fixture
def cls_run(tmp_path):
    """A classification run of 6 epochs, resumed after epoch 4 (epochs 4 re-logged), killed
    while writing epoch 7."""
    run = tmp_path / "cls_run"
    run.mkdir()
    records = [_record(e) for e in (1, 2, 3, 4)]
    records.append(_record(4, val_accuracy=99.5, train_loss=0.123))  # resumed: epoch 4 again
    records += [_record(e) for e in (5, 6)]
    _write(run / "log.jsonl", records, tail='{"epoch": 7, "train_lo')
    return run


def _check_png(path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    h, w = img.shape[:2]
    assert w > 300 and h > 300
    assert (w, h) == (1200, 480)  # 10 x 4 in at 120 dpi


def test_read_log_dedup_and_truncated_line(cls_run):
    log_path = cls_run / "log.jsonl"
    with pytest.warns(UserWarning, match=r"log\.jsonl:8: .*not valid JSON"):
        log = plots.read_log(log_path)
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6]
    # the resumed run's epoch 4 (the last occurrence) wins
    assert log[3]["val_accuracy"] == 99.5
    assert log[3]["train_loss"] == 0.123
    assert log[0]["lam"] is None
    assert log[5]["active_units"] == {"layers.1": 30, "layers.3": 31, "layers.5": 10}


def test_read_log_sorts_and_skips_blank_and_non_objects(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text(json.dumps({"epoch": 3}) + "\n\n[1, 2]\n" + json.dumps({"epoch": 1}) + "\n")
    with pytest.warns(UserWarning, match="not a JSON object"):
        log = plots.read_log(p)
    assert [r["epoch"] for r in log] == [1, 3]


def test_report_classification(cls_run):
    with pytest.warns(UserWarning, match="not valid JSON"):
        paths = plots.report(cls_run)
    assert [p.name for p in paths] == ["metrics.png", "scale_space.png", "widths.png"]
    assert all(p.parent == cls_run / "plots" for p in paths)
    for p in paths:
        _check_png(p)


def test_report_denoising_out_dir(tmp_path):
    run = tmp_path / "denoise"
    run.mkdir()
    _write(run / "log.jsonl", [_record(e, psnr=True) for e in range(1, 5)])
    out = tmp_path / "elsewhere" / "figs"
    paths = plots.report(run, out)
    assert [p.parent for p in paths] == [out] * 3
    for p in paths:
        _check_png(p)


def test_report_many_layers_fraction_mode(tmp_path):
    run = tmp_path / "deep"
    run.mkdir()
    _write(run / "log.jsonl", [_record(e, n_layers=15) for e in range(1, 6)])
    paths = plots.report(run)
    for p in paths:
        _check_png(p)


def test_plots_without_validation_or_layers(tmp_path):
    log = [{"epoch": e, "train_loss": 0.5 / e} for e in (1, 2, 3)]
    for fn, name in [
        (plots.plot_metrics, "m.png"),
        (plots.plot_scale_space, "s.png"),
        (plots.plot_widths, "w.png"),
    ]:
        _check_png(fn(log, tmp_path / "sub" / name))


def test_report_missing_log(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"log\.jsonl"):
        plots.report(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.jsonl"))):
        plots.read_log(tmp_path / "nope.jsonl")


def test_report_empty_log(tmp_path):
    (tmp_path / "log.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"log\.jsonl"):
        plots.report(tmp_path)
    assert not (tmp_path / "plots").exists()
    with pytest.raises(ValueError, match="no epochs"):
        plots.plot_metrics([], tmp_path / "m.png")


def test_widths_log_scale_zero_width_and_single_epoch(tmp_path):
    # widest / narrowest > 50 -> log axis; a layer pruned to 0 units; negative loss -> linear
    log = [
        {
            "epoch": 3,
            "active_units": {"conv1": 12, "conv2": 0, "fc": 180, "head": 10},
            "widths": {"conv1": 64, "conv2": 128, "fc": 4096, "head": 10},
            "train_loss": -0.5,
            "val_loss": 0.2,
        }
    ]
    _check_png(plots.plot_widths(log, tmp_path / "w.png"))
    _check_png(plots.plot_metrics(log, tmp_path / "m.png"))
    _check_png(plots.plot_scale_space(log, tmp_path / "s.png"))


# -- what the pictures show (each failed before the fix) -----------------------------------------
def _axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _grow(n_layers=3, epochs=6, widths=None, full=False):
    names = [f"l{i}" for i in range(n_layers)]
    widths = widths or {n: 64 for n in names}
    out = []
    for e in range(1, epochs + 1):
        active = {
            n: (widths[n] if full else min(widths[n], 4 * e + i)) for i, n in enumerate(names)
        }
        r = {"epoch": e, "train_loss": 0.3 / e, "val_loss": 0.05 * e, "density": 1.0 if full
             else 0.1 * e, "active_units": active, "widths": widths}  # fmt: skip
        out.append(r)
    out[0]["initial"] = {"density": 0.02, "active_units": {n: 2 for n in names}}
    return out


def test_the_sparse_start_is_epoch_zero():
    fig = plots.scale_space_figure(_grow())
    ax_u, ax_d = _axes(fig)[:2]
    assert all(line.get_xdata()[0] == 0 for line in ax_u.get_lines())
    assert ax_u.get_lines()[0].get_ydata()[0] == 2  # the start's active units
    assert ax_d.get_lines()[0].get_xdata()[0] == 0
    assert ax_d.get_lines()[0].get_ydata()[0] == pytest.approx(2.0)  # 2% at the start


def test_the_density_line_is_not_on_the_frame():
    fig = plots.scale_space_figure(_grow(full=True))
    ax_d = _axes(fig)[1]
    top = max(max(line.get_ydata()) for line in ax_d.get_lines())
    assert ax_d.get_ylim()[1] > top * 1.02


def test_many_layers_are_a_heatmap_not_22_lines():
    fig = plots.scale_space_figure(_grow(n_layers=22))
    ax_u = _axes(fig)[0]
    assert len(ax_u.images) == 1 and ax_u.get_legend() is None
    assert [t.get_text() for t in ax_u.get_yticklabels()] == [f"l{i}" for i in range(22)]
    assert ax_u.images[0].get_array().shape == (22, 7)  # layers x epochs 0..6


def test_a_wide_fixed_output_does_not_squash_the_hidden_layers():
    widths = {"l0": 784, "l1": 784, "l2": 784}
    log = _grow(widths=widths)
    for r in log:
        r["active_units"]["l2"] = 784  # the output layer: always all 784
    ax_u = _axes(plots.scale_space_figure(log))[0]
    assert ax_u.get_yscale() == "log"
    mixed = _grow(widths={"l0": 784, "l1": 30, "l2": 10})
    ax_m = _axes(plots.scale_space_figure(mixed))[0]
    assert ax_m.get_ylim()[1] <= 1.1  # fractions of each layer's width


def test_epoch_ticks_are_integers():
    for fig in (plots.scale_space_figure(_grow(epochs=20)), plots.metrics_figure(_grow(epochs=20))):
        for ax in _axes(fig):
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_curves_that_coincide_stay_visible():
    fig = plots.scale_space_figure(_grow(full=True))
    lines = _axes(fig)[0].get_lines()
    assert len(lines) == 3
    assert len({line.get_markevery() for line in lines}) == 3  # markers at other epochs
    assert len({line.get_linestyle() for line in lines}) == 3
    assert len({line.get_marker() for line in lines}) == 3


def test_log_axes_label_more_than_decades():
    ax_l = _axes(plots.metrics_figure(_grow(epochs=8)))[1]
    assert ax_l.get_yscale() == "log"
    lo, hi = ax_l.get_ylim()
    labelled = [t for t in ax_l.yaxis.get_majorticklocs() if lo <= t <= hi]
    assert len(labelled) >= 3  # 0.05, 0.1, 0.2, ... not only 10^-1

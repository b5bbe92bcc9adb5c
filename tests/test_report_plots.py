"""The plots: made from a small results file (bench on a tiny trace, a few configs and a two-point
cache sweep, one repeat), then opened and checked: PNG size and content, every config in its
figure's legend, legends clear of every axes, the sweep figure only with a sweep, failed runs and
the memcpy row handled, and ``pagecodec report --plots`` writing PNG and SVG."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread
from matplotlib.legend import Legend
from matplotlib.text import Annotation, Text

from conftest import write_trace
from pagecodec.atomic import umask
from pagecodec.report import analysis as A
from pagecodec.report.plots import FIGURES, build_figures, cache_sweeps, size_label, styles_for, write_plots

PS = 4096
CONFIGS = ("xbzrle", "xor-zstd", "compress")
SWEEP = "xbzrle-cache-size=16K,64K"


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pagecodec.cli", *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def results_file(tmp_path_factory):
    """bench's results for a 48-page trace of four rounds: memcpy, none, xbzrle and xor-zstd at two
    cache sizes, compress."""
    rng = np.random.default_rng(5)
    ram = np.zeros((48, PS), np.uint8)
    ram[:40] = np.repeat(rng.integers(97, 123, (40, PS // 8), dtype=np.uint8), 8, axis=1)
    rounds = [{0: (np.arange(48) * PS, ram.copy())}]
    for _ in range(3):
        idx = np.sort(rng.choice(48, 16, replace=False))
        ram[idx, rng.integers(0, PS - 16)] ^= 0x5A
        rounds.append({0: (idx * PS, ram[idx].copy())})
    d = tmp_path_factory.mktemp("plots")
    trace = d / "tiny.trace.parquet"
    write_trace(trace, [("pc.ram", 48 * PS)], rounds)
    out = d / "results.json"
    args = [a for c in CONFIGS for a in ("--config", c)]
    p = run("bench", str(trace), *args, "--sweep", SWEEP, "--repeat", "1", "--no-decode", "--json", str(out))
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(scope="module")
def results(results_file):
    return json.loads(results_file.read_text())


@pytest.fixture(scope="module")
def figures(results):
    return build_figures(results)


@pytest.fixture(scope="module")
def written(results, tmp_path_factory):
    d = tmp_path_factory.mktemp("written")
    return d, write_plots(results, d)


TITLES = {"wire-vs-cpu": "Wire bytes against sender CPU", "rounds": "Wire bytes of each migration pass",
          "cache-sweep": "Cache-size sweep", "relative-to-none": "Against QEMU's defaults"}
UNITS = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def _title(fig, name):
    (t,) = [t for t in fig.findobj(Text) if t.get_text().startswith(TITLES[name])]
    return t


def _unit(label):
    return UNITS[label.rsplit("(", 1)[1].rstrip(")")]


def _legend_texts(fig):
    return [t.get_text() for leg in fig.findobj(Legend) for t in leg.get_texts()]


def _config_labels(results):
    return [A.label(r) for r in results if A.ok(r) and not A.is_baseline(r)]


# -- files ------------------------------------------------------------------------------------------
def test_every_figure_is_written_as_png_and_svg_with_normal_permissions(written):
    d, files = written
    assert {f.name for f in files} == {f"{n}.{ext}" for n in FIGURES for ext in ("png", "svg")}
    assert sorted(p.name for p in d.iterdir()) == sorted(f.name for f in files)  # no temporary files left
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask()


def test_pngs_have_a_size_and_content(written):
    _, files = written
    for f in files:
        if f.suffix != ".png":
            continue
        img = imread(f)
        h, w = img.shape[:2]
        assert w >= 600 and h >= 300, (f.name, img.shape)
        rgb = (img[..., :3] * 255).round().astype(np.uint32).reshape(-1, 3)
        background = (rgb >= 250).all(axis=1)
        assert 0.03 < 1 - background.mean() < 0.9, f.name  # drawn on, but not a solid block
        colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
        assert len(colours) > 50, f.name  # colours, not one ink


def test_svg_keeps_text_as_text(written, results):
    d, _ = written
    svg = (d / "wire-vs-cpu.svg").read_text()
    assert "<text" in svg
    for lab in _config_labels(results):
        assert f">{lab}<" in svg


def test_unknown_format_is_refused_before_anything_is_written(results, tmp_path):
    with pytest.raises(ValueError, match="bmpx"):
        write_plots(results, tmp_path / "p", formats=("png", "bmpx"))
    assert not (tmp_path / "p").exists()


# -- legends ----------------------------------------------------------------------------------------
def test_every_config_is_in_its_figures_legend(figures, results):
    labels = _config_labels(results)
    assert "none" in labels and "compress" in labels and len(labels) == 6
    for name in ("wire-vs-cpu", "rounds"):
        assert set(labels) <= set(_legend_texts(figures[name])), name
    assert set(labels) - {"none"} <= set(_legend_texts(figures["relative-to-none"]))
    assert {"xbzrle", "xor-zstd"} <= set(_legend_texts(figures["cache-sweep"]))


def _assert_legends_clear(name, fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = fig.findobj(Legend)
    assert legends
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.get_axes():
            assert not box.overlaps(ax.get_window_extent(renderer)), (leg, ax.get_title())
        assert not box.overlaps(_title(fig, name).get_window_extent(renderer))


def test_legends_cover_no_axes(figures):
    assert set(figures) == set(FIGURES)
    for name, fig in figures.items():
        _assert_legends_clear(name, fig)


def _many(results, n_configs=16, n_traces=6):
    """The default bench's size made from the small results: n configs × n traces (copies of the
    tiny trace's runs under other names)."""
    ok = [r for r in results if A.ok(r) and not A.is_baseline(r) and A.label(r) != "none"]
    memcpy = next(r for r in results if A.is_baseline(r))
    none = next(r for r in results if A.label(r) == "none")
    out = []
    for t in range(n_traces):
        for i, r in enumerate([memcpy, none] + [ok[j % len(ok)] for j in range(n_configs - 1)]):
            r = copy.deepcopy(r)
            r["trace"]["path"] = f"corpora/trace-number-{t}.trace.parquet"
            r["trace"]["sha256"] = f"{t:064x}"
            if i >= 2:
                r["config"]["label"] = f"config-{i:02d}-{A.label(r)}"
                r["wire"]["total"] = int(r["wire"]["total"] * (1 + 0.05 * i))
            out.append(r)
    return out


def test_sixteen_configs_on_six_traces_stay_apart_and_clear_of_the_data(results):
    many = _many(results)
    figs = build_figures(many)
    labels = _config_labels(many)
    assert len(set(labels)) == 16
    st = styles_for(labels)
    assert len({(s.color, s.marker) for s in st.values()}) == 16 and len({s.color for s in st.values()}) == 16
    assert len(figs["wire-vs-cpu"].get_axes()) == 6
    _assert_legends_clear("wire-vs-cpu", figs["wire-vs-cpu"])  # the grid (the others cost seconds to draw)
    assert set(labels) <= set(_legend_texts(figs["wire-vs-cpu"]))
    one = build_figures(_many(results, n_traces=1))  # one trace: the legend is as tall as the figure
    for name, fig in one.items():
        _assert_legends_clear(name, fig)


# -- content ----------------------------------------------------------------------------------------
def test_axes_have_labels_with_units_and_figures_titles(figures):
    for name, fig in figures.items():
        _title(fig, name)
        for ax in fig.get_axes():
            assert ax.get_xlabel() or not ax.xaxis.get_visible(), (name, ax.get_title())  # a twin shares its x
            if ax.get_ylabel():
                assert "(" in ax.get_ylabel(), (name, ax.get_ylabel())  # a unit
    for ax in figures["wire-vs-cpu"].get_axes():
        assert "s/GiB" in ax.get_xlabel() and _unit(ax.get_ylabel()) == 1024  # a 48-page trace: KiB


def test_the_frontier_steps_through_the_pareto_optimal_points(figures, results):
    pts = [r for r in results if A.ok(r) and not A.is_baseline(r)]
    best = sorted((A.cpu(pts[i]), A.wire_total(pts[i])) for i in A.pareto_optimal(pts))
    (ax,) = figures["wire-vs-cpu"].get_axes()
    (step,) = [ln for ln in ax.get_lines() if ln.get_drawstyle().startswith("steps")]
    xs, ys = step.get_xdata(), step.get_ydata()
    assert list(xs) == pytest.approx([c for c, _ in best])
    assert list(ys * _unit(ax.get_ylabel())) == pytest.approx([w for _, w in best])


def test_memcpy_is_the_floor_line_only(figures, results):
    memcpy = next(r for r in results if A.is_baseline(r))
    for name in ("wire-vs-cpu", "relative-to-none"):
        texts = _legend_texts(figures[name])
        assert "memcpy" not in texts and any(t.startswith("memcpy (") for t in texts)
    (ax,) = figures["wire-vs-cpu"].get_axes()
    floor = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]]
    assert [ln.get_xdata()[0] for ln in floor] == [pytest.approx(A.cpu(memcpy))]
    assert [a.get_text() for a in ax.texts if isinstance(a, Annotation)] == ["memcpy"]
    assert len(ax.collections) == len(_config_labels(results))  # a point per config, none for memcpy
    assert "memcpy" not in _legend_texts(figures["rounds"])


def test_rounds_have_a_line_per_config_and_a_point_per_pass(figures, results):
    (ax,) = figures["rounds"].get_axes()
    lines = ax.get_lines()
    assert len(lines) == len(_config_labels(results))
    passes = len(next(r for r in results if A.label(r) == "none")["rounds"])
    assert passes == 4 and all(len(ln.get_xdata()) == passes for ln in lines)


def test_the_sweep_groups_configs_that_differ_only_in_cache_size(results):
    sweeps = cache_sweeps(results)
    assert sorted(s.label for s in sweeps) == ["xbzrle", "xor-zstd"]
    assert all([size for size, _ in s.points] == [16384, 65536] for s in sweeps)


def test_the_sweep_figure_appears_only_with_a_sweep(results, tmp_path):
    one_size = [r for r in results if "xbzrle-cache-size=64K" not in A.label(r)]
    figs = build_figures(one_size)
    assert "cache-sweep" not in figs and {"wire-vs-cpu", "rounds", "relative-to-none"} <= set(figs)
    files = write_plots(one_size, tmp_path, formats="png")
    assert not any(f.name.startswith("cache-sweep") for f in files) and not (tmp_path / "cache-sweep.png").exists()


def test_failed_runs_are_left_out_without_a_crash(results, tmp_path):
    failed = {"trace": {"path": "corpora/broken.trace.parquet"}, "config": {"label": "broken-codec"},
              "status": "failed", "error": {"type": "RuntimeError", "message": "boom"}}
    half = copy.deepcopy(next(r for r in results if A.label(r) == "compress"))
    half.update(status="failed", config={**half["config"], "label": "failed-after-running"})
    figs = build_figures(results + [failed, half])
    for fig in figs.values():
        assert not {"broken-codec", "failed-after-running"} & set(_legend_texts(fig))
    assert build_figures([failed]) == {}
    assert write_plots([failed], tmp_path / "none") == []


def test_results_without_none_or_rounds_drop_only_those_figures(results):
    bare = [{k: v for k, v in r.items() if k != "rounds"} for r in results if A.label(r) != "none"]
    assert set(build_figures(bare)) == {"wire-vs-cpu", "cache-sweep"}


def test_size_labels_use_qemus_suffixes():
    assert [size_label(n) for n in (512, 16384, 262144, 1 << 20, 3 << 29, 1 << 40)] == \
        ["512", "16K", "256K", "1M", "1.5G", "1T"]


# -- the command line -------------------------------------------------------------------------------
def test_report_plots_writes_png_and_svg_without_pyplot(results_file, tmp_path):
    """``pagecodec report RESULTS --plots DIR`` (its entry point, in a fresh interpreter that
    then shows pyplot was never imported: no global figure state in a library)."""
    out = tmp_path / "plots"
    code = ("import sys\nfrom pagecodec.cli import main\n"
            f"try:\n    main(['report', {str(results_file)!r}, '--plots', {str(out)!r}])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    names = {f.name for f in out.iterdir()}
    assert {"wire-vs-cpu.png", "wire-vs-cpu.svg", "cache-sweep.png", "cache-sweep.svg"} <= names
    assert all(f"wrote {out / n}" in p.stderr for n in names)
    assert os.path.getsize(out / "rounds.png") > 10_000

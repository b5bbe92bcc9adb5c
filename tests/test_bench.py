"""bench's trust machinery: sweeps that apply where a key is read, repeats made into one result,
rows read against none and memcpy, Pareto marks, readable tables, provenance, comparing two files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import write_text_trace
from pagecodec.chain.config import PARAMETERS, PC_PARAMETERS, parse_spec
from pagecodec.errors import ConfigError
from pagecodec.harness.baseline import memcpy_baseline
from pagecodec.harness.matrix import MEMCPY, LocalPool, Run, expand_sweeps, plan_tasks, run_matrix
from pagecodec.harness.repeats import aggregate
from pagecodec.harness.replay import replay
from pagecodec.report import analysis as A
from pagecodec.report.compare import compare
from pagecodec.report.table import format_table, table_rows
from pagecodec.trace.format import TraceReader

PS = 4096


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pagecodec.cli", *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    """Three rounds over 48 pages: text-like pages (compressible), zero pages, small rewrites."""
    p = tmp_path_factory.mktemp("bench") / "t.parquet"
    write_text_trace(p, pages=48, text_pages=40, dirty=12, seed=11)
    return p


# -- sweeps ------------------------------------------------------------------------------------------
def _keys_read(pm):
    return lambda spec: parse_spec(spec, pm.presets).keys_read(pm.codecs)


def test_a_swept_key_applies_only_where_it_is_read(pm):
    out = expand_sweeps(["none", "xbzrle", "compress"], ["xbzrle-cache-size=1M,2M"], _keys_read(pm))
    assert out == ["none", "xbzrle,xbzrle-cache-size=1M", "xbzrle,xbzrle-cache-size=2M", "compress"]


def test_a_sweep_follows_what_another_swept_key_chose(pm):
    out = expand_sweeps(["multifd"], ["multifd-compression=zlib,zstd", "multifd-zlib-level=1,9"], _keys_read(pm))
    assert out == ["multifd,multifd-compression=zlib,multifd-zlib-level=1", "multifd,multifd-compression=zlib,multifd-zlib-level=9",
                   "multifd,multifd-compression=zstd"]


def test_sweeping_a_key_twice_is_an_error(pm):
    with pytest.raises(ConfigError, match="given twice"):
        expand_sweeps(["xbzrle"], ["xbzrle-cache-size=1M", "xbzrle-cache-size=2M"], _keys_read(pm))


def _other_value(key, value):
    if isinstance(value, bool):
        return "off" if value else "on"
    if key == "xbzrle-cache-size":
        return "8K"
    if key == "multifd-compression":
        return "zlib" if value != "zlib" else "zstd"
    if key == "zero-page-detection":
        return "none"
    if key == "pc-zstd-long":
        return "20"
    if key == "max-cpu-throttle":
        return "98"
    return str(value + 1 if key not in ("compress-level", "multifd-zlib-level") or value < 9 else value - 1)


def test_a_key_a_config_does_not_read_cannot_change_its_bytes(pm, trace):
    """keys_read is what --sweep trusts: for every runnable preset, setting any parameter outside it
    to another value leaves the wire bytes and records exactly as they were."""
    reader = TraceReader(trace)
    checked = 0
    for name in pm.presets:
        try:
            cfg = parse_spec(name, pm.presets)
        except ConfigError:
            continue
        if any(c not in pm.codecs for c in cfg.slot_codecs().values()) or cfg.qemu_version != "7.2":
            continue
        read = cfg.keys_read(pm.codecs)
        ref = replay(reader, parse_spec(f"{name},compress-threads=1", pm.presets), pm) \
            if "compress-threads" in read else replay(reader, cfg, pm)
        for key, value in {**PARAMETERS, **PC_PARAMETERS}.items():
            if key in read or key == "zero-page-detection":
                continue
            base = f"{name},compress-threads=1" if "compress-threads" in read else name
            other = parse_spec(f"{base},{key}={_other_value(key, value)}", pm.presets)
            res = replay(reader, other, pm)
            assert (res["wire"], res["records"]) == (ref["wire"], ref["records"]), (name, key)
            checked += 1
    assert checked > 50


def test_keys_read_names_what_each_codec_reads(pm):
    keys = lambda s: parse_spec(s, pm.presets).keys_read(pm.codecs)  # noqa: E731
    assert "xbzrle-cache-size" in keys("xbzrle") and "xbzrle-cache-size" not in keys("none")
    assert {"compress-level", "compress-threads"} <= keys("compress")
    assert "compress-level" not in keys("zstd") and "pc-zstd-level" in keys("zstd")
    assert "multifd-zstd-level" in keys("multifd-zstd") and "multifd-zlib-level" not in keys("multifd-zstd")
    assert "pc-zstd-long" in keys("xor-zstd") and "pc-zstd-long" not in keys("delta-zstd")
    assert "zero-page-detection" in keys("none,qemu-version=10.2") and "zero-page-detection" not in keys("none")


# -- repeats ----------------------------------------------------------------------------------------
def _sample(cpu, wire=1000, unreproducible=()):
    return {"trace": {"path": "t.parquet", "sha256": "s"}, "config": {"label": "c"}, "status": "ok",
            "ram": {"transferred": wire, "pages-per-second": 1.0}, "wire": {"total": wire}, "records": {"page": 1},
            "cpu_s_per_gib": {"delta": cpu, "trace": 5.0}, "cpu_decode_s_per_gib": {"page": cpu / 2},
            "cpu": {"delta": cpu}, "wall_s": cpu, "decode_wall_s": 0.1, "pages": 10,
            "format": {"unreproducible-codecs": list(unreproducible)}}


def test_repeats_give_min_and_median_and_per_stage_medians():
    r = aggregate([_sample(3.0), _sample(1.0), _sample(2.0)])
    assert r["status"] == "ok"
    t = r["timing"]
    assert t["repeats"] == 3 and t["cpu_s_per_gib"]["min"] == 1.0 and t["cpu_s_per_gib"]["median"] == 2.0
    assert t["cpu_s_per_gib"]["samples"] == [3.0, 1.0, 2.0]  # trace decoding is not the sender's work
    assert t["cpu_decode_s_per_gib"]["min"] == 0.5
    assert r["cpu_s_per_gib"]["delta"] == 2.0 and r["wall_s"] == 2.0
    assert t["stages"]["cpu_s_per_gib"]["delta"] == {"min": 1.0, "median": 2.0}
    assert t["stages"]["cpu_decode_s_per_gib"]["page"] == {"min": 0.5, "median": 1.0}
    assert A.cpu(r) == 1.0 and A.cpu(r, "median") == 2.0


def test_repeats_that_write_other_bytes_fail_the_run():
    r = aggregate([_sample(1.0), _sample(1.0, wire=1001)])
    assert r["status"] == "failed" and "repeat 1 wrote different bytes" in r["error"]["message"]


def test_an_unreproducible_codec_reports_its_spread_instead():
    r = aggregate([_sample(1.0, unreproducible=["compress-isal"]), _sample(1.0, wire=1003, unreproducible=["compress-isal"])])
    assert r["status"] == "ok" and "1,000 … 1,003 bytes" in r["timing"]["wire-varies"]
    headers, rows = table_rows([r])
    assert dict(zip(headers, rows[0]))["check"] == "decoded (bytes vary)"
    assert "bytes vary: t.parquet with config 'c': codec(s) compress-isal are not reproducible" in format_table([r])


def test_isal_says_it_is_unreproducible_with_threads(pm):
    isal = pm.codecs["compress-isal"]
    assert not isal.reproducible(parse_spec("compress-isal", pm.presets))
    assert isal.reproducible(parse_spec("compress-isal,compress-threads=1", pm.presets))
    assert pm.codecs["compress-threads"].reproducible(parse_spec("compress", pm.presets))


def test_tasks_are_repeat_major_and_only_repeat_0_checks():
    runs = [Run("a", "none"), Run("a", "xbzrle"), Run("a", MEMCPY)]
    tasks = plan_tasks(runs, 3)
    assert [(t.run.spec, t.repeat) for t in tasks[:4]] == [("none", 0), ("xbzrle", 0), (MEMCPY, 0), ("none", 1)]
    assert [t.check for t in tasks] == [True, True, False] + [False] * 6  # memcpy has nothing to check
    assert not any(t.check for t in plan_tasks(runs, 2, check=False))


def test_run_matrix_resumes_from_finished_runs_and_repeats(trace):
    runs = [Run(str(trace), "none"), Run(str(trace), "xbzrle")]
    samples: list[dict] = []
    first = run_matrix(runs[:1], repeat=2, on_sample=samples.append)
    assert len(first) == 1 and len(samples) == 1 and samples[0]["repeat"] == 0  # the last repeat finishes the run
    seen = []

    class Counting(LocalPool):
        def run(self, fn, tasks, skip=None):
            seen.extend((t.run.spec, t.repeat) for t in tasks)
            return super().run(fn, tasks, skip)

    xb0 = run_matrix(runs[1:], repeat=1)[0]
    xb0["repeat"] = 0
    out = run_matrix(runs, repeat=2, executor=Counting(), done=first, samples_done=[xb0])
    assert seen == [("xbzrle", 1)]  # none was done, xbzrle's repeat 0 was kept
    assert [r["config"]["label"] for r in out] == ["xbzrle"] and out[0]["timing"]["repeats"] == 2


# -- baselines, Pareto, tables -------------------------------------------------------------------
def test_memcpy_baseline_moves_every_page_once(trace):
    r = memcpy_baseline(TraceReader(trace))
    assert r["pages"] == 48 + 24 and r["wire"]["total"] == r["page_bytes"] == 72 * PS
    assert r["baseline"] == MEMCPY and r["cpu_s_per_gib"]["copy"] > 0 and r["cpu_decode_s_per_gib"]["copy"] > 0


def _row(trace, label, wire, cpu, ok=True):
    r = {"trace": {"path": trace, "sha256": trace}, "config": {"label": label}, "wire": {"total": wire},
         "ram": {"transferred": wire, "normal": 1, "duplicate": 0, "pages-per-second": 12345.678},
         "page_bytes": 4096 * 1000, "pages": 1000, "timing": {"repeats": 3, "cpu_s_per_gib": {"min": cpu, "median": cpu * 1.1}},
         "format": {"qemu-loadable": True, "extension-codecs": []}, "verify": {"checked": True, "ok": True}}
    if not ok:
        r = {"trace": {"path": trace}, "config": {"label": label}, "status": "failed",
             "error": {"type": "DecodeError", "message": "offset 12: bad"}}
    return r


def test_pareto_and_relative_to_none_per_trace():
    res = [_row("a", "none", 1000, 1.0), _row("a", "x", 500, 2.0), _row("a", "y", 600, 3.0),
           _row("a", "z", 400, 9.0), _row("b", "none", 800, 1.0), _row("b", "w", 900, 2.0), _row("a", "bad", 0, 0, ok=False)]
    assert A.pareto_optimal(res) == {0, 1, 3, 4}  # y is beaten by x; w by b's none; a failed run takes no part
    base = A.none_baseline(res)
    saved, times = A.relative_to_none(res[1], base["a"])
    assert saved == pytest.approx(50.0) and times == pytest.approx(2.0)
    assert A.relative_to_none(res[5], base["b"])[0] == pytest.approx(-12.5)


def test_tables_say_units_separate_thousands_and_align_right():
    res = [_row("a", "none", 12_345_678, 0.123456), _row("a", "xbzrle", 2_345_678, 1.23456),
           _row("a", "broken", 0, 0, ok=False)]
    headers, rows = table_rows(res)
    assert "wire ÷ page bytes (ratio)" in headers and "CPU s/GiB min" in headers and "pages/s" not in headers
    row = dict(zip(headers, rows[1]))
    assert row["wire MiB"] == "2.24" and row["CPU s/GiB min"] == "1.23" and row["CPU × none"] == "10.0×"
    assert row["saved vs none %"] == "81.0" and row["Pareto"] == "*" and row["check"] == "ok"
    assert dict(zip(headers, rows[0]))["CPU s/GiB min"] == "0.123"
    assert dict(zip(headers, rows[2]))["check"] == "FAILED"
    wide_headers, wide_rows = table_rows(res, wide=True)
    assert dict(zip(wide_headers, wide_rows[0]))["pages/s"] == "12,346"  # whole pages, thousands separated
    text = format_table(res)
    assert "FAILED: a with config 'broken': offset 12: bad" in text
    line = next(x for x in text.splitlines() if "xbzrle" in x)
    cell = line.split("|")[headers.index("wire MiB") + 1]
    assert cell.endswith("2.24 ") and cell.startswith("   ")  # right-aligned: the padding goes before the number


# -- comparing two results files ---------------------------------------------------------------------
def test_compare_flags_regressions_beyond_thresholds():
    base = [_row("a", "none", 1000, 1.0), _row("a", "x", 500, 2.0), _row("a", "y", 500, 2.0)]
    new = [_row("a", "none", 1000, 1.05), _row("a", "x", 520, 2.0), _row("a", "y", 0, 0, ok=False), _row("a", "n", 1, 1.0)]
    c = compare(new, base, cpu_pct=10, wire_pct=0.1)
    assert c.failed and len(c.regressions) == 2
    assert any("wire bytes 500 -> 520" in x for x in c.regressions) and any("failed" in x for x in c.regressions)
    assert c.only_new == ["a / n"]
    assert not compare(base, base).failed


def test_report_selects_traces_and_configs_keeping_their_baselines(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps([_row("a", "none", 1000, 1.0), _row("a", "x", 500, 2.0), _row("b", "none", 10, 1.0),
                             _row("b", "x", 5, 2.0), _row("b", "y", 5, 3.0)]))
    p = run("report", str(a), "--trace", "b", "--config", "x")
    assert p.returncode == 0, p.stderr
    rows = [line for line in p.stdout.splitlines() if line.startswith("| b")]
    assert [r.split("|")[2].strip() for r in rows] == ["none", "x"] and "| a " not in p.stdout
    p = run("report", str(a), "--trace", "nope")
    assert p.returncode == 2 and "no run matches" in p.stderr


def test_report_compares_two_files_and_exits_1_on_regression(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([_row("a", "none", 1000, 1.0)]))
    b.write_text(json.dumps([_row("a", "none", 1000, 1.5)]))
    p = run("report", str(b), str(a))
    assert p.returncode == 1 and "sender CPU min 1 -> 1.5" in p.stdout
    p = run("report", str(b), str(a), "--fail-cpu", "60")
    assert p.returncode == 0, p.stdout


# -- end to end ---------------------------------------------------------------------------------------
def test_bench_results_carry_provenance_and_normal_permissions(trace, tmp_path):
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    old = os.umask(0o022)
    try:
        p = run("bench", str(trace), "--config", "xbzrle", "--repeat", "1", "--json", str(js), "--csv", str(cs))
    finally:
        os.umask(old)
    assert p.returncode == 0, p.stderr
    for f in (js, cs):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, oct(f.stat().st_mode)
    res = json.loads(js.read_text())
    for r in res:
        assert r["machine"]["cores"] >= 1 and r["machine"]["cpu"]
        v = r["versions"]
        assert v["pagecodec"] and v["numpy"] and v["pyarrow"] and v["plugins"]["pagecodec.codecs.xbzrle"]
        assert "git-commit" in v and r["trace"]["sha256"]


def test_replay_results_feed_report(trace, tmp_path):
    js = tmp_path / "one.json"
    assert run("replay", str(trace), "--config", "xbzrle", "--json", str(js)).returncode == 0
    p = run("report", str(js), "--wide")
    assert p.returncode == 0 and "xbzrle" in p.stdout and "cache miss %" in p.stdout


def test_verify_checks_every_trace_and_config(trace, tmp_path):
    js = tmp_path / "v.json"
    p = run("verify", str(trace), str(trace), "--config", "none", "--config", "xbzrle", "--json", str(js))
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("verify: OK") == 4 and len(json.loads(js.read_text())) == 4
    missing = tmp_path / "nope.parquet"
    p = run("verify", str(trace), str(missing), "--config", "none")
    assert p.returncode == 1 and p.stdout.count("verify: OK") == 1 and "nope.parquet" in p.stderr


def test_resume_takes_finished_repeats_from_the_journal(trace, tmp_path):
    """An interrupted bench leaves F.partial (one finished repeat per line; the last line may be cut
    short): --resume runs only the missing repeats and removes the journal when done."""
    one = tmp_path / "one.json"
    assert run("bench", str(trace), "--config", "xbzrle", "--no-baselines", "--repeat", "1", "--json", str(one)).returncode == 0
    sample = json.loads(one.read_text())[0]
    js = tmp_path / "f.json"
    (tmp_path / "f.json.partial").write_text(json.dumps(sample) + "\n" + '{"trace": {"pa')
    p = run("bench", str(trace), "--config", "xbzrle", "--no-baselines", "--repeat", "2", "--json", str(js), "--resume")
    assert p.returncode == 0, p.stderr
    (res,) = json.loads(js.read_text())
    t = res["timing"]["cpu_s_per_gib"]
    assert res["timing"]["repeats"] == 2 and t["samples"][0] == sample["timing"]["cpu_s_per_gib"]["samples"][0]
    assert res["verify"]["ok"] and not (tmp_path / "f.json.partial").exists()


# -- short runs: a sample filled to --min-sample-time ---------------------------------------------------
def test_fastest_of_keeps_the_least_sender_and_the_least_decode_cpu_of_back_to_back_runs(monkeypatch):
    from pagecodec.harness.matrix import fastest_of

    runs = iter([
        {"cpu_s_per_gib": {"wire": 3.0}, "cpu_decode_s_per_gib": {"page": 1.0}, "cpu_decode": {"page": 0.1}, "wall_s": 0.1},
        {"cpu_s_per_gib": {"wire": 2.0}, "cpu_decode_s_per_gib": {"page": 5.0}, "cpu_decode": {"page": 0.5}, "wall_s": 0.2},
        {"cpu_s_per_gib": {"wire": 4.0}, "cpu_decode_s_per_gib": {"page": 0.5}, "cpu_decode": {"page": 0.05}, "wall_s": 0.3},
    ])
    calls = []

    def once():
        calls.append(1)
        return next(runs)

    from pagecodec.harness import matrix

    clock = iter([0.0, 0.1, 0.2, 0.3])  # start, then after each run: 0.3 s reached after the third
    monkeypatch.setattr(matrix.time, "perf_counter", lambda: next(clock))
    out = fastest_of(once, 0.25)
    assert len(calls) == 3 and out["replays"] == 3
    assert out["cpu_s_per_gib"] == {"wire": 2.0} and out["wall_s"] == 0.2  # the sender's fastest run
    assert out["cpu_decode_s_per_gib"] == {"page": 0.5} and out["cpu_decode"] == {"page": 0.05}  # the destination's


def test_fastest_of_runs_once_when_the_run_fills_the_time():
    from pagecodec.harness.matrix import fastest_of

    out = fastest_of(lambda: {"cpu_s_per_gib": {"wire": 1.0}}, 0.0)
    assert out == {"cpu_s_per_gib": {"wire": 1.0}}


def test_short_runs_are_filled_and_the_result_says_how_many_replays(trace, tmp_path):
    out = tmp_path / "r.json"
    p = run("bench", str(trace), "--config", "xbzrle", "--repeat", "2", "--min-sample-time", "0.3", "--json", str(out))
    assert p.returncode == 0, p.stderr
    res = {r["config"]["label"]: r for r in json.loads(out.read_text())}
    for label in ("memcpy", "none", "xbzrle"):
        replays = res[label]["timing"]["replays"]
        assert len(replays) == 2 and replays[1] > 1, (label, replays)  # a 48-page trace: many replays
        assert "replays" not in res[label]
    assert res["xbzrle"]["timing"]["replays"][0] == 1  # the checking repeat runs once (verify)
    p = run("bench", str(trace), "--config", "xbzrle", "--repeat", "2", "--min-sample-time", "0", "--json", str(out))
    assert p.returncode == 0 and all(r["timing"]["replays"] == [1, 1] for r in json.loads(out.read_text()))

"""The command line: exit codes, one-line errors, results JSON written atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, write_trace

PS = 4096


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pagecodec.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    rng = np.random.default_rng(3)
    ram = np.zeros((32, PS), np.uint8)
    ram[::3] = rng.integers(0, 256, (11, PS), dtype=np.uint8)
    r1 = np.array([1, 3, 9])
    ram2 = ram.copy()
    ram2[r1, :4] = 9
    p = tmp_path_factory.mktemp("t") / "t.parquet"
    write_trace(p, [("pc.ram", 32 * PS)], [{0: (np.arange(32) * PS, ram)}, {0: (r1 * PS, ram2[r1])}])
    return p


def test_plugins_lists_builtins():
    p = run("plugins", "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    codecs = {c["name"]: c for r in rows for c in r["codecs"]}
    assert codecs["zero"]["slots"] == ["zero"] and codecs["zero"]["format"] == "qemu"
    assert codecs["raw"]["slots"] == ["raw"]
    assert all(r["version"] for r in rows)
    text = run("plugins").stdout
    assert "pagecodec.codecs.zero" in text and "presets:" in text


def test_verify_ok(trace):
    p = run("verify", str(trace))
    assert p.returncode == 0, p.stderr
    assert "verify: OK" in p.stdout and "2 rounds" in p.stdout


def test_replay_json_and_stream(trace, tmp_path):
    out, mig = tmp_path / "r.json", tmp_path / "o.mig"
    p = run("replay", str(trace), "--config", "none", "--json", str(out), "--qemu-stream", str(mig))
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert res["ram"]["duplicate"] + res["ram"]["normal"] == 35
    assert res["wire"]["total"] == mig.stat().st_size
    assert res["trace"]["sha256"] and res["config"]["capabilities"]["xbzrle"] is False
    assert "transferred" in res["rounds"][0] and res["versions"]["pagecodec"]


def test_bench_table_json_csv_and_resume(trace, tmp_path):
    js, cs = tmp_path / "b.json", tmp_path / "b.csv"
    p = run("bench", str(trace), "--config", "none", "--json", str(js), "--csv", str(cs))
    assert p.returncode == 0, p.stderr
    assert "| trace" in p.stdout and "t.parquet" in p.stdout
    assert len(json.loads(js.read_text())) == 1
    assert cs.read_text().startswith("trace,config")
    assert "decode CPU s/GiB" in p.stdout and "decode CPU s/GiB" in cs.read_text().splitlines()[0]
    res = json.loads(js.read_text())[0]
    assert {"wire", "zero", "page"} <= set(res["cpu_decode"]) and set(res["cpu_decode_s_per_gib"]) == set(res["cpu_decode"])
    p = run("bench", str(trace), "--config", "none", "--json", str(js), "--resume")
    assert p.returncode == 0, p.stderr
    assert len(json.loads(js.read_text())) == 1  # nothing re-run
    p = run("report", str(js), "--format", "rst", "--plots", str(tmp_path / "plots"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "plots" / "wire.png").stat().st_size > 1000


def test_bad_config_is_one_line_exit_2(trace):
    p = run("verify", str(trace), "--config", "xbzrle-cache-size=banana")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "bad size 'banana'" in p.stderr
    assert "Traceback" not in p.stderr


def test_unfilled_slot_exit_2(trace):
    p = run("replay", str(trace), "--config", "delta-codec=nosuch")
    assert p.returncode == 2 and "'delta' slot needs codec 'nosuch'" in p.stderr


def test_missing_trace_exit_2(tmp_path):
    p = run("verify", str(tmp_path / "nope.parquet"))
    assert p.returncode == 2 and "nope.parquet" in p.stderr and "Traceback" not in p.stderr


def test_garbage_trace_exit_2(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all" * 10)
    p = run("trace", "info", str(bad))
    assert p.returncode == 2 and "bad.parquet" in p.stderr and "Traceback" not in p.stderr


def test_plugin_module_that_fails_to_import(trace):
    p = run("--plugin", "no_such_plugin_module", "plugins")
    assert p.returncode == 2 and "no_such_plugin_module" in p.stderr


def test_debug_shows_traceback(trace):
    p = run("--debug", "verify", str(trace), "--config", "xbzrle-cache-size=banana")
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_qemu_version_option_reaches_the_config(trace, tmp_path):
    out = tmp_path / "q.json"
    p = run("--qemu-version", "4.1", "replay", str(trace), "--config", "xbzrle", "--json", str(out))
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert res["config"]["qemu-version"] == "4.1" and res["config"]["capabilities"]["xbzrle"] is True
    assert run("--qemu-version", "5.0", "plugins").returncode == 2


def test_verify_mismatch_exits_1_naming_round_block_offset(trace):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "plugins_for_tests"))
    p = subprocess.run([sys.executable, "-m", "pagecodec.cli", "--plugin", "pc_test_liar", "verify", str(trace),
                        "--config", "raw-codec=liar"], capture_output=True, text=True, env=env)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "verify: FAILED" in p.stderr and "round 1, block 'pc.ram', offset 0x1000" in p.stderr
    assert "+0x64" in p.stderr  # the flipped byte


def test_bench_no_decode_omits_the_destination(trace, tmp_path):
    js = tmp_path / "n.json"
    p = run("bench", str(trace), "--config", "none", "--no-decode", "--json", str(js))
    assert p.returncode == 0, p.stderr
    res = json.loads(js.read_text())[0]
    assert "cpu_decode" not in res and "cpu_decode_s_per_gib" not in res and "decode_wall_s" not in res
    row = next(line for line in p.stdout.splitlines() if "t.parquet" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[11] == "-"  # the decode CPU column
    assert cells[2] == "yes"  # QEMU loads what config none writes
    p = run("report", str(js))
    assert p.returncode == 0 and "decode CPU s/GiB" in p.stdout


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_bench_fails_on_a_stream_it_cannot_decode(trace, tmp_path, jobs):
    """bench decodes every stream: records the destination rejects fail the run (exit 2, one line
    naming the offset, the trace and the config); --no-decode does not look."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "plugins_for_tests"))
    args = [sys.executable, "-m", "pagecodec.cli", "--plugin", "pc_test_badrecord", "bench", str(trace),
            "--config", "raw-codec=badrecord", "--config", "none", "--jobs", jobs]
    p = subprocess.run(args, capture_output=True, text=True, env=env)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr, p.stderr
    assert "replayed stream: offset " in p.stderr and "badrecord payload rejected" in p.stderr
    assert "t.parquet with config 'raw-codec=badrecord', setup: " not in p.stderr  # a round, not setup
    assert "t.parquet with config 'raw-codec=badrecord', round 0: " in p.stderr, p.stderr
    p = subprocess.run([*args, "--no-decode"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr

"""The command line: exit codes, one-line errors, results JSON written atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, write_sparse_trace



def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pagecodec.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    p = tmp_path_factory.mktemp("t") / "t.parquet"
    write_sparse_trace(p, seed=3)
    return p


def test_plugins_lists_builtins():
    p = run("plugins", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    codecs = {c["name"]: c for c in data["codecs"]}
    assert len(codecs) == len(data["codecs"])  # each codec once
    assert codecs["zero"]["slots"] == ["zero"] and codecs["zero"]["format"] == "qemu"
    assert codecs["raw"]["slots"] == ["raw"] and codecs["raw"]["plugin"] == "pagecodec.codecs.raw"
    assert codecs["xor-zstd"]["format"] == "extension" and codecs["xor-zstd"]["wire_id"] == 0xA17D
    assert all(r["version"] and r["status"] == "ok" for r in data["plugins"])
    text = run("plugins").stdout
    assert "pagecodec.codecs.zero" in text and "Presets (--config NAME)" in text


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
    p = run("bench", str(trace), "--config", "xbzrle", "--repeat", "2", "--json", str(js), "--csv", str(cs))
    assert p.returncode == 0, p.stderr
    assert "| trace" in p.stdout and "t.parquet" in p.stdout
    res = json.loads(js.read_text())
    assert [r["config"]["label"] for r in res] == ["memcpy", "none", "xbzrle"]  # the baselines come first
    assert all(r["status"] == "ok" and r["timing"]["repeats"] == 2 for r in res)
    assert cs.read_text().startswith("trace,config")
    assert "decode CPU s/GiB min" in p.stdout and "decode CPU s/GiB min" in cs.read_text().splitlines()[0]
    x = res[2]
    assert x["verify"] == {"checked": True, "ok": True, "mismatch": None}
    assert {"wire", "zero", "page"} <= set(x["cpu_decode"]) and set(x["cpu_decode_s_per_gib"]) == set(x["cpu_decode"])
    assert len(x["timing"]["cpu_s_per_gib"]["samples"]) == 2
    assert x["timing"]["cpu_s_per_gib"]["min"] <= x["timing"]["cpu_s_per_gib"]["median"]
    assert not (tmp_path / "b.json.partial").exists()
    p = run("bench", str(trace), "--config", "xbzrle", "--repeat", "2", "--json", str(js), "--resume")
    assert p.returncode == 0, p.stderr
    assert json.loads(js.read_text()) == res  # nothing re-run
    p = run("report", str(js), "--format", "rst", "--plots", str(tmp_path / "plots"))
    assert p.returncode == 0, p.stderr
    assert any(f.suffix == ".png" and f.stat().st_size > 1000 for f in (tmp_path / "plots").iterdir())


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
    p = run("bench", str(trace), "--config", "none", "--no-decode", "--no-baselines", "--repeat", "1", "--json", str(js))
    assert p.returncode == 0, p.stderr
    assert "--no-decode: streams are not decoded" in p.stderr
    res = json.loads(js.read_text())[0]
    assert "cpu_decode" not in res and "cpu_decode_s_per_gib" not in res and "decode_wall_s" not in res
    assert "verify" not in res
    lines = p.stdout.splitlines()
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [c.strip() for c in next(line for line in lines if "t.parquet" in line).strip("|").split("|")]
    row = dict(zip(headers, cells))
    assert row["decode CPU s/GiB min"] == "" and row["check"] == "not run"
    assert row["QEMU loads it"] == "yes"  # QEMU loads what config none writes
    p = run("report", str(js))
    assert p.returncode == 0 and "decode CPU s/GiB min" in p.stdout


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_bench_marks_a_stream_it_cannot_decode_failed_and_goes_on(trace, tmp_path, jobs):
    """bench decodes every stream: records the destination rejects fail that run (its row says
    FAILED, the error names the offset, the trace and the config), the other runs finish, exit 1;
    --no-decode does not look."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "plugins_for_tests"))
    js = tmp_path / "f.json"
    args = [sys.executable, "-m", "pagecodec.cli", "--plugin", "pc_test_badrecord", "bench", str(trace),
            "--config", "raw-codec=badrecord", "--config", "xbzrle", "--jobs", jobs, "--repeat", "2", "--json", str(js)]
    p = subprocess.run(args, capture_output=True, text=True, env=env)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    res = {r["config"]["label"]: r for r in json.loads(js.read_text())}
    assert set(res) == {"memcpy", "none", "xbzrle", "raw-codec=badrecord"}
    bad = res.pop("raw-codec=badrecord")
    assert bad["status"] == "failed" and bad["error"]["type"] == "DecodeError"
    msg = bad["error"]["message"]
    assert "replayed stream: offset " in msg and "badrecord payload rejected" in msg
    assert "t.parquet with config 'raw-codec=badrecord', round 0: " in msg, msg
    assert all(r["status"] == "ok" for r in res.values())
    row = next(line for line in p.stdout.splitlines() if "badrecord" in line and "|" in line)
    assert "FAILED" in row
    assert f"FAILED: t.parquet with config 'raw-codec=badrecord': {msg}" in p.stdout
    p = subprocess.run([*args, "--no-decode"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr


def test_bench_marks_pages_that_arrive_wrong_failed(trace, tmp_path):
    """A decoder that decodes without error but writes the wrong bytes: the check (first repeat)
    names the round, block and offset; --no-verify skips the check and says so."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "plugins_for_tests"))
    args = [sys.executable, "-m", "pagecodec.cli", "--plugin", "pc_test_liar", "bench", str(trace),
            "--config", "raw-codec=liar", "--no-baselines", "--repeat", "2"]
    out = tmp_path / "r.json"
    p = subprocess.run([*args, "--json", str(out)], capture_output=True, text=True, env=env)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "FAILED: t.parquet with config 'raw-codec=liar': mismatch in round 1, block 'pc.ram', offset 0x1000" in p.stdout
    (row,) = json.loads(out.read_text())
    assert row["status"] == "failed" and "cpu_pieces" not in row  # a sample's raw pieces stay out of results
    p = subprocess.run([*args, "--no-verify"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "--no-verify: streams are decoded, but pages are not compared" in p.stderr
    assert "not run" not in p.stdout and "decoded" in p.stdout


def test_bench_marks_a_plugin_that_raises_failed_naming_it(trace, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "plugins_for_tests"))
    js = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "pagecodec.cli", "--plugin", "pc_test_raiser", "bench", str(trace),
                        "--config", "raw-codec=raiser", "--config", "xbzrle", "--repeat", "2", "--json", str(js)],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 1, (p.stdout, p.stderr)
    res = {r["config"]["label"]: r for r in json.loads(js.read_text())}
    bad = res.pop("raw-codec=raiser")
    assert bad["status"] == "failed" and bad["error"]["type"] == "PluginError"
    assert "codec 'raiser' (plugin 'pc_test_raiser') raised in the raw slot at round 1" in bad["error"]["message"]
    assert "ZeroDivisionError: the plugin's own bug" in bad["error"]["message"]
    assert all(r["status"] == "ok" for r in res.values()) and len(res) == 3

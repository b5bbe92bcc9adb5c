"""Command-line arguments as hostile input (issue 11): any combination of awkward option values ends
in exit status 0 or 2, and a failure is one line on stderr, never a traceback. PAGECODEC_HYPOTHESIS_EXAMPLES
scales the number of combinations."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

from hostile_corpus import small_trace
from pagecodec.cli import main

EXAMPLES = examples(40)

_SIZES = ["0", "1", "4K", "64K", "-1", "nan", "1e3", "100T", "abc", "1.5K", "4096B", "", "16E"]
_FRACTIONS = ["0", "0.1", "1", "nan", "inf", "-1", "0.1,0.2", "1,2,3", ",", "x"]
_SPECS = ["none", "", ",,,", "xbzrle,", "xbzrle-cache-size=1", "xbzrle-cache-size=-4K", "compress-threads=0",
          "multifd,multifd-channels=256", "pc-zstd-level=99999999999999999999", "qemu-version=5.0",
          "delta-codec=", "=x", "xbzrle=maybe", "\u00e9", "multifd-compression=lz5"]


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["--no-progress", *argv])
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    return rc, err.getvalue()


def _check(rc: int, stderr: str) -> None:
    assert rc in (0, 2), stderr
    assert "Traceback" not in stderr, stderr
    if rc == 2:
        assert len(stderr.strip().splitlines()) == 1, stderr


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ram=st.sampled_from(_SIZES), page=st.sampled_from(["0", "3", "64", "4096", "65536", "131072", "-1", "x"]),
       rounds=st.sampled_from(["0", "1", "2", "-1", "100001", "x"]), dirty=st.sampled_from(_FRACTIONS),
       pattern=st.sampled_from(["sparse=1", "", "x", "sparse=-1", "sparse=nan", "rewrite", "text=0"]),
       zero=st.sampled_from(["0.5", "nan", "2", "x"]), seed=st.sampled_from(["1", "-1", str(2**70), "x"]),
       blocks=st.sampled_from([[], ["a=0"], ["a=4K"], ["=4K"], ["a=4K", "a=4K"], ["\u00e9=4K"], ["x" * 300 + "=4K"],
                               ["a"]]))
def test_trace_synth_arguments(tmp_path_factory, ram, page, rounds, dirty, pattern, zero, seed, blocks):
    out = tmp_path_factory.mktemp("synth") / "s.parquet"
    argv = ["trace", "synth", "-o", str(out), "--ram-size", ram, "--page-size", page, "--rounds", rounds,
            "--dirty-fraction", dirty, "--pattern", pattern, "--zero-fraction", zero, "--seed", seed]
    for b in blocks:
        argv += ["--block", b]
    _check(*_run(argv))


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return small_trace(tmp_path_factory.mktemp("t") / "t.parquet")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmd=st.sampled_from(["replay", "verify", "bench"]), spec=st.sampled_from(_SPECS),
       machine=st.sampled_from(["pc-i440fx-7.2", "", "\u00e9", "x" * 300, "a b"]),
       out=st.sampled_from([None, "json", "missing/r.json", "."]))
def test_run_arguments(tmp_path_factory, trace, cmd, spec, machine, out):
    d = tmp_path_factory.mktemp("run")
    argv = [cmd, str(trace), "--config", spec]
    if cmd != "bench":
        argv += ["--machine", machine]
    else:
        argv += ["--repeat", "1", "--no-baselines"]
    if out is not None:
        argv += ["--json", str(d / out) if out != "." else str(d)]
    rc, stderr = _run(argv)
    _check(rc, stderr)
    assert not (d / "missing").exists()

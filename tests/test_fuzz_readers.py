"""Bounded fuzz runs of the three readers that take outside input (issue 11): the QEVM stream reader
(``trace import-qemu``), the trace reader and the multifd channel readers (tests/fuzz_targets.py).

Each reader gets ≥ 10,000 inputs of the seeded mutation fuzzer (tests/mutfuzz.py: every one a seed
with mutations, deterministic for PAGECODEC_FUZZ_SEED, default 1) and, where atheris is installed,
10,000 of libFuzzer's (tests/fuzz_reader.py), under ``ulimit -v`` 4 GiB; none may end in anything but a
PageCodecError. The readers run in parallel processes (the machine has two cores), so the whole costs
~15-30 s. PAGECODEC_FUZZ_RUNS scales the count up (tests/mutfuzz.py runs longer campaigns by hand).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
READERS = ("stream", "trace", "multifd")
RUNS = int(os.environ.get("PAGECODEC_FUZZ_RUNS", 10_000))
SEED = int(os.environ.get("PAGECODEC_FUZZ_SEED", 1))
BUDGET_S = max(60, RUNS // 100)  # a guard: at the rates seen (1,100-5,000 inputs/s) 10,000 take 2-10 s


def _limited() -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, hard))


@pytest.fixture(scope="module")
def mutation_runs(tmp_path_factory) -> dict[str, tuple[int, dict | None, str]]:
    """All three readers' mutation fuzzing, run concurrently: reader -> (exit status, summary, stderr)."""
    art = tmp_path_factory.mktemp("fuzz-artifacts")
    env = {**os.environ, "PAGECODEC_FUZZ_DIR": str(tmp_path_factory.mktemp("fuzz-inputs"))}
    procs = {r: subprocess.Popen([sys.executable, str(HERE / "mutfuzz.py"), r, "--runs", str(RUNS), "--seconds",
                                  str(BUDGET_S), "--seed", str(SEED), "--artifacts", str(art)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in READERS}
    out = {}
    for r, p in procs.items():
        stdout, stderr = p.communicate(timeout=BUDGET_S + 120)
        lines = stdout.strip().splitlines()
        out[r] = (p.returncode, json.loads(lines[-1]) if lines else None, stderr[-4000:])
    return out


@pytest.mark.parametrize("reader", READERS)
def test_mutation_fuzz(mutation_runs, reader):
    rc, res, stderr = mutation_runs[reader]
    assert res is not None, stderr
    assert res["failed"] == 0, json.dumps(res["failures"], indent=1)
    assert rc == 0, stderr
    assert res["inputs"] >= RUNS, f"only {res['inputs']} inputs in {res['wall_s']} s: {res}"


@pytest.fixture(scope="module")
def libfuzzer_runs(tmp_path_factory) -> dict[str, tuple[int, str]]:
    """The atheris harnesses, 10,000 inputs each from the same seeds, run concurrently."""
    pytest.importorskip("atheris", reason="atheris not installed (optional: pip install atheris)")
    procs = {}
    env = {**os.environ, "PAGECODEC_FUZZ_DIR": str(tmp_path_factory.mktemp("libfuzzer-inputs"))}
    for r in READERS:
        seeds = tmp_path_factory.mktemp(f"seeds-{r}")
        subprocess.run([sys.executable, str(HERE / "fuzz_seeds.py"), r, str(seeds)], check=True)
        art = tmp_path_factory.mktemp(f"crash-{r}")
        procs[r] = subprocess.Popen(
            [sys.executable, str(HERE / "fuzz_reader.py"), r, str(seeds), f"-runs={RUNS}", f"-max_total_time={BUDGET_S}",
             "-timeout=10", "-rss_limit_mb=2048", f"-seed={SEED}", f"-artifact_prefix={art}/", "-print_final_stats=1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_limited, env=env)
    out = {}
    for r, p in procs.items():
        _stdout, stderr = p.communicate(timeout=BUDGET_S + 120)
        out[r] = (p.returncode, stderr)
    return out


@pytest.mark.parametrize("reader", READERS)
def test_libfuzzer(libfuzzer_runs, reader):
    rc, stderr = libfuzzer_runs[reader]
    assert rc == 0, stderr[-4000:]
    units = [int(line.split(":")[-1]) for line in stderr.splitlines() if "stat::number_of_executed_units" in line]
    assert units and units[0] >= RUNS, stderr[-2000:]

"""The calibration kernels: how fast the machine was, beside every sample, and report's use of it."""

from __future__ import annotations

from pagecodec.harness.calibration import KERNELS, calibrate, machine_speed, summarize
from pagecodec.harness.repeats import aggregate
from pagecodec.report.compare import compare, machine_change
from pagecodec.report.table import format_table


def test_calibrate_times_both_kernels_in_cpu_seconds_per_gib():
    c = calibrate()
    assert set(c) == set(KERNELS)
    # a copy of 16 MiB and zlib level 1: between 1 ms and 10 s per GiB on any machine this runs on
    assert 0.001 < c["copy"] < 10 and 0.1 < c["zlib"] < 1000
    assert c["zlib"] > c["copy"]  # compressing costs more than copying


def _run(copy, zlib_, label="x"):
    return {"trace": {"path": "a", "sha256": "a"}, "config": {"label": label}, "wire": {"total": 1},
            "page_bytes": 4096, "timing": {"repeats": 3, "cpu_s_per_gib": {"min": 1.0, "median": 1.0},
                                           "calibration": {"copy": {"min": copy, "median": copy},
                                                           "zlib": {"min": zlib_, "median": zlib_}}}}


def test_a_runs_calibration_is_summed_up_over_its_samples_and_kept_out_of_the_result():
    samples = [{"cpu_s_per_gib": {"w": 1.0}, "wire": {"total": 1}, "calibration": {"copy": c, "zlib": z}}
               for c, z in ((0.1, 20.0), (0.3, 18.0), (0.2, 19.0))]
    r = aggregate(samples)
    assert r["timing"]["calibration"] == {"copy": {"min": 0.1, "median": 0.2}, "zlib": {"min": 18.0, "median": 19.0}}
    assert "calibration" not in r
    assert summarize([{"calibration": {"copy": 1.0, "zlib": 1.0}}, {}]) is None  # a sample without: none
    assert machine_speed([_run(0.1, 20.0), _run(0.3, 10.0, "y"), _run(0.2, 30.0, "z")]) == {"copy": 0.2, "zlib": 20.0}
    assert machine_speed([{"timing": {}}]) is None


def test_report_names_a_machine_that_changed_between_the_files():
    base, slow = [_run(0.1, 17.0)], [_run(0.2, 17.5)]
    note = machine_change(slow, base, 10.0)
    assert len(note) == 1 and "copy 0.1 -> 0.2 s/GiB (+100%)" in note[0] and "zlib 17 -> 17.5 s/GiB (+3%)" in note[0]
    assert machine_change([_run(0.105, 17.0)], base, 10.0) == []
    assert machine_change([{"timing": {}}], base, 10.0) == []  # an older file: nothing to say
    assert any("the machine itself ran at another speed" in n for n in compare(slow, base).notes)
    assert "machine speed while measured (calibration kernels, median): copy 0.2 s/GiB, zlib 17.5 s/GiB" in format_table(slow)



def test_machine_noise_script_reports_the_replays_spread_and_its_correlation_with_the_kernels(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, write_text_trace

    trace = tmp_path / "t.parquet"
    write_text_trace(trace, pages=64, text_pages=40, dirty=8, seed=3)
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "machine_noise.py"), str(trace), "--config", "xbzrle",
                        "--seconds", "1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "replays over" in lines[0]
    rows = {line[:22].strip(): line[22:].split() for line in lines[2:5]}
    assert set(rows) == {"replay sender CPU", "kernel copy", "kernel zlib"}
    for name, cells in rows.items():
        lo, med, hi = map(float, cells[:3])
        assert 0 < lo <= med <= hi, name
        if name != "replay sender CPU":
            assert -1.0 <= float(cells[3]) <= 1.0

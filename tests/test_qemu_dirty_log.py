"""Real QEMU 7.2 (marker ``qemu``): ``capture qemu --interval`` records a timed dirty log of our guest.

The guest bumps a byte in ``window`` pages per timer tick (~55 ms), moving through its region, so each
slice must hold exactly pages of that region (plus the BIOS's tick counter page and the pass-counter
page), with their contents at the slice's end; replaying image + slices must give the RAM QEMU itself
migrates at the end (the capture checks that against a snapshot migration, and so does this test).
Both readers (the shared RAM file, snapshot migrations) and the command line are exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pagecodec.cli import cli
from pagecodec.qemu import QemuError
from pagecodec.qemu.find import require_for_tests
from pagecodec.qemu.guest import PASS_COUNTER, SIGNATURE, SIGNATURE_ADDR, GuestPattern, build_disk
from pagecodec.qemu.machine import VM, wait_until
from pagecodec.sources.qemu_live import capture_dirty_log
from pagecodec.trace.format import open_trace
from pagecodec.trace.image import block_image

pytestmark = pytest.mark.qemu

PS = 4096
MEM_MIB = 16
#: 16 counter pages, 2 per pass (one pass per timer tick): the region is swept every 8 ticks.
PATTERN = GuestPattern(first=0x20000, end=0x30000, window=2, wait_ticks=1)
REGION = set(range(PATTERN.first // PS, PATTERN.end // PS))
#: page 0 holds the BIOS tick count (0x46c), 0x7000 the guest's stack (the timer interrupt's frames),
#: 0x8000 the pass counter; SeaBIOS keeps its own run-time data in its shadowed segment 0xe0000…0xfffff
HOUSEKEEPING = {0, 0x7000 // PS, PASS_COUNTER // PS} | set(range(0xE0000 // PS, 0x100000 // PS))


@pytest.fixture(scope="module")
def qemu_info():
    return require_for_tests()


@pytest.fixture(scope="module")
def disk(tmp_path_factory, qemu_info) -> Path:
    return build_disk(tmp_path_factory.mktemp("guest"), PATTERN)


def _boot(tmp: Path, disk: Path, *, ram_file: bool, extra=()) -> VM:
    vm = VM(tmp, disk=disk, name="g", memory_mib=MEM_MIB, ram_file=tmp / "g.ram" if ram_file else None,
            extra_args=extra).start()
    wait_until(lambda: vm.pmemsave(SIGNATURE_ADDR, 4) == SIGNATURE, 30, "the guest to boot")
    return vm


def _slices(path: Path) -> tuple[list[float], list[set[int]], dict]:
    with open_trace(path) as r:
        assert r.version == 2 and r.timing is not None and r.timing.is_log
        ram = r.meta.block_index("pc.ram")
        per = [set() for _ in range(r.num_rounds)]
        for b in r.batches():
            sel = b.block == ram
            per[b.round] |= set((b.offset[sel] // PS).tolist())
        return list(r.timing.time_s), per, {b.name: b.used_length for b in r.meta.blocks}


@pytest.mark.parametrize("method", ["ram-file", "snapshot"])
def test_dirty_log_holds_the_guests_pages_in_time(tmp_path, disk, method):
    trace = tmp_path / "log.trace.parquet"
    with _boot(tmp_path, disk, ram_file=method == "ram-file") as vm:
        seen = []
        res = capture_dirty_log(None, trace, interval=0.1, slices=8, qmp=vm.qmp, method=method,
                                progress=seen.append, cont=False)
        assert vm.status() in ("paused", "postmigrate")
        final = np.frombuffer(vm.pc_ram(), np.uint8).reshape(-1, PS)
    assert res.method == method and res.slices == 8 and [p.slice for p in seen] == list(range(1, 9))
    assert res.checked is (method == "ram-file")
    times, per, blocks = _slices(trace)
    assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:]))
    steps = np.diff(times[1:])
    assert np.all(np.abs(steps - 0.1) < 0.03), steps  # guest running time, paced by the capture
    assert per[0] == set(range(MEM_MIB * (1 << 20) // PS))  # the image: every page
    assert "pc.bios" in blocks  # all of QEMU's blocks, as migration sees them
    for k in range(1, 9):
        assert per[k] - REGION - HOUSEKEEPING == set(), f"slice {k}: pages outside the guest's {sorted(per[k])}"
        # ~0.1 s = ~1.8 ticks × 2 pages: between 1 and 4 region pages (+ the last tick's neighbours)
        assert 1 <= len(per[k] & REGION) <= 6, (k, sorted(per[k] & REGION))
    # every region page gets bumped as the window moves over 0.8 s (~14 ticks × 2 > 16 pages)
    assert set().union(*per[1:]) >= REGION
    # image + slices = the RAM at the end (what QEMU holds: read after the capture, paused)
    with open_trace(trace) as r:
        img = block_image(r, "pc.ram").reshape(-1, PS)
    lo, hi = 0xA0000 // PS, 0x100000 // PS  # pmemsave's VGA/BIOS windows (file-backed pc.ram is exact)
    if method == "ram-file":
        assert np.array_equal(img, final)
    else:
        assert np.array_equal(np.delete(img, range(lo, hi), 0), np.delete(final, range(lo, hi), 0))


def test_cli_and_simulate_accept_the_log(tmp_path, disk):
    trace = tmp_path / "cli.trace.parquet"
    sock = tmp_path / "cli.qmp"  # a QMP socket serves one client: the command gets its own
    with _boot(tmp_path, disk, ram_file=True, extra=["-qmp", f"unix:{sock},server=on,wait=off"]) as vm:
        res = CliRunner().invoke(cli, ["--no-progress", "capture", "qemu", "--qmp", str(sock), "-o", str(trace),
                                       "--interval", "0.05", "--duration", "0.5"])
        assert res.exit_code == 0, res.output
        assert "captured: 10 slices" in res.output and "read by ram-file (checked" in res.output
        assert vm.status() == "running"  # resumed
    info = CliRunner().invoke(cli, ["trace", "info", str(trace), "--json"])
    assert info.exit_code == 0, info.output
    d = json.loads(info.output)
    assert d["kind"] == "dirty-log" and d["rounds"] == 11 and 0.45 < d["duration_s"] < 0.6
    out = tmp_path / "sim.json"
    sim = CliRunner().invoke(cli, ["--no-progress", "simulate", str(trace), "--link", "1G", "--max-bandwidth", "4M",
                                   "--downtime-limit", "100ms", "--json", str(out)])
    assert sim.exit_code == 0, sim.output
    run = json.loads(out.read_text())["runs"][0]
    assert run["simulation"]["status"] == "completed"


def test_errors_are_clear(tmp_path, disk):
    with _boot(tmp_path, disk, ram_file=False) as vm:
        with pytest.raises(QemuError, match="no RAM block is backed by a shared memory-backend-file"):
            capture_dirty_log(None, tmp_path / "x.trace.parquet", interval=0.1, slices=2, qmp=vm.qmp,
                              method="ram-file")
        assert not (tmp_path / "x.trace.parquet").exists()
        with pytest.raises(QemuError, match="interval must be > 0"):
            capture_dirty_log(None, tmp_path / "x.trace.parquet", interval=0, slices=2, qmp=vm.qmp)
    res = CliRunner().invoke(cli, ["capture", "qemu", "--qmp", "nowhere", "-o", str(tmp_path / "y.parquet"),
                                   "--slices", "3"])
    assert res.exit_code != 0 and "--slices and --duration go with --interval" in res.output

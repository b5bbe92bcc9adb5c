"""Shared fixtures: the reference data in ../shared (read-only) and small traces."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from hyp import examples

ROOT = Path(__file__).resolve().parents[1]
#: The test plugins (deliberately broken codecs among them), loaded by name with --plugin / extra_modules.
TEST_PLUGINS = ROOT / "tests" / "plugins_for_tests"


def pytest_configure(config):
    """The project's tests run with an explicit plugin set: the built-in plugins, and the test plugins
    each test names itself. No installed entry point loads (PAGECODEC_LOAD_PLUGINS empty), in this
    process and in every command the tests start, so the tests pass whatever else is installed (the
    example plugins, a broken package); tracing is off, so stderr is what the tests expect."""
    from pagecodec.plugin_trace import TRACE_ENV
    from pagecodec.plugins import LOAD_ENV

    os.environ[LOAD_ENV] = ""
    os.environ.pop(TRACE_ENV, None)

# Every property test runs under this profile: PAGECODEC_HYPOTHESIS_EXAMPLES sets its example count (a
# test with a bounded CI default of its own asks hyp.examples(n), which honours the variable too); no
# deadline, since the chain's first call in a process loads compiled kernels; fixtures of function scope
# are used deliberately (each example writes its own files under a fresh tmp_path_factory directory).
settings.register_profile(
    "pagecodec",
    max_examples=examples(),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("pagecodec")


def shared_dir() -> Path:
    """../shared beside the checkout (CI lays it there), or $PAGECODEC_SHARED."""
    env = os.environ.get("PAGECODEC_SHARED")
    return Path(env) if env else ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    d = shared_dir()
    if not (d / "streams").is_dir():
        pytest.fail(f"reference data missing: {d}/streams (QEMU's own streams are required, not optional)")
    return d


@pytest.fixture(scope="session")
def pm():
    from pagecodec.plugins import PluginManager

    return PluginManager()


def write_trace(path, blocks, rounds, page_size=4096):
    """A trace from explicit content: ``blocks`` [(name, size)], ``rounds`` list of
    {block_index: (offsets, pages)} with round 0 the full image."""
    from pagecodec.trace.format import Provenance, RAMBlockInfo, TraceMeta, TraceWriter

    meta = TraceMeta(page_size, tuple(RAMBlockInfo(n, s, page_size) for n, s in blocks), Provenance("test", "tests", "2026-01-01T00:00:00"))
    with TraceWriter(path, meta) as w:
        for r, content in enumerate(rounds):
            for bi in sorted(content):
                offs, pages = content[bi]
                w.write(r, bi, np.asarray(offs, dtype=np.int64), np.asarray(pages, dtype=np.uint8).reshape(-1, page_size))
    return meta


def write_sparse_trace(path, seed: int, page_size: int = 4096):
    """32 pages of pc.ram, every third random and the rest zero; round 1 rewrites the first 4 bytes of
    pages 1, 3 and 9 (a small trace of two rounds for CLI and bench tests)."""
    rng = np.random.default_rng(seed)
    ram = np.zeros((32, page_size), np.uint8)
    ram[::3] = rng.integers(0, 256, (11, page_size), dtype=np.uint8)
    r1 = np.array([1, 3, 9])
    ram2 = ram.copy()
    ram2[r1, :4] = 9
    write_trace(path, [("pc.ram", 32 * page_size)], [{0: (np.arange(32) * page_size, ram)}, {0: (r1 * page_size, ram2[r1])}],
                page_size)


def write_text_trace(path, pages: int, text_pages: int, dirty: int, seed: int, page_size: int = 4096):
    """A small trace of three rounds over one block pc.ram: ``text_pages`` text-like pages
    (compressible) then zero pages, and two rounds that each flip one byte in ``dirty`` pages."""
    rng = np.random.default_rng(seed)
    ram = np.zeros((pages, page_size), np.uint8)
    words = rng.integers(97, 123, (text_pages, page_size // 8), dtype=np.uint8)
    ram[:text_pages] = np.repeat(words, 8, axis=1)
    rounds = [{0: (np.arange(pages) * page_size, ram.copy())}]
    for _ in range(2):
        idx = np.sort(rng.choice(pages, dirty, replace=False))
        ram[idx, rng.integers(0, page_size - 16)] ^= 0x5A
        rounds.append({0: (idx * page_size, ram[idx].copy())})
    return write_trace(path, [("pc.ram", pages * page_size)], rounds, page_size)


# --- real QEMU: shared by the multifd test files ---------------------------------------------------------
@pytest.fixture(scope="module")
def qemu_dir(tmp_path_factory):
    """A work directory for QEMU tests (QEMU and binutils required: under CI=true a skip is a failure)."""
    from pagecodec.qemu.find import require_for_tests

    require_for_tests()
    return tmp_path_factory.mktemp("qemu")


@pytest.fixture(scope="module")
def guest_disk(qemu_dir):
    """The tiny guest: sparse counter updates on 32 pages plus 2 whole-page rewrites, one pass per timer
    tick (at 1 MiB/s QEMU keeps iterating until the limits are raised)."""
    from pagecodec.qemu.guest import GuestPattern, build_disk

    return build_disk(qemu_dir, GuestPattern(first=0x10000, end=0x30000, fill_pages=2, fill_first=0x40000, wait_ticks=1))


def wait_incoming(vm, timeout: float = 60.0) -> dict:
    """Poll a QEMU destination's query-migrate until the incoming migration completes (fails on a
    failed or cancelled migration, a dead VM, or the timeout)."""
    import time

    t0 = time.monotonic()
    while True:
        vm.check_alive()
        info = vm.qmp.execute("query-migrate")
        if info.get("status") == "completed":
            return info
        assert info.get("status") not in ("failed", "cancelled"), (info, vm.stderr_text())
        assert time.monotonic() - t0 < timeout, f"destination not completed: {info}"
        time.sleep(0.05)


def qemu_layout_trace_file(path, blocks, rounds: int, seed: int, mem_mib: int = 64):
    """A synthetic trace with exactly the RAM blocks a QEMU destination has (``info ramblock``, as
    ``[(name, used_length)]``), so pagecodec's streams load into it unchanged."""
    from pagecodec.sources.synth import synthesize

    assert blocks[0] == ("pc.ram", mem_mib << 20), blocks
    synthesize(path, ram_size=0, blocks=blocks, rounds=rounds, dirty_fraction=0.01,
               patterns="sparse=4,rewrite=1,toggle=1,text=2,random=1", zero_fraction=0.7, seed=seed)
    return path

"""pagecodec.testing, the conformance kit: it passes a correct codec and catches each broken rule.

The broken codecs are ``tests/plugins_for_tests/pc_test_kitfaults.py`` (one rule each) and the
bench fixtures (``pc_test_badrecord``, ``pc_test_liar``, ``pc_test_raiser``)."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT, TEST_PLUGINS
from pagecodec.testing import CHECKS, ConformanceError, Kit, check_codec, write_edge_trace
from pagecodec.trace.format import TraceReader


@pytest.fixture(scope="module", autouse=True)
def plugins_on_path():
    paths = [str(TEST_PLUGINS), str(ROOT / "plugins" / "pagecodec-fillpage")]
    sys.path[:0] = paths
    yield
    for p in paths:
        sys.path.remove(p)


def _run(codec, plugin, check, tmp_path, **kw):
    return Kit(codec, plugin, fuzz_inputs=60, **kw).run(check, tmp_path)


def test_the_edge_trace(tmp_path):
    t = write_edge_trace(tmp_path / "e.parquet")
    r = TraceReader(t.path)
    assert [b.name for b in r.meta.blocks] == ["pc.ram", "pc.rom"] and r.meta.blocks[0].used_length == 600 * 4096
    per_round = [sum(len(b) for b in batches) for _r, batches in r.rounds()]
    assert per_round[0] == 608 and per_round[3] == 0 and all(n for i, n in enumerate(per_round) if i != 3)


def test_a_correct_codec_passes_every_check(tmp_path):
    results = {r.name: r for r in check_codec("lz4page", "pc_test_lz4page", fuzz_inputs=60)}
    assert set(results) == set(CHECKS)
    assert all(r.status == "passed" for n, r in results.items() if n != "entry_point"), results
    assert results["entry_point"].status == "skipped"  # a test module, not an installed package


def test_a_qemu_format_codec_skips_the_decoder_fuzz(tmp_path):
    assert _run("fillpage", "pagecodec_fillpage", "round_trip", tmp_path).status == "passed"
    assert _run("fillpage", "pagecodec_fillpage", "malformed", tmp_path).status == "skipped"


@pytest.mark.parametrize("codec, check, says", [
    ("batchy", "batches", "batches of 1 page(s) give other bytes than the chain's batches"),
    ("moody", "deterministic", "two migrations of the same pages differ"),
    ("sharer", "fresh_receiver", "a fresh receiver could not load the stream"),
    ("eager", "malformed", "but its page had been written: validate before writing"),
    ("crashy", "malformed", "the decoder raised something other than DecodeError"),
    ("lax", "malformed", "the decoder accepted all"),
])
def test_each_broken_rule_is_caught_by_its_check(tmp_path, codec, check, says):
    res = _run(codec, "pc_test_kitfaults", check, tmp_path)
    assert res.status == "failed" and says in res.detail, res
    assert _run(codec, "pc_test_kitfaults", "round_trip", tmp_path).status == "passed"  # it does round-trip


def test_the_bench_fixtures_fail_the_kit(tmp_path):
    assert "badrecord payload rejected" in _run("badrecord", "pc_test_badrecord", "round_trip", tmp_path).detail
    assert "mismatch in round 1" in _run("liar", "pc_test_liar", "round_trip", tmp_path).detail
    assert "raised in the raw slot" in _run("raiser", "pc_test_raiser", "round_trip", tmp_path).detail
    assert "raised on block" in _run("decode-raiser", "pc_test_raiser", "round_trip", tmp_path).detail
    assert "failed to import" in _run("importerror", "pc_test_importerror", "registers", tmp_path).detail


def test_check_codec_raises_naming_every_failed_check():
    with pytest.raises(ConformanceError, match=r"codec 'moody' of plugin 'pc_test_kitfaults' fails 1 check\(s\):\n"
                                               r"  deterministic: failed"):
        check_codec("moody", "pc_test_kitfaults", checks=["registers", "deterministic"])


def test_conformance_tests_makes_a_parametrized_pytest_function():
    from pagecodec.testing import conformance_tests

    fn = conformance_tests("lz4page", "pc_test_lz4page", checks=["registers"])
    (mark,) = [m for m in fn.pytestmark if m.name == "parametrize"]
    assert mark.args == ("check", ["registers"])

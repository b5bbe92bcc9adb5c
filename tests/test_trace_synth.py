"""Synthetic trace generator: determinism, each write pattern's effect, parameters, corpus MANIFEST."""

from __future__ import annotations

import hashlib
import json
import shlex
import zlib
from pathlib import Path

import numpy as np
import pyarrow
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

from pagecodec.errors import TraceError
from pagecodec.trace.format import TraceReader, open_trace
from pagecodec.sources.synth import (
    PATTERNS,
    SYNTH_DATE,
    PatternError,
    format_size,
    main,
    parse_patterns,
    parse_size,
    synth_command,
    synthesize,
)

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT / "corpora"
PS = 4096


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def synth(tmp_path: Path, name: str = "t.trace.parquet", **kw) -> Path:
    params = dict(ram_size=512 * PS, rounds=4, dirty_fraction=0.25, patterns={"sparse": 1}, zero_fraction=0.5, seed=3)
    params.update(kw)
    path = tmp_path / name
    synthesize(path, **params)
    return path


def images(reader: TraceReader) -> list[np.ndarray]:
    """RAM image (all blocks end to end) after each round."""
    meta = reader.meta
    starts = meta.block_starts
    ram = np.zeros((meta.total_pages, meta.page_size), np.uint8)
    out = []
    for rnd, batches in reader.rounds():
        for b in batches:
            ram[starts[b.block] + b.offset // meta.page_size] = b.pages
        out.append(ram.copy())
    return out


def changes(path: Path):
    """Per dirty round: (global page indices, previous content, new content)."""
    with open_trace(path) as r:
        imgs = images(r)
        starts = r.meta.block_starts
        for k in range(1, r.num_rounds):
            sel = r.round_column == k
            g = starts[r.block_column[sel]] + r.offset_column[sel] // r.meta.page_size
            yield k, g, imgs[k - 1][g], imgs[k][g]


def is_zero(pages: np.ndarray) -> np.ndarray:
    return ~pages.any(axis=1)


def zratio(page: np.ndarray) -> float:
    return len(page) / len(zlib.compress(page.tobytes(), 1))


PRINTABLE = np.zeros(256, bool)
PRINTABLE[32:127] = True
PRINTABLE[10] = True


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def test_parse_patterns():
    assert parse_patterns("sparse=3,rewrite=1") == {"sparse": 3.0, "rewrite": 1.0}
    assert parse_patterns(" text , random=0.5 ,") == {"text": 1.0, "random": 0.5}
    assert parse_patterns("sparse=1,sparse=2") == {"sparse": 3.0}
    assert parse_patterns({"toggle": 2}) == {"toggle": 2.0}
    assert set(PATTERNS) == {"sparse", "rewrite", "toggle", "text", "random"}


@pytest.mark.parametrize(
    "spec, words",
    [
        ("sparse=1,bogus=2", "unknown write pattern 'bogus'"),
        ("sparse=-1", ">= 0"),
        ("sparse=nan", "finite"),
        ("sparse=x", "not a number"),
        ("", "positive sum"),
        ("sparse=0,text=0", "positive sum"),
    ],
)
def test_parse_patterns_rejects(spec, words):
    with pytest.raises(PatternError, match=words) as exc:
        parse_patterns(spec)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, TraceError)


def test_sizes():
    assert parse_size("32M") == 32 << 20
    assert parse_size("256K") == 256 << 10
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("4096") == 4096
    assert parse_size(12) == 12
    assert format_size(32 << 20) == "32M" and format_size(256 << 10) == "256K" and format_size(4097) == "4097"
    for bad in ("12Q", "1.5", "-1K", "M"):
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"ram_size": 100}, "multiple of the page size"),
        ({"ram_size": 0}, "no RAM"),
        ({"rounds": 0}, "rounds must be"),
        ({"dirty_fraction": [0.1, 0.2]}, "one per dirty round"),
        ({"dirty_fraction": 1.5}, r"dirty_fraction\[0\]"),
        ({"zero_fraction": -0.1}, "zero_fraction"),
        ({"unchanged_fraction": 2}, "unchanged_fraction"),
        ({"page_size": 100}, "power of two"),
        ({"blocks": [("pc.bios", 1000)]}, "pc.bios"),
        ({"patterns": {"nope": 1}}, "unknown write pattern"),
    ],
)
def test_synthesize_rejects_bad_parameters(tmp_path, kw, words):
    with pytest.raises(ValueError, match=words):
        synth(tmp_path, **kw)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Determinism and layout
# ----------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_different_pages(tmp_path):
    kw = dict(patterns="sparse=2,rewrite=1,toggle=1,text=1,random=1", dirty_fraction=[0.1, 0.3, 0.05])
    a = synth(tmp_path, "a.trace.parquet", **kw)
    b = synth(tmp_path, "b.trace.parquet", **kw)  # different path: the file must not depend on it
    c = synth(tmp_path, "c.trace.parquet", seed=4, **kw)
    assert sha(a) == sha(b)
    assert sha(a) != sha(c)
    with open_trace(a) as ra, open_trace(c) as rc:
        assert ra.sha256() == sha(a)
        ia, ic = images(ra), images(rc)
        assert not np.array_equal(ia[0], ic[0])
        assert not np.array_equal(ra.offset_column[ra.round_column == 1], rc.offset_column[rc.round_column == 1])


def test_metadata_and_provenance(tmp_path):
    meta = synthesize(
        tmp_path / "t.trace.parquet",
        ram_size=1 << 30,  # ignored: blocks give the whole layout
        blocks=[("pc.ram", 64 * PS), ("pc.bios", 16 * PS), ("vga.vram", 8 * PS)],
        rounds=3,
        dirty_fraction=0.1,
        patterns="sparse=1",
        zero_fraction=0.5,
        seed=9,
    )
    assert [(b.name, b.used_length) for b in meta.blocks] == [("pc.ram", 64 * PS), ("pc.bios", 16 * PS), ("vga.vram", 8 * PS)]
    assert meta.ram_bytes == 88 * PS
    assert meta.provenance.source == "synthetic" and meta.provenance.date == SYNTH_DATE
    assert meta.provenance.command == (
        "pagecodec trace synth --block pc.ram=256K --block pc.bios=64K --block vga.vram=32K --rounds 3 "
        "--dirty-fraction 0.1 --pattern sparse=1 --zero-fraction 0.5 --unchanged-fraction 0.05 --page-size 4096 --seed 9"
    )
    with open_trace(tmp_path / "t.trace.parquet") as r:
        assert r.meta == meta
    # Just ram_size: one block pc.ram; and a custom provenance command.
    meta2 = synthesize(
        tmp_path / "u.trace.parquet", ram_size=4 * PS, rounds=1, dirty_fraction=0.0,
        patterns="text", zero_fraction=0.0, seed=1, command="my command",
    )
    assert [(b.name, b.used_length) for b in meta2.blocks] == [("pc.ram", 4 * PS)]
    assert meta2.provenance.command == "my command"


@pytest.mark.parametrize("zf", [0.0, 0.3, 0.5, 1.0])
def test_zero_fraction_is_exact_in_round0(tmp_path, zf):
    path = synth(tmp_path, rounds=1, zero_fraction=zf, patterns="sparse=1,text=1,random=1")
    with open_trace(path) as r:
        (img,) = images(r)
    assert int(is_zero(img).sum()) == round(zf * 512)


def test_round0_zero_pages_are_clustered(tmp_path):
    path = synth(tmp_path, ram_size=4096 * PS // 4, rounds=1, zero_fraction=0.5, page_size=1024)
    with open_trace(path) as r:
        (img,) = images(r)
    z = is_zero(img)
    runs = 1 + int(np.count_nonzero(z[1:] != z[:-1]))
    assert len(z) / runs > 5  # salt-and-pepper would give ~2


def test_dirty_counts_and_runs(tmp_path):
    path = synth(tmp_path, ram_size=4096 * PS, rounds=4, dirty_fraction=[0.02, 0.1, 0.00001], page_size=PS)
    with open_trace(path) as r:
        # Rounded per round, and never below one page: the trace format has no empty rounds.
        assert r.pages_per_round == [4096, round(0.02 * 4096), round(0.1 * 4096), 1]
        g = r.offset_column[r.round_column == 1] // PS
        runs = 1 + int(np.count_nonzero(np.diff(g) != 1))
        assert len(g) / runs > 3  # clustered like real workloads, not uniform


def test_zero_dirty_fraction_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="cannot be empty"):
        synth(tmp_path, rounds=3, dirty_fraction=[0.1, 0.0])


def test_full_dirty_round(tmp_path):
    path = synth(tmp_path, ram_size=64 * PS, rounds=2, dirty_fraction=1.0)
    with open_trace(path) as r:
        assert r.pages_per_round == [64, 64]


# ----------------------------------------------------------------------------------------------
# Write patterns (unchanged_fraction=0 so every dirty page shows its pattern)
# ----------------------------------------------------------------------------------------------


def test_sparse_changes_at_most_eight_words(tmp_path):
    path = synth(tmp_path, patterns="sparse", unchanged_fraction=0.0)
    seen = 0
    for _, g, old, new in changes(path):
        diff = old != new
        nbytes = diff.sum(axis=1)
        assert (nbytes >= 1).all() and (nbytes <= 64).all()
        words = diff.reshape(len(g), -1, 8).any(axis=2).sum(axis=1)
        assert (words >= 1).all() and (words <= 8).all()
        seen += len(g)
        # Dirty zero pages became data (a counter was written into them).
        assert not is_zero(new).any()
    assert seen == 3 * 128


def test_toggle_flips_zero_and_data(tmp_path):
    path = synth(tmp_path, patterns="toggle", unchanged_fraction=0.0)
    to_data = to_zero = 0
    for _, g, old, new in changes(path):
        assert (is_zero(old) != is_zero(new)).all()
        to_data += int(is_zero(old).sum())
        to_zero += int(is_zero(new).sum())
    assert to_data > 20 and to_zero > 20


def test_random_pages_are_incompressible(tmp_path):
    path = synth(tmp_path, patterns="random", unchanged_fraction=0.0, rounds=2)
    for _, g, old, new in changes(path):
        assert (old != new).any(axis=1).all()
        assert max(zratio(p) for p in new) < 1.01


def test_text_pages_look_like_text_and_compress_about_3x(tmp_path):
    path = synth(tmp_path, patterns="text", unchanged_fraction=0.0, rounds=2, zero_fraction=0.0)
    with open_trace(path) as r:
        img0 = images(r)[0]
    assert PRINTABLE[img0].all()  # round 0 data kind follows the pattern weights: text only
    ratios = [zratio(p) for p in img0[:64]]
    assert 2.5 < np.mean(ratios) < 4.0
    for _, g, old, new in changes(path):
        assert PRINTABLE[new].all()
        assert (old != new).any(axis=1).all()
        assert 2.5 < np.mean([zratio(p) for p in new]) < 4.0


def test_rewrite_keeps_each_pages_kind(tmp_path):
    # Data kinds for round 0: text (weight 1) and random (weight 1); rewrite only in dirty rounds.
    path = synth(tmp_path, patterns="rewrite=1,text=0.000001,random=0.000001", unchanged_fraction=0.0, zero_fraction=0.2)
    text_seen = random_seen = 0
    for _, g, old, new in changes(path):
        assert (old != new).any(axis=1).all()
        assert not is_zero(new).any()  # a rewritten zero page gets data
        was_text = PRINTABLE[old].all(axis=1) & ~is_zero(old)
        assert PRINTABLE[new[was_text]].all()
        was_random = np.array([zratio(p) < 1.01 for p in old])
        assert all(zratio(p) < 1.01 for p in new[was_random])
        text_seen += int(was_text.sum())
        random_seen += int(was_random.sum())
    assert text_seen > 20 and random_seen > 20


def test_unchanged_fraction(tmp_path):
    path = synth(tmp_path, patterns="random", unchanged_fraction=1.0, rounds=3)
    for _, g, old, new in changes(path):
        assert np.array_equal(old, new)
    path = synth(tmp_path, "b.trace.parquet", ram_size=2048 * PS // 4, page_size=1024, patterns="random",
                 unchanged_fraction=0.3, rounds=2, dirty_fraction=1.0)
    ((_, g, old, new),) = list(changes(path))
    same = (old == new).all(axis=1).mean()
    assert 0.25 < same < 0.35


def test_structured_kind_is_sparse_words(tmp_path):
    path = synth(tmp_path, patterns="sparse", zero_fraction=0.0, rounds=1)
    with open_trace(path) as r:
        (img,) = images(r)
    words = img.view("<u8")
    zero_words = (words == 0).mean(axis=1)
    assert (zero_words > 0.3).all() and not is_zero(img).any()
    assert np.mean([zratio(p) for p in img[:64]]) > 2.5


# ----------------------------------------------------------------------------------------------
# Random small parameters always give valid traces
# ----------------------------------------------------------------------------------------------


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    page_size=st.sampled_from([64, 256, 4096]),
    pages=st.integers(1, 48),
    extra=st.lists(st.integers(1, 4), max_size=2),
    rounds=st.integers(1, 5),
    dirty=st.floats(0.01, 1.0),
    weights=st.dictionaries(st.sampled_from(PATTERNS), st.floats(0.0, 5.0), min_size=1).filter(lambda d: sum(d.values()) > 0),
    zero_fraction=st.floats(0.0, 1.0),
    unchanged=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**63),
)
def test_small_parameters_give_valid_traces(tmp_path_factory, page_size, pages, extra, rounds, dirty, weights,
                                            zero_fraction, unchanged, seed):
    path = tmp_path_factory.mktemp("hyp") / "t.trace.parquet"
    blocks = [("pc.ram", pages * page_size)] + [(f"extra{i}", n * page_size) for i, n in enumerate(extra)]
    blocks = blocks if extra else None
    meta = synthesize(path, ram_size=pages * page_size, blocks=blocks, rounds=rounds, dirty_fraction=dirty,
                      patterns=weights, zero_fraction=zero_fraction, seed=seed, page_size=page_size,
                      unchanged_fraction=unchanged)
    total = pages + sum(extra)
    assert meta.total_pages == total
    with open_trace(path) as r:  # opening validates the whole structure
        assert r.meta == meta
        expected = [total] + [max(1, round(dirty * total))] * (rounds - 1)
        assert r.pages_per_round == expected
        img = images(r)
        assert int(is_zero(img[0]).sum()) == round(zero_fraction * total)


# ----------------------------------------------------------------------------------------------
# Entry point and shipped corpus
# ----------------------------------------------------------------------------------------------


def test_main_matches_synthesize(tmp_path, capsys):
    out = tmp_path / "m.trace.parquet"
    rc = main(["--block", "pc.ram=2M", "--block", "pc.bios=64K", "--rounds", "3", "--dirty", "0.1,0.2",
               "--patterns", "sparse=4,text=1", "--zero-fraction", "0.4", "--seed", "5", "-o", str(out)])
    assert rc == 0 and str(out) in capsys.readouterr().out
    ref = tmp_path / "r.trace.parquet"
    synthesize(ref, ram_size=0, blocks=[("pc.ram", 2 << 20), ("pc.bios", 64 << 10)], rounds=3, dirty_fraction=[0.1, 0.2],
               patterns={"sparse": 4, "text": 1}, zero_fraction=0.4, seed=5)
    assert sha(out) == sha(ref)
    assert main(["--rounds", "2", "--dirty", "0.1", "--seed", "1", "-o", str(tmp_path / "y.trace.parquet")]) == 2
    assert "no RAM" in capsys.readouterr().err
    assert main(["--ram-size", "1M", "--rounds", "2", "--dirty", "0.1", "--zero-fraction", "2", "--seed", "1",
                 "-o", str(tmp_path / "x.trace.parquet")]) == 2
    assert "zero_fraction" in capsys.readouterr().err
    assert not (tmp_path / "x.trace.parquet").exists()


def test_synth_command_round_trips_through_main(tmp_path):
    kw = dict(ram_size=1 << 20, rounds=2, dirty_fraction=0.1, patterns={"toggle": 1.5, "sparse": 2},
              zero_fraction=0.25, seed=7, unchanged_fraction=0.1, page_size=4096)
    for blocks in (None, [("pc.ram", 1 << 20), ("pc.bios", 8192)]):
        cmd = synth_command(**kw, blocks=blocks)
        argv = shlex.split(cmd)[3:] + ["-o", str(tmp_path / "a.trace.parquet")]
        assert main(argv) == 0
        meta = synthesize(tmp_path / "b.trace.parquet", **kw, blocks=blocks)
        assert meta.provenance.command == cmd
        assert sha(tmp_path / "a.trace.parquet") == sha(tmp_path / "b.trace.parquet")


def manifest() -> list[dict]:
    return json.loads((CORPORA / "MANIFEST.json").read_text())


def test_manifest_matches_files():
    entries = manifest()
    assert entries, "MANIFEST.json lists no corpora"
    listed = {e["file"] for e in entries}
    assert listed == {p.name for p in CORPORA.glob("*.trace.parquet")}
    for e in entries:
        path = CORPORA / e["file"]
        assert path.stat().st_size == e["bytes"]
        assert sha(path) == e["sha256"]
        for key in ("source", "command", "description", "rounds", "pages", "ram_bytes"):
            assert e[key] not in ("", None), key
        with open_trace(path) as r:
            assert r.sha256() == e["sha256"]
            assert r.num_rounds == e["rounds"]
            assert r.num_pages == e["pages"]
            assert r.meta.ram_bytes == e["ram_bytes"]
            assert r.pages_per_round == e.get("pages_per_round", r.pages_per_round)
            assert r.meta.provenance.source == e["source"]
            if e["source"] == "synthetic":
                # The MANIFEST command is the recorded provenance command plus the output path.
                assert e["command"] == f"{r.meta.provenance.command} -o corpora/{e['file']}"


def test_default_corpus_is_what_the_brief_asked_for():
    (e,) = [e for e in manifest() if e["file"] == "synth-default.trace.parquet"]
    assert e["bytes"] <= 16 << 20
    with open_trace(CORPORA / e["file"]) as r:
        assert [(b.name, b.used_length) for b in r.meta.blocks] == [("pc.ram", 32 << 20), ("pc.bios", 256 << 10)]
        assert r.num_rounds == 6
        n = r.meta.total_pages
        assert r.pages_per_round == [n] + [round(0.05 * n)] * 5


def test_manifest_commands_regenerate_the_files(tmp_path):
    for e in manifest():
        if e["source"] != "synthetic":
            continue  # captures of live processes/guests are not reproducible byte for byte
        argv = shlex.split(e["command"])
        assert argv[:3] == ["pagecodec", "trace", "synth"]
        i = argv.index("-o")
        assert argv[i + 1] == f"corpora/{e['file']}"
        out = tmp_path / e["file"]
        argv[i + 1] = str(out)
        from pagecodec.cli import main as cli_main

        cli_main(argv[1:])  # the very command the MANIFEST gives, through the CLI
        made = e.get("generated_with", {})
        # the same pages on any numpy: synth draws through StableRandom (PCG64's raw words only)
        with open_trace(out) as fresh, open_trace(CORPORA / e["file"]) as shipped:
            assert fresh.meta == shipped.meta
            assert fresh.pages_per_round == shipped.pages_per_round
            for a, b in zip(fresh.batches(), shipped.batches(), strict=True):
                assert a.round == b.round
                assert np.array_equal(a.offset, b.offset) and np.array_equal(a.block, b.block)
                assert np.array_equal(a.pages, b.pages)
        if made.get("pyarrow") == pyarrow.__version__:
            assert sha(out) == e["sha256"]  # byte-identical with the same Parquet writer


def test_progress_counts_every_page_written(tmp_path):
    """`trace synth` shows progress in pages: synth_pages is the bar's total, and the calls add up to it."""
    from pagecodec.sources.synth import synth_pages

    seen: list[int] = []
    blocks = [("pc.ram", 96 * PS), ("pc.bios", 16 * PS)]
    synthesize(tmp_path / "p.parquet", ram_size=0, blocks=blocks, rounds=4, dirty_fraction=[0.1, 0.5, 0.01],
               patterns="sparse=1,text=1", zero_fraction=0.3, seed=3, row_group_pages=16, progress=seen.append)
    with open_trace(tmp_path / "p.parquet") as r:
        assert sum(seen) == r.num_pages == synth_pages(0, 4, [0.1, 0.5, 0.01], PS, blocks)
    assert len(seen) > 4  # row group by row group, not once at the end

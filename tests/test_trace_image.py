"""``pagecodec trace image``: a RAM block's content as of a round, and ``trace import-qemu`` end to end."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import write_trace
from pagecodec.cli import main
from pagecodec.errors import TraceError
from pagecodec.trace.format import TraceReader
from pagecodec.trace.image import block_image, write_block_image

PS = 4096
STREAMS = ("qemu72-paused-64m.mig", "qemu72-xbzrle-64m.mig")


def cli(*args: str) -> None:
    main(["--no-progress", *args])


@pytest.mark.parametrize("name", STREAMS)
def test_import_then_image_every_block_matches_qemu(name, shared, tmp_path, capsys):
    exp = json.loads((shared / "streams" / "expected.json").read_text())[name]
    trace = tmp_path / "t.parquet"
    cli("trace", "import-qemu", str(shared / "streams" / name), "-o", str(trace))
    out = capsys.readouterr().out
    assert f"{exp['ram_sections']} RAM sections" in out and "rounds" in out
    for block, want in exp["blocks"].items():
        img = tmp_path / "block.bin"
        cli("trace", "image", str(trace), "--block", block, "-o", str(img))
        data = img.read_bytes()
        assert len(data) == want["used_length"], block
        assert hashlib.sha256(data).hexdigest() == want["sha256"], block
        assert want["sha256"] in capsys.readouterr().out
    with TraceReader(trace) as rd:
        assert rd.meta.provenance.command == f"pagecodec trace import-qemu {shared / 'streams' / name} -o {trace}"


def test_import_json_report(shared, tmp_path, capsys):
    cli("trace", "import-qemu", str(shared / "streams" / STREAMS[1]), "-o", str(tmp_path / "t.parquet"), "--json")
    rep = json.loads(capsys.readouterr().out)
    assert rep["records"]["xbzrle"] == 562 and rep["records"]["xbzrle_bytes"] == 444574
    assert rep["rounds"] == len(rep["pages_per_round"]) and rep["machine"] == "pc-i440fx-7.2"


@pytest.fixture
def trace(tmp_path):
    """Two blocks, four rounds; ``images[k]`` is each block's content after round k."""
    rng = np.random.default_rng(5)
    blocks = [("pc.ram", 16 * PS), ("pc.rom", 4 * PS)]
    mem = [rng.integers(0, 256, (16, PS), dtype=np.uint8), np.zeros((4, PS), np.uint8)]
    rounds = [{0: (np.arange(16) * PS, mem[0].copy()), 1: (np.arange(4) * PS, mem[1].copy())}]
    images = [[m.copy() for m in mem]]
    for sel0, sel1 in (([1, 5], [0]), ([], [3]), ([2, 5, 15], [])):
        rnd = {}
        for bi, sel in ((0, sel0), (1, sel1)):
            if sel:
                mem[bi][sel] = rng.integers(0, 256, (len(sel), PS), dtype=np.uint8)
                rnd[bi] = (np.array(sel) * PS, mem[bi][sel].copy())
        rounds.append(rnd)
        images.append([m.copy() for m in mem])
    p = tmp_path / "t.parquet"
    write_trace(p, blocks, rounds)
    return p, images


def test_block_image_as_of_each_round(trace):
    path, images = trace
    with TraceReader(path) as rd:
        for k in range(4):
            for bi, name in enumerate(("pc.ram", "pc.rom")):
                assert np.array_equal(block_image(rd, name, k), images[k][bi].ravel()), (k, name)
        assert np.array_equal(block_image(rd, "pc.rom"), images[3][1].ravel())
        img = block_image(rd, "pc.ram")
        img[0] = 1  # a fresh writable array
    for name, k in (("pc.ram", 7), ("pc.ram", -1), ("vga", None)):
        with TraceReader(path) as rd, pytest.raises(TraceError, match=str(path)):
            block_image(rd, name, k)


def test_write_block_image_is_atomic(trace, tmp_path):
    path, images = trace
    out = tmp_path / "img.bin"
    out.write_bytes(b"old")
    with TraceReader(path) as rd:
        with pytest.raises(TraceError):
            write_block_image(rd, "nope", out)
        assert out.read_bytes() == b"old"
        n, digest = write_block_image(rd, "pc.rom", out, 1)
    assert out.read_bytes() == images[1][1].tobytes() and n == 4 * PS
    assert digest == hashlib.sha256(images[1][1].tobytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.bin", "t.parquet"]


def test_cli_errors_are_one_line_exit_2(trace, tmp_path, shared):
    path, _ = trace
    out = tmp_path / "img.bin"
    runs = [
        ("trace", "image", str(path), "--block", "pc.ram", "--round", "9", "-o", str(out)),
        ("trace", "image", str(path), "--block", "vga", "-o", str(out)),
        ("trace", "import-qemu", str(tmp_path / "missing.mig"), "-o", str(tmp_path / "x.parquet")),
    ]
    for args in runs:
        p = subprocess.run([sys.executable, "-m", "pagecodec.cli", *args], capture_output=True, text=True)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("pagecodec: error: "), p.stderr
    assert not out.exists() and not (tmp_path / "x.parquet").exists()

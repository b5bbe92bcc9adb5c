"""The regression corpus of issue 11: inputs that once cost more than they should.

A fuzz campaign (~4.3 M inputs) found memory blow-ups driven by a few bytes (RAM blocks of 2^40 or
2^63 bytes claimed by a MEM_SIZE list, a packet_num of 2^40, 65 KB of zstd claiming 2 GiB), Python
recursion reachable from input (nested vmdesc and trace metadata JSON, MEM_SIZE lists of thousands of
blocks), an integer overflow in a public kernel entry, and paths that ended in a traceback instead of
one line and exit status 2. Each class is a :class:`Case` here, made by a generator (the big claims
are a few bytes; the files are made small, in a temporary directory), with what must happen:

* via the API (``api``), the error class, a :class:`~pagecodec.errors.PageCodecError` subclass;
* via the CLI (``argv``), exit status 2 and one stderr line holding ``expect``, under ``ulimit -v``
  4 GiB with peak RSS under 512 MiB (every input here is under 1 MiB), and no file left behind in the
  output directory.

``tests/test_hostile.py`` replays every case on every CI run. Stream and channel layouts are QEMU's
(``../shared/QEMU-FACTS.md``); the builders below write them byte by byte on purpose, so that a case
can say what pagecodec's own writers never would.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from functools import lru_cache
from typing import Any, Callable

import numpy as np

PS = 4096
MACHINE = b"pc-i440fx-7.2"
VMDESC = b'{"page_size": 4096, "devices": []}'


# --- QEVM streams, byte by byte -------------------------------------------------------------------
def be32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def be64(v: int) -> bytes:
    return (v & (2**64 - 1)).to_bytes(8, "big")


def header(machine: bytes = MACHINE) -> bytes:
    """QEVM magic, version 3, the configuration section naming the machine."""
    return b"QEVM" + be32(3) + b"\x07" + be32(len(machine)) + machine


def mem_size(blocks: list[tuple[bytes, int]], total: int | None = None) -> bytes:
    """The MEM_SIZE record: be64 total | 0x04, then per block u8 len, idstr, be64 used_length."""
    out = bytearray(be64((sum(n for _, n in blocks) if total is None else total) | 0x04))
    for name, length in blocks:
        out += bytes((len(name),)) + name + be64(length)
    return bytes(out)


EOS = be64(0x10)


def ram_start(body: bytes, sid: int = 2) -> bytes:
    """The RAM START section (idstr "ram", instance 0, version 4) holding ``body``, with its footer."""
    return b"\x01" + be32(sid) + b"\x03ram" + be32(0) + be32(4) + body + b"\x7e" + be32(sid)


def ram_end(body: bytes, sid: int = 2) -> bytes:
    return b"\x03" + be32(sid) + body + b"\x7e" + be32(sid)


def ram(start_body: bytes, end_body: bytes = b"") -> bytes:
    """The RAM START section with ``start_body`` (+ EOS) and the END section with ``end_body`` (+ EOS)."""
    return ram_start(start_body + EOS) + ram_end(end_body + EOS)


def trailer(vmdesc: bytes = VMDESC) -> bytes:
    """EOF, then the VMDESCRIPTION trailer."""
    return b"\x00\x06" + be32(len(vmdesc)) + vmdesc


def stream(*sections: bytes, vmdesc: bytes | None = VMDESC) -> bytes:
    return header() + b"".join(sections) + (trailer(vmdesc) if vmdesc is not None else b"\x00")


def zero_records(n: int, first: int = 0) -> bytes:
    """n ZERO records of consecutive pages of block pc.ram, the first naming the block."""
    out = bytearray(be64(first * PS | 0x02) + b"\x06pc.ram\x00")
    rec = np.empty((n - 1, 9), np.uint8)
    rec[:, :8] = (((np.arange(1, n, dtype=np.uint64) + first) * PS) | 0x22).astype(">u8").view(np.uint8).reshape(-1, 8)
    rec[:, 8] = 0
    return bytes(out) + rec.tobytes()


def nested_json(depth: int) -> bytes:
    return b'{"a": ' + b"[" * depth + b"]" * depth + b"}"


# --- multifd channels (QEMU 7.2) ------------------------------------------------------------------
def initial_packet(channel: int = 0, uuid: bytes = bytes(16)) -> bytes:
    return struct.pack(">II16sB7s32s", 0x11223344, 1, uuid, channel, bytes(7), bytes(32))


def packet(num: int, offsets: list[int], payload: bytes, flags: int = 0, block: bytes = b"pc.ram",
           size: int | None = None) -> bytes:
    """A packet header with its 128 offset slots, then the payload."""
    nsize = len(payload) if size is None else size
    head = struct.pack(">IIIIIIQ32s256s", 0x11223344, 1, flags, 128, len(offsets), nsize, num, bytes(32),
                       block.ljust(256, b"\0"))
    slots = bytearray(8 * 128)
    for i, o in enumerate(offsets):
        slots[8 * i : 8 * i + 8] = be64(o)
    return head + bytes(slots) + payload


def multifd_main(pages: int = 16) -> bytes:
    """A 7.2 multifd main stream: MEM_SIZE of one block, a START and an END section of EOS only (every
    page went to a channel); a channel then carries two SYNC packets, one per section."""
    return stream(ram(mem_size([(b"pc.ram", pages * PS)])))


def channel(*packets: bytes) -> bytes:
    """Channel 0: its initial packet, the packets, and the two SYNC packets of :func:`multifd_main`'s
    sections (numbered after the last one given)."""
    return initial_packet(0) + b"".join(packets)


@lru_cache(maxsize=None)
def zlib_bomb(nbytes: int) -> bytes:
    """A sync-flushed zlib stream of ``nbytes`` zeros (1 GiB in ~1 MB)."""
    c = zlib.compressobj(9)
    zero = bytes(1 << 20)
    parts = [c.compress(zero) for _ in range(nbytes >> 20)]
    parts.append(c.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)


@lru_cache(maxsize=None)
def zstd_bomb(nbytes: int) -> bytes:
    """A flushed zstd stream of ``nbytes`` zeros (2 GiB in ~65 KB)."""
    import zstandard

    c = zstandard.ZstdCompressor(level=19).compressobj()
    zero = bytes(1 << 20)
    parts = [c.compress(zero) for _ in range(nbytes >> 20)]
    parts.append(c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
    return b"".join(parts)


# --- traces -----------------------------------------------------------------------------------------
def small_trace(path: Path) -> Path:
    """A valid 4-page, 2-round trace."""
    from conftest import write_trace

    ram = np.zeros((4, PS), np.uint8)
    ram[1] = 7
    write_trace(path, [("pc.ram", 4 * PS)], [{0: (np.arange(4) * PS, ram)}, {0: ([PS], ram[1:2] ^ 1)}])
    return path


def trace_with_metadata(path: Path, info: bytes) -> Path:
    """A trace whose ``pagecodec.trace`` metadata is ``info`` (rows of a valid 4-page trace)."""
    import pyarrow.parquet as pq

    src = small_trace(path.with_name(path.name + ".src"))
    table = pq.read_table(src)
    table = table.replace_schema_metadata({b"pagecodec.trace": info})
    pq.write_table(table, path)
    src.unlink()
    return path


def patched(path: Path, old: bytes, new: bytes, which: int = 0) -> Path:
    """A valid small trace with the ``which``-th occurrence of ``old`` replaced (same length)."""
    src = small_trace(path.with_name(path.name + ".src"))
    b = src.read_bytes()
    src.unlink()
    at = -1
    for _ in range(which + 1):
        at = b.index(old, at + 1)
    path.write_bytes(b[:at] + new + b[at + len(old):])
    return path


# --- the cases --------------------------------------------------------------------------------------
@dataclass
class Case:
    """One hostile input. ``make(dir)`` writes its files into ``dir`` and returns a dict with ``argv``
    (the CLI arguments, after ``pagecodec``) and/or ``api`` (a callable that must raise ``error``)."""

    name: str
    make: Callable[[Path], dict[str, Any]]
    error: str                      # the PageCodecError subclass the API raises
    expect: str                     # a fragment of the one-line message
    cli: bool = True                # also run through the CLI
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def api(self) -> bool:
        """The case has an API entry (a command-line-only case has none)."""
        return getattr(self.make, "has_api", True)


def _import(stream_bytes: bytes, extra: tuple[str, ...] = ()) -> Callable[[Path], dict[str, Any]]:
    def make(d: Path) -> dict[str, Any]:
        (d / "s.mig").write_bytes(stream_bytes)
        (d / "out").mkdir(exist_ok=True)
        from pagecodec.sources.qemu_stream import import_qemu_stream

        kw: dict[str, Any] = {}
        if "--max-ram" in extra:
            from pagecodec.chain.config import parse_size

            kw["max_ram"] = parse_size(extra[extra.index("--max-ram") + 1])
        return {"argv": ["trace", "import-qemu", str(d / "s.mig"), "-o", str(d / "out" / "t.parquet"), *extra],
                "api": lambda: import_qemu_stream(d / "s.mig", d / "out" / "t.parquet", **kw)}
    return make


def _load_stream(stream_bytes: bytes) -> Callable[[Path], dict[str, Any]]:
    """The Receiver over a whole stream (what verify and bench's destination run), API only."""
    def make(d: Path) -> dict[str, Any]:
        def api() -> None:
            from pagecodec.chain.receiver import Receiver
            from pagecodec.codecs.qemu import qemu_codecs
            from pagecodec.wire.reader import StreamReader

            Receiver(PS, qemu_codecs(), source="s.mig").load_stream(StreamReader(stream_bytes, "s.mig"))
        return {"api": api}
    return make


def _multifd(main: bytes, channels: list[bytes]) -> Callable[[Path], dict[str, Any]]:
    def make(d: Path) -> dict[str, Any]:
        (d / "main.mig").write_bytes(main)
        (d / "out").mkdir(exist_ok=True)
        paths = []
        for k, c in enumerate(channels):
            (d / f"channel-{k}.bin").write_bytes(c)
            paths.append(str(d / f"channel-{k}.bin"))
        from pagecodec.sources.qemu_stream import import_multifd

        argv = ["trace", "import-qemu", str(d / "main.mig"), "-o", str(d / "out" / "t.parquet")]
        for p in paths:
            argv += ["--channel", p]
        return {"argv": argv, "api": lambda: import_multifd(d / "main.mig", paths, d / "out" / "t.parquet")}
    return make


def _trace(builder: Callable[[Path], Path]) -> Callable[[Path], dict[str, Any]]:
    def make(d: Path) -> dict[str, Any]:
        p = builder(d / "t.parquet")
        from pagecodec.trace.format import TraceReader

        def api() -> None:
            with TraceReader(p) as r:
                r.check_pages()
        return {"argv": ["trace", "info", str(p)], "api": api}
    return make


def _cli(*argv: str, api: Callable[[Path], Callable[[], Any]] | None = None) -> Callable[[Path], dict[str, Any]]:
    """CLI arguments; ``{d}`` becomes the case's directory, ``{trace}`` a small valid trace in it."""
    def make(d: Path) -> dict[str, Any]:
        small_trace(d / "in.parquet")
        (d / "out").mkdir(exist_ok=True)
        out: dict[str, Any] = {"argv": [a.format(d=d, trace=d / "in.parquet") for a in argv]}
        if api is not None:
            out["api"] = api(d)
        return out
    make.has_api = api is not None  # type: ignore[attr-defined]
    return make


def _results(text: bytes) -> Callable[[Path], dict[str, Any]]:
    """A results file for ``pagecodec report`` (bench, replay and verify write them; it is input too)."""
    def make(d: Path) -> dict[str, Any]:
        (d / "r.json").write_bytes(text)
        from pagecodec.cli import _load_results

        return {"argv": ["report", str(d / "r.json")], "api": lambda: _load_results(str(d / "r.json"))}
    return make


def _xbzrle(starts: list[int], lengths: list[int]) -> Callable[[Path], dict[str, Any]]:
    def make(d: Path) -> dict[str, Any]:
        from pagecodec.codecs.xbzrle_kernel import decode_batch

        pages = np.zeros((len(starts), PS), np.uint8)
        return {"api": lambda: decode_batch(b"\x01\x02ab", starts, lengths, pages)}
    return make


def _synth_api(**kw: Any) -> Callable[[Path], Callable[[], Any]]:
    def make(d: Path) -> Callable[[], Any]:
        from pagecodec.sources.synth import synthesize

        args = dict(ram_size=1 << 20, rounds=2, dirty_fraction=0.1, patterns="sparse=1", zero_fraction=0.5, seed=1)
        args.update(kw)
        return lambda: synthesize(d / "out" / "s.parquet", **args)
    return make


_ONE_BLOCK = [(b"pc.ram", 16 * PS)]
_SMALL_RAM = ram(mem_size(_ONE_BLOCK) + zero_records(16))


def cases() -> list[Case]:
    """Every case of the corpus."""
    many = [(f"b{i}".encode(), PS) for i in range(1000)]
    n_flood = (1 << 20) // 9 - 64  # a stream just under 1 MiB of ZERO records
    # postcopy-ram: each block may carry a be64 page size (2 MiB here) after its used_length
    advise = b"\x08" + (3).to_bytes(2, "big") + (16).to_bytes(2, "big") + be64(PS | 1 << 21) + be64(PS)
    huge = b"".join(bytes((5,)) + f"h{i:04d}".encode() + be64(PS) + be64(1 << 21) for i in range(1000))
    sync = lambda num: packet(num, [], b"", flags=1)  # noqa: E731
    return [
        # 1. memory proportional to real data, not to claimed sizes ------------------------------
        Case("mem-size-64GiB", _import(stream(ram(mem_size([(b"pc.ram", 64 << 30)])))),
             "WireError", "more than --max-ram", tags=("stream",)),
        Case("mem-size-2^40", _import(stream(ram(mem_size([(b"pc.ram", 1 << 40)])))),
             "WireError", "more than --max-ram", tags=("stream",)),
        Case("mem-size-2^63", _import(stream(ram(mem_size([(b"pc.ram", 1 << 63)])))),
             "WireError", "more than --max-ram", tags=("stream",)),
        Case("mem-size-over-address-space",  # within --max-ram, beyond ulimit -v: refused at allocation
             _import(stream(ram(mem_size([(b"pc.ram", 6 << 30), (b"pc.rom", 6 << 30)]))), ("--max-ram", "1T")),
             "WireError", "cannot be allocated", tags=("stream", "ulimit")),
        Case("zero-record-flood", _import(stream(ram(mem_size([(b"pc.ram", 1 << 30)]) + zero_records(n_flood)))),
             "TraceError", "first pass (round 0) is incomplete", tags=("stream",)),
        Case("multifd-packet-num-2^30", _multifd(multifd_main(), [channel(sync(0), sync(1 << 30))]),
             "WireError", "packet numbers below", tags=("multifd",)),
        Case("multifd-packet-num-2^40", _multifd(multifd_main(), [channel(sync(0), sync(1 << 40))]),
             "WireError", "packet numbers below", tags=("multifd",)),
        Case("multifd-packet-num-2^64-1", _multifd(multifd_main(), [channel(sync(0), sync(2**64 - 1))]),
             "WireError", "packet numbers below", tags=("multifd",)),
        Case("multifd-zlib-bomb", _multifd(multifd_main(), [channel(packet(0, [0], zlib_bomb(1 << 30), flags=0x2),
                                                                    sync(1), sync(2))]),
             "DecodeError", "inflates beyond", tags=("multifd",)),
        Case("multifd-zstd-bomb", _multifd(multifd_main(), [channel(packet(0, [0], zstd_bomb(2 << 30), flags=0x4),
                                                                    sync(1), sync(2))]),
             "DecodeError", "inflates beyond", tags=("multifd",)),
        Case("synth-100T", _cli("trace", "synth", "-o", "{d}/out/s.parquet", "--ram-size", "100T",
                                api=_synth_api(ram_size=100 << 40)),
             "TraceError", "more than this machine", tags=("cli",)),
        # 2. no recursion reachable from input ---------------------------------------------------
        Case("vmdesc-nested-trailer", _import(stream(_SMALL_RAM, vmdesc=nested_json(100_000))),
             "WireError", "no VMDESCRIPTION trailer", tags=("stream",)),
        Case("vmdesc-nested-after-eof", _load_stream(stream(_SMALL_RAM, vmdesc=nested_json(100_000))),
             "WireError", "vmdesc is not valid JSON", cli=False, tags=("stream",)),
        Case("mem-size-1000-blocks", _import(stream(ram(mem_size(many)))),
             "TraceError", "first pass (round 0) is incomplete", tags=("stream",)),
        Case("mem-size-100k-blocks-cut", _import(stream(ram_start(mem_size([(f"b{i}".encode(), PS)
                                                                           for i in range(100_000)])[:-3]))),
             "WireError", "block", tags=("stream",)),
        Case("mem-size-1000-postcopy-blocks",
             _import(header() + advise + ram_start(be64(1000 * PS | 0x04) + huge + EOS) + ram_end(EOS) + trailer()),
             "TraceError", "first pass (round 0) is incomplete", tags=("stream",)),
        Case("trace-metadata-nested", _trace(lambda p: trace_with_metadata(p, nested_json(100_000))),
             "TraceError", "not valid JSON", tags=("trace",)),
        # 3. integer overflow --------------------------------------------------------------------
        Case("xbzrle-decode-batch-2^62", _xbzrle([2**62, 0], [2**62, 0]), "DecodeError", "outside", cli=False,
             tags=("api",)),
        Case("xbzrle-decode-batch-int64-max", _xbzrle([1, 0], [2**63 - 1, 0]), "DecodeError", "outside",
             cli=False, tags=("api",)),
        Case("trace-used-length-2^63", _trace(lambda p: trace_with_metadata(p, _meta(used=1 << 63))),
             "TraceError", "used_length", tags=("trace",)),
        Case("trace-used-length-2^64", _trace(lambda p: trace_with_metadata(p, _meta(used=1 << 64))),
             "TraceError", "used_length", tags=("trace",)),
        Case("trace-used-length-sum-past-2^63",
             _trace(lambda p: trace_with_metadata(p, _meta(used=1 << 62, blocks=3))),
             "TraceError", "2^63", tags=("trace",)),
        # 4. one line, exit 2, for every bad input or environment --------------------------------
        Case("replay-json-missing-dir", _cli("replay", "{trace}", "--config", "none", "--json", "{d}/nodir/r.json"),
             "OutputError", "does not exist", tags=("cli",)),
        Case("replay-json-is-dir", _cli("replay", "{trace}", "--config", "none", "--json", "{d}/out"),
             "OutputError", "is a directory", tags=("cli",)),
        Case("replay-json-read-only", _cli("replay", "{trace}", "--config", "none", "--json", "/sys/r.json"),
             "OutputError", "/sys/r.json", tags=("cli",)),
        Case("replay-stream-missing-dir", _cli("replay", "{trace}", "--config", "none", "--qemu-stream",
                                               "{d}/nodir/o.mig"), "OutputError", "does not exist", tags=("cli",)),
        Case("replay-stream-is-dir", _cli("replay", "{trace}", "--config", "none", "--qemu-stream", "{d}/out"),
             "OutputError", "is a directory", tags=("cli",)),
        Case("replay-stream-read-only", _cli("replay", "{trace}", "--config", "none", "--qemu-stream",
                                             "/sys/o.mig"), "OutputError", "/sys/o.mig", tags=("cli",)),
        Case("replay-multifd-stream-missing-dir", _cli("replay", "{trace}", "--config", "multifd", "--qemu-stream",
                                                       "{d}/nodir/cap"), "OutputError", "does not exist", tags=("cli",)),
        Case("replay-multifd-stream-read-only", _cli("replay", "{trace}", "--config", "multifd", "--qemu-stream",
                                                     "/sys/cap"), "OutputError", "/sys/cap", tags=("cli",)),
        Case("bench-json-missing-dir", _cli("bench", "{trace}", "--config", "none", "--repeat", "1", "--json",
                                            "{d}/nodir/b.json"), "OutputError", "does not exist", tags=("cli",)),
        Case("bench-csv-missing-dir", _cli("bench", "{trace}", "--config", "none", "--repeat", "1", "--csv",
                                           "{d}/nodir/b.csv"), "OutputError", "does not exist", tags=("cli",)),
        Case("bench-json-is-dir", _cli("bench", "{trace}", "--config", "none", "--repeat", "1", "--json", "{d}/out"),
             "OutputError", "directory", tags=("cli",)),
        Case("synth-ram-size-0", _cli("trace", "synth", "-o", "{d}/out/s.parquet", "--ram-size", "0",
                                      api=_synth_api(ram_size=0)), "TraceError", "no RAM", tags=("cli",)),
        Case("synth-page-size-3", _cli("trace", "synth", "-o", "{d}/out/s.parquet", "--page-size", "3",
                                       api=_synth_api(page_size=3)), "TraceError", "page_size", tags=("cli",)),
        Case("synth-dirty-nan", _cli("trace", "synth", "-o", "{d}/out/s.parquet", "--dirty-fraction", "nan",
                                     api=_synth_api(dirty_fraction=float("nan"))), "TraceError", "nan", tags=("cli",)),
        Case("synth-block-size-0", _cli("trace", "synth", "-o", "{d}/out/s.parquet", "--block", "a=0",
                                        api=_synth_api(blocks=[("a", 0)])), "TraceError", "'a'", tags=("cli",)),
        Case("synth-seed-negative", _cli("trace", "synth", "-o", "{d}/out/s.parquet", "--seed", "-1",
                                         api=_synth_api(seed=-1)), "TraceError", "seed", tags=("cli",)),
        Case("synth-missing-dir", _cli("trace", "synth", "-o", "{d}/nodir/s.parquet", "--ram-size", "64K"),
             "TraceError", "no such directory", tags=("cli",)),
        Case("trace-corrupt-footer-utf8", _trace(lambda p: patched(p, b"round", b"r\xffund", 0)),
             "TraceError", "not a readable Parquet trace", tags=("trace",)),
        Case("trace-arrow-multiline-message", _trace(lambda p: _flip(p, 4)),
             "TraceError", "Deserializing page header failed", tags=("trace",)),
        Case("trace-metadata-too-large", _trace(lambda p: trace_with_metadata(p, b'{"x": "' + b"y" * (17 << 20)
                                                                              + b'"}')),
             "TraceError", "more than the", cli=False, tags=("trace", "big")),
        Case("report-results-nested", _results(nested_json(100_000)), "PageCodecError", "nested", tags=("cli",)),
        Case("usage-missing-argument", _cli("replay"), "UsageError", "Missing argument", tags=("cli",)),
        Case("usage-unknown-option", _cli("verify", "--bogus"), "UsageError", "No such option", tags=("cli",)),
        Case("usage-bad-choice", _cli("--qemu-version", "5.0", "plugins"), "UsageError", "Invalid value",
             tags=("cli",)),
        Case("config-only-commas", _cli("replay", "{trace}", "--config", ",,,",
                                        api=lambda d: lambda: _parse(",,,")), "ConfigError", "empty item",
             tags=("cli",)),
        Case("machine-not-ascii", _cli("replay", "{trace}", "--config", "none", "--machine", "pc-\u00e9",
                                       "--qemu-stream", "{d}/out/o.mig"), "ConfigError", "machine type",
             tags=("cli",)),
        # 5. nothing left behind (the output directory must stay empty) --------------------------
        Case("replay-stream-config-refused", _cli("replay", "{trace}", "--config", "delta-codec=nosuch",
                                                  "--qemu-stream", "{d}/out/o.mig"), "ConfigError", "nosuch",
             tags=("cli",)),
        Case("replay-multifd-config-refused", _cli("replay", "{trace}", "--config", "multifd,delta-codec=nosuch",
                                                   "--qemu-stream", "{d}/out/cap"), "ConfigError", "nosuch",
             tags=("cli",)),
    ]


def _meta(used: int, blocks: int = 1) -> bytes:
    import json

    return json.dumps({"format": "pagecodec-trace", "version": 1, "page_size": PS,
                       "blocks": [{"name": "pc.ram" if i == 0 else f"b{i}", "used_length": used, "page_size": PS}
                                  for i in range(blocks)],
                       "provenance": {"source": "t", "command": "t", "date": "t"}}).encode()


def _flip(path: Path, offset: int) -> Path:
    """A small valid trace with the byte at ``offset`` (the first page header, after the magic) flipped:
    Arrow's message about it spans several lines."""
    src = small_trace(path.with_name(path.name + ".src"))
    b = bytearray(src.read_bytes())
    src.unlink()
    b[offset] ^= 0xFF
    path.write_bytes(bytes(b))
    return path


def _parse(spec: str) -> Any:
    from pagecodec.chain.config import parse_spec

    return parse_spec(spec)

"""Seed inputs for the coverage-guided fuzz harnesses of the readers (tests/fuzz_reader.py:
stream, trace, multifd): small valid inputs made by pagecodec's own writers, so mutations
start from inputs that reach deep into each reader, plus the regression corpus's small hostile ones.

    python tests/fuzz_seeds.py stream|trace|multifd DIR

``DIR`` also receives the files of ``tests/corpus/<reader>/`` (inputs a longer campaign kept).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fuzz_targets  # noqa: E402

PS = 4096
#: The multifd target's first byte picks the channel's compression and QEMU version (fuzz_targets).
MULTIFD_SELECT = {v: i for i, v in enumerate(fuzz_targets.MULTIFD_SELECT)}


def _trace(path: Path, pages: int = 16, rounds: int = 3, blocks: int = 1, seed: int = 1) -> Path:
    """A small trace: ``blocks`` blocks of ``pages`` pages, zero and data pages, sparse rewrites."""
    from conftest import write_trace

    rng = np.random.default_rng(seed)
    ram = np.zeros((blocks, pages, PS), np.uint8)  # data pages with a few words set: small seeds
    ram[:, 1::3, :64] = rng.integers(0, 4, (blocks, len(range(1, pages, 3)), 64), dtype=np.uint8)
    ram[:, 2::3, ::512] = 7
    content = [{b: (np.arange(pages) * PS, ram[b]) for b in range(blocks)}]
    for r in range(1, rounds):
        idx = np.sort(rng.choice(pages, size=max(1, pages // 4), replace=False))
        ram[:, idx, r * 8 : r * 8 + 8] ^= 0x5A
        content.append({b: (idx * PS, ram[b, idx]) for b in range(blocks)})
    write_trace(path, [(("pc.ram" if b == 0 else f"b{b}"), pages * PS) for b in range(blocks)], content)
    return path


def _streams(tmp: Path) -> dict[str, bytes]:
    """QEVM streams pagecodec writes for a small trace with QEMU's own record kinds."""
    from pagecodec.chain.config import parse_spec
    from pagecodec.harness.replay import replay
    from pagecodec.plugins import PluginManager
    from pagecodec.trace.format import TraceReader
    from pagecodec.wire.writer import MemorySink

    pm = PluginManager()
    out = {}
    trace = _trace(tmp / "s.parquet", pages=6)
    for spec in ("none", "xbzrle", "compress,compress-threads=1", "xbzrle+compress", "qemu-version=10.2"):
        sink = MemorySink()
        replay(TraceReader(trace), parse_spec(spec, pm.presets), pm, sink=sink)
        out[spec.replace(",", "_").replace("=", "-")] = sink.getvalue()
    return out


def _channels(tmp: Path) -> dict[str, bytes]:
    """Multifd channel files of a small trace, each behind the harness's selector byte."""
    from pagecodec.chain.config import parse_spec
    from pagecodec.harness.replay import replay
    from pagecodec.plugins import PluginManager
    from pagecodec.trace.format import TraceReader

    pm = PluginManager()
    out = {}
    trace = _trace(tmp / "m.parquet", pages=6, rounds=3)
    for comp in ("none", "zlib", "zstd"):
        for version in ("7.2", "10.2"):
            d = tmp / f"cap-{comp}-{version}"
            spec = f"multifd,multifd-channels=2,multifd-compression={comp},qemu-version={version}"
            replay(TraceReader(trace), parse_spec(spec, pm.presets), pm, qemu_stream=d)
            for k in range(2):
                data = (d / f"channel-{k}.bin").read_bytes()
                out[f"{comp}-{version}-{k}"] = bytes((MULTIFD_SELECT[(comp, version)], k)) + data
    return out


def _traces(tmp: Path) -> dict[str, bytes]:
    out = {}
    for name, kw in {"one": {"pages": 4}, "two-blocks": {"blocks": 2, "pages": 3}, "one-round": {"rounds": 1, "pages": 2},
                     "many-rounds": {"rounds": 6, "pages": 4}}.items():
        out[name] = _trace(tmp / f"{name}.parquet", **kw).read_bytes()
    return out


def _hostile(kind: str) -> dict[str, bytes]:
    """The regression corpus's small hostile inputs of this reader."""
    import hostile_corpus as hc

    if kind == "stream":
        return {"hostile-mem-size-2^40": hc.stream(hc.ram(hc.mem_size([(b"pc.ram", 1 << 40)]))),
                "hostile-nested-vmdesc": hc.stream(hc._SMALL_RAM, vmdesc=hc.nested_json(200)),
                "hostile-100-blocks": hc.stream(hc.ram(hc.mem_size([(f"b{i}".encode(), PS) for i in range(100)]))),
                "hostile-zero-flood": hc.stream(hc.ram(hc.mem_size([(b"pc.ram", 1 << 28)]) + hc.zero_records(200)))}
    if kind == "multifd":
        return {"hostile-packet-num": bytes((0, 0)) + hc.channel(hc.packet(0, [], b"", flags=1),
                                                                  hc.packet(1 << 40, [], b"", flags=1))}
    return {}


def make_seeds(kind: str, dest: str | Path) -> Path:
    """Write the seeds of reader ``kind`` (stream, trace, multifd) into ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        made = {"stream": _streams, "trace": _traces, "multifd": _channels}[kind](tmp)
    made.update(_hostile(kind))
    for name, data in made.items():
        (dest / name).write_bytes(data)
    kept = HERE / "corpus" / kind
    if kept.is_dir():
        for f in kept.iterdir():
            if f.is_file():
                shutil.copy(f, dest / f"kept-{f.name}")
    return dest


if __name__ == "__main__":
    make_seeds(sys.argv[1], sys.argv[2])

"""The checks every codec plugin must pass, run from the plugin's own tests (see :mod:`pagecodec.testing`).

Each check is a method of :class:`Kit` named in :data:`CHECKS`; each returns a :class:`CheckResult`
(passed, failed with what went wrong, or skipped with why). The kit loads only pagecodec's built-in
plugins and the plugin under test (``PluginManager([plugin], entry_points=False, strict=True)``), so
what else is installed does not change the verdict, and a plugin that fails to load fails every check
with its error.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..chain.config import MigrationConfig, parse_spec
from ..chain.receiver import Receiver, RecordObserver
from ..chain.sender import Sender
from ..codecs.base import Codec
from ..errors import PageCodecError
from ..harness.replay import rounds_of, verify
from ..plugins import LOAD_ENV, PluginManager
from ..trace.format import TraceReader
from ..wire.extension import RAM_SAVE_FLAG_EXTENSION
from ..wire.writer import MemorySink
from .fuzz import fuzz_decoder
from .pages import BLOCKS, SMALL_BLOCKS, EdgeTrace, write_edge_trace

__all__ = ["CHECKS", "CheckResult", "ConformanceError", "Kit"]

#: The checks, in the order they run, with what each proves.
CHECKS: dict[str, str] = {
    "registers": "the plugin loads and registers the codec; an extension codec has its one decoder",
    "listed": "`pagecodec plugins` lists the codec once, with its slot(s), wire format and plugin, within 80 columns",
    "entry_point": "an installed entry point of group 'pagecodec' loads the plugin (skipped when none is installed)",
    "round_trip": "every page of the edge trace arrives intact, after every round, in each slot and config",
    "batches": "batches of 1 and 3 pages give the bytes of the chain's batches (segment and round boundaries)",
    "deterministic": "the same pages give the same bytes in a second migration with fresh codecs",
    "fresh_receiver": "a receiver in a new process, with only the plugin loaded, decodes the stream to the final RAM",
    "malformed": "damaged records of the codec raise DecodeError, leaving their page as it was (bounded fuzz)",
}


class ConformanceError(AssertionError):
    """One or more checks failed (the message lists each, with what went wrong)."""


@dataclass
class CheckResult:
    name: str
    status: str  # "passed", "failed", "skipped"
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.status}" + (f": {self.detail}" if self.detail else "")


class _Failed(Exception):
    pass


class _Skipped(Exception):
    pass


def _fail(msg: str) -> None:
    raise _Failed(msg)


@dataclass
class Kit:
    """The checks for codec ``codec`` of plugin module ``plugin``.

    ``configs``: extra SPEC items each check also runs with (``""``: the codec alone in its slot,
    QEMU's defaults otherwise), e.g. ``("", "xbzrle")`` for a raw-slot codec behind XBZRLE.
    ``fuzz_inputs``/``fuzz_seconds``/``seed``: the bound and the seed of the decoder fuzz."""

    codec: str
    plugin: str
    configs: Sequence[str] = ("",)
    page_size: int = 4096
    fuzz_inputs: int = 200
    fuzz_seconds: float = 30.0
    seed: int = 0
    _trace: dict[str, EdgeTrace] = field(default_factory=dict, repr=False)

    # -- plumbing ----------------------------------------------------------------------------------
    def plugins(self) -> PluginManager:
        """A fresh plugin manager: the built-ins and the plugin under test, nothing else."""
        return PluginManager([self.plugin], entry_points=False, strict=True)

    def specs(self, codec: Codec) -> list[str]:
        """The SPECs the checks run: the codec in each of its slots, with each of :attr:`configs`."""
        return [",".join(x for x in (f"{slot.value}-codec={codec.name}", extra) if x)
                for slot in codec.slots for extra in self.configs]

    def trace(self, workdir: Path, small: bool = False) -> EdgeTrace:
        """The edge trace in ``workdir`` (written once); ``small``: the fuzz's, with fewer pages."""
        name = "edge-small.trace.parquet" if small else "edge.trace.parquet"
        key = str(workdir / name)
        if key not in self._trace:
            self._trace[key] = write_edge_trace(workdir / name, self.page_size, self.seed,
                                                SMALL_BLOCKS if small else BLOCKS)
        return self._trace[key]

    def send(self, trace: EdgeTrace, config: MigrationConfig, pm: PluginManager, max_pages: int = 4096) -> bytes:
        """The main stream the sender writes, the trace's rounds offered in batches of ``max_pages``."""
        reader = TraceReader(trace.path)
        sink = MemorySink()
        Sender(reader.meta, config, pm, sink).run(rounds_of(reader, max_pages=max_pages), reader.num_rounds)
        return sink.getvalue()

    def receiver(self, trace: EdgeTrace, config: MigrationConfig, pm: PluginManager) -> Callable[[RecordObserver | None], Receiver]:
        return lambda obs: Receiver(self.page_size, pm, config=config, expected_blocks=trace.meta.blocks,
                                    source="stream", observer=obs)

    # -- running -----------------------------------------------------------------------------------
    def run(self, name: str, workdir: str | os.PathLike[str]) -> CheckResult:
        """Run check ``name`` with its files in ``workdir`` (an existing directory)."""
        if name not in CHECKS:
            raise ValueError(f"no conformance check {name!r} (checks: {', '.join(CHECKS)})")
        try:
            getattr(self, f"check_{name}")(Path(workdir))
        except _Skipped as e:
            return CheckResult(name, "skipped", str(e))
        except _Failed as e:
            return CheckResult(name, "failed", str(e))
        except PageCodecError as e:
            return CheckResult(name, "failed", f"{type(e).__name__}: {e}")
        return CheckResult(name, "passed")

    def run_all(self, workdir: str | os.PathLike[str], checks: Sequence[str] | None = None) -> list[CheckResult]:
        return [self.run(n, workdir) for n in (checks or CHECKS)]

    def _codec(self, pm: PluginManager) -> Codec:
        if self.codec not in pm.codecs or pm.plugin_of(self.codec) != self.plugin:
            _fail(f"plugin {self.plugin!r} does not register codec {self.codec!r} (it registers: "
                  f"{', '.join(c.name for c in pm.infos[self.plugin].codecs) or 'nothing'})")
        return pm.codecs[self.codec]

    # -- the checks --------------------------------------------------------------------------------
    def check_registers(self, workdir: Path) -> None:
        pm = self.plugins()
        codec = self._codec(pm)
        decs = codec.decoders(_decoder_context(self.page_size))
        if not codec.qemu_format:
            ext = [d for d in decs if d.flag == RAM_SAVE_FLAG_EXTENSION]
            if len(ext) != 1:
                _fail(f"extension codec {codec.name!r} must return exactly one decoder with flag "
                      f"RAM_SAVE_FLAG_EXTENSION (0x400) from decoders(); it returns {len(ext)}")
        if not codec.description:
            _fail(f"codec {codec.name!r} has no description (`pagecodec plugins` shows it)")
        for spec in self.specs(codec):  # every slot it names, with every extra config, parses
            parse_spec(spec, pm.presets)

    def check_listed(self, workdir: Path) -> None:
        from click.testing import CliRunner

        from ..cli import cli
        from ..listing import render

        res = CliRunner().invoke(cli, ["--plugin", self.plugin, "plugins", "--json"], env={LOAD_ENV: ""})
        if res.exit_code != 0:
            _fail(f"`pagecodec --plugin {self.plugin} plugins --json` exited {res.exit_code}: {res.output}")
        data = json.loads(res.stdout)
        mine = [c for c in data["codecs"] if c["name"] == self.codec]
        if len(mine) != 1:
            _fail(f"`pagecodec plugins --json` lists codec {self.codec!r} {len(mine)} times")
        c = mine[0]
        codec = self._codec(self.plugins())
        want = {"slots": [s.value for s in codec.slots], "format": "qemu" if codec.qemu_format else "extension",
                "plugin": self.plugin}
        got = {k: c[k] for k in want}
        if got != want:
            _fail(f"`pagecodec plugins --json` says {got}, not {want}")
        text = render(data, 80)
        long = [line for line in text.splitlines() if len(line) > 80]
        if long or self.codec not in text:
            _fail(f"`pagecodec plugins` at 80 columns: {len(long)} longer line(s), codec named: {self.codec in text}")

    def check_entry_point(self, workdir: Path) -> None:
        eps = [ep for ep in metadata.entry_points(group="pagecodec") if ep.value.split(":")[0] == self.plugin]
        if not eps:
            raise _Skipped(f"no installed entry point of group 'pagecodec' loads {self.plugin!r} (pip install the package)")
        for ep in eps:
            pm = PluginManager(load=[ep.name], environ={}, strict=True)
            if pm.plugin_of(self.codec) != ep.name:
                _fail(f"entry point {ep.name!r} = {ep.value!r} does not provide codec {self.codec!r}")

    def check_round_trip(self, workdir: Path) -> None:
        trace = self.trace(workdir)
        pm = self.plugins()
        for spec in self.specs(self._codec(pm)):
            res = verify(TraceReader(trace.path), parse_spec(spec, pm.presets), pm)
            if not res.ok:
                _fail(f"config {spec!r}: {res.mismatch}")

    def check_batches(self, workdir: Path) -> None:
        trace = self.trace(workdir)
        pm = self.plugins()
        for spec in self.specs(self._codec(pm)):
            cfg = parse_spec(spec, pm.presets)
            whole = self.send(trace, cfg, self.plugins())
            for n in (1, 3):
                other = self.send(trace, cfg, self.plugins(), max_pages=n)
                if other != whole:
                    _fail(f"config {spec!r}: batches of {n} page(s) give other bytes than the chain's batches "
                          f"({_first_difference(whole, other)})")

    def check_deterministic(self, workdir: Path) -> None:
        trace = self.trace(workdir)
        pm = self.plugins()
        codec = self._codec(pm)
        for spec in self.specs(codec):
            cfg = parse_spec(spec, pm.presets)
            if not codec.reproducible(cfg):
                raise _Skipped(f"codec {codec.name!r} declares itself not reproducible under {spec!r}")
            a, b = self.send(trace, cfg, self.plugins()), self.send(trace, cfg, self.plugins())
            if a != b:
                _fail(f"config {spec!r}: two migrations of the same pages differ ({_first_difference(a, b)})")

    def check_fresh_receiver(self, workdir: Path) -> None:
        trace = self.trace(workdir)
        pm = self.plugins()
        for k, spec in enumerate(self.specs(self._codec(pm))):
            path = workdir / f"fresh-{k}.mig"
            path.write_bytes(self.send(trace, parse_spec(spec, pm.presets), pm))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **{LOAD_ENV: ""})
            p = subprocess.run([sys.executable, "-c", _FRESH, self.plugin, spec, str(path), str(self.page_size)],
                               capture_output=True, text=True, env=env, timeout=300)
            if p.returncode != 0:
                _fail(f"config {spec!r}: a fresh receiver could not load the stream: {p.stderr.strip()[-2000:]}")
            got = json.loads(p.stdout)
            for name, pages in trace.final.items():
                if got.get(name) != hashlib.sha256(pages.tobytes()).hexdigest():
                    _fail(f"config {spec!r}: block {name!r} decoded by a fresh receiver differs from the trace's "
                          f"last image (state shared between encoder and decoder?)")

    def check_malformed(self, workdir: Path) -> None:
        trace = self.trace(workdir, small=True)
        pm = self.plugins()
        codec = self._codec(pm)
        if codec.qemu_format:
            raise _Skipped(f"codec {codec.name!r} writes QEMU's records, which pagecodec's own decoders read "
                           f"(their fuzzing is pagecodec's)")
        problems: list[str] = []
        for spec in self.specs(codec):
            cfg = parse_spec(spec, pm.presets)
            data = self.send(trace, cfg, pm)
            report = fuzz_decoder(data, self.receiver(trace, cfg, pm), codec.name, inputs=self.fuzz_inputs,
                                  seconds=self.fuzz_seconds / len(self.specs(codec)), seed=self.seed)
            problems += [f"config {spec!r}: {p}" for p in report.problems]
            if report.inputs and not report.rejected and not report.problems:
                problems.append(f"config {spec!r}: the decoder accepted all {report.inputs} damaged records "
                                f"(cut short, lengthened, emptied, random): it checks nothing")
        if problems:
            _fail(f"{len(problems)} problem(s); the first: " + "; ".join(problems[:3]))


def _decoder_context(page_size: int) -> Any:
    """The context a codec's ``decoders()`` gets on a destination with QEMU's defaults."""
    from ..codecs.base import CodecContext

    return CodecContext(MigrationConfig(), page_size, (), ())


def _first_difference(a: bytes, b: bytes) -> str:
    n = min(len(a), len(b))
    x = np.frombuffer(a[:n], np.uint8) != np.frombuffer(b[:n], np.uint8)
    at = int(np.argmax(x)) if x.any() else n
    return f"{len(a):,} vs {len(b):,} bytes, first difference at offset {at}"


#: The fresh receiver: a new interpreter, pagecodec's built-ins and the plugin, the stream from a file;
#: prints each block's sha256.
_FRESH = """
import hashlib, json, sys
from pagecodec.chain.config import parse_spec
from pagecodec.chain.receiver import Receiver
from pagecodec.plugins import PluginManager
from pagecodec.wire.reader import StreamReader
plugin, spec, path, page_size = sys.argv[1:5]
pm = PluginManager([plugin], entry_points=False, strict=True)
rc = Receiver(int(page_size), pm, config=parse_spec(spec, pm.presets), source=path)
with open(path, "rb") as f:
    rc.load_stream(StreamReader(f.read(), path))
print(json.dumps({name: hashlib.sha256(mem.tobytes()).hexdigest() for name, mem in rc.memory.items()}))
"""

"""``PAGECODEC_TRACE_PLUGINS``: a line on stderr for every call pagecodec makes into a plugin.

A plugin author's first question when a run fails or a figure looks odd is "what did pagecodec ask
my codec, and what did it answer?". datasette answers it with ``DATASETTE_TRACE_PLUGINS=1`` (pluggy's
hook-call monitoring); pagecodec's hooks are only the two registration hooks, and the calls that
matter are the ones into the codec objects they registered. So the tracer logs both:

* the hook calls (``register_codecs``, ``register_presets``): which plugin, what it registered;
* every call the chain makes into a traced codec's encoder (``encode``: slot, round, block, pages
  offered, pages claimed, records and payload bytes; ``end_of_pass``, ``setup``, ``before_eos``) and
  into its decoders (``load``/``load_batch``/``load_many``: stream offsets and payload bytes;
  ``end_of_section``), each with the thread CPU it took.

The variable's value says whom to trace: ``1`` (or ``all``, ``*``) every plugin, the built-in ones
included; otherwise a comma-separated list of plugin names (entry-point names, module names) and
codec names. Unset, empty or ``0``: no tracing, and no wrapper is put between the chain and a codec,
so tracing off costs nothing.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .codecs.base import Emission, RecordDecoder, Segment, Slot, SlotEncoder, Stage, ControlRecord

if TYPE_CHECKING:
    import pluggy

    from .wire.reader import StreamReader

__all__ = ["TRACE_ENV", "PluginTracer", "tracer_from_env", "TracedEncoder", "TracedDecoder"]

#: The environment variable that turns tracing on (see the module docstring for its values).
TRACE_ENV = "PAGECODEC_TRACE_PLUGINS"

_ALL = {"1", "all", "*", "yes", "true", "on"}
_OFF = {"", "0", "no", "false", "off"}


@dataclass
class PluginTracer:
    """Writes one line per traced call to ``out`` (stderr unless given); ``names`` None traces every
    plugin and codec, else only those named (plugin or codec names)."""

    names: frozenset[str] | None = None
    out: IO[str] | None = None
    prefix: str = "pagecodec-trace: "
    _t0: float = field(default_factory=time.perf_counter)

    def wants(self, plugin: str | None, codec: str | None = None) -> bool:
        """Whether calls into ``plugin`` (or its codec ``codec``) are traced."""
        return self.names is None or (plugin is not None and plugin in self.names) or (codec is not None and codec in self.names)

    def log(self, text: str) -> None:
        out = self.out if self.out is not None else sys.stderr
        out.write(f"{self.prefix}{time.perf_counter() - self._t0:9.4f}s {text}\n")
        out.flush()

    # -- pluggy's hooks -------------------------------------------------------------------------
    def monitor(self, pm: "pluggy.PluginManager") -> None:
        """Log every hook call of ``pm`` (the registration hooks) whose plugins are traced."""

        def names_of(hook_impls: Sequence[Any]) -> list[str]:
            return [impl.plugin_name for impl in hook_impls]

        def before(hook_name: str, hook_impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
            traced = [n for n in names_of(hook_impls) if self.wants(n)]
            if traced:
                self.log(f"hook {hook_name}() -> plugin(s) {', '.join(repr(n) for n in traced)}")

        def after(outcome: Any, hook_name: str, hook_impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
            traced = [n for n in names_of(hook_impls) if self.wants(n)]
            if traced and outcome.exception is not None:
                e = outcome.exception
                self.log(f"hook {hook_name}() of {', '.join(repr(n) for n in traced)} raised {type(e).__name__}: {e}")

        pm.add_hookcall_monitoring(before, after)

    def registered(self, plugin: str, what: str, name: str) -> None:
        if self.wants(plugin, name):
            self.log(f"plugin {plugin!r} registered {what} {name!r}")

    # -- codec objects --------------------------------------------------------------------------
    def encoder(self, enc: SlotEncoder, codec: str, plugin: str, slot: Slot) -> SlotEncoder:
        """``enc`` itself, or a tracing wrapper when this codec is traced."""
        if not self.wants(plugin, codec):
            return enc
        self.log(f"{_who(codec, plugin)} encoder() for the {slot.value} slot -> {type(enc).__name__}")
        return TracedEncoder(enc, self, codec, plugin, slot)

    def decoder(self, dec: RecordDecoder, codec: str, plugin: str | None) -> RecordDecoder:
        if not self.wants(plugin, codec):
            return dec
        self.log(f"{_who(codec, plugin)} decoders() -> {type(dec).__name__} for flag {dec.flag:#x}")
        return TracedDecoder(dec, self, codec, plugin)


def _who(codec: str, plugin: str | None) -> str:
    return f"codec {codec!r} (plugin {plugin or 'built-in'!r})"


def tracer_from_env(environ: Mapping[str, str]) -> PluginTracer | None:
    """The tracer ``PAGECODEC_TRACE_PLUGINS`` asks for, or None."""
    value = environ.get(TRACE_ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value.lower() in _ALL:
        return PluginTracer()
    return PluginTracer(frozenset(v.strip() for v in value.split(",") if v.strip()))


def _pages(seg: Segment) -> str:
    if not len(seg):
        return "no pages"
    return f"{len(seg)} page(s) {int(seg.offsets[0]):#x}..{int(seg.offsets[-1]):#x}"


def _record_bytes(sets: Sequence[Any]) -> int:
    return int(sum(int(s.payload_lengths().sum()) + s.prefix_len * len(s) for s in sets))


class TracedEncoder(SlotEncoder):
    """A codec's encoder with every chain call logged; behaviour and results are the encoder's own."""

    def __init__(self, inner: SlotEncoder, tracer: PluginTracer, codec: str, plugin: str, slot: Slot) -> None:
        self.inner = inner
        self.tracer = tracer
        self.who = _who(codec, plugin)
        self.slot = slot

    def __getattr__(self, name: str) -> Any:  # what the chain's callers read of the encoder itself
        return getattr(self.inner, name)

    def encode(self, seg: Segment, stage: Stage) -> None:
        from .codecs.base import SLOT_ORDER

        me = SLOT_ORDER.index(self.slot)
        before_claimed = int(np.count_nonzero(seg.claimed_by == me))
        before_sets, before_emit = len(seg.records), len(seg.before)
        t0 = time.thread_time_ns()
        try:
            self.inner.encode(seg, stage)
        except BaseException as e:
            self.tracer.log(f"{self.who} encode(round {stage.round}, block {seg.block_index}, {_pages(seg)}) raised "
                            f"{type(e).__name__}: {e}")
            raise
        us = (time.thread_time_ns() - t0) / 1e3
        claimed = int(np.count_nonzero(seg.claimed_by == me)) - before_claimed
        new = seg.records[before_sets:]
        self.tracer.log(
            f"{self.who} encode(round {stage.round}, block {seg.block_index}, {_pages(seg)}, "
            f"{len(seg.pending()) + claimed} pending) -> claimed {claimed}, {sum(len(s) for s in new)} record(s) "
            f"[{', '.join(sorted({s.kind for s in new})) or '-'}], {_record_bytes(new):,} bytes after the headers"
            + (f", {len(seg.before) - before_emit} emission(s) before" if len(seg.before) > before_emit else "")
            + f", {us:.0f} us")

    def end_of_pass(self, stage: Stage) -> Emission | None:
        em = self.inner.end_of_pass(stage)
        held = 0 if em is None else sum(len(s) for s in em.sets)
        self.tracer.log(f"{self.who} end_of_pass(round {stage.round}, last stage {stage.last_stage}) -> {held} record(s)")
        return em

    def setup(self) -> list[ControlRecord]:
        out = self.inner.setup()
        self.tracer.log(f"{self.who} setup() -> {len(out)} control record(s)")
        return out

    def before_eos(self, stage: Stage) -> list[ControlRecord]:
        out = self.inner.before_eos(stage)
        if out:
            self.tracer.log(f"{self.who} before_eos(round {stage.round}) -> {len(out)} control record(s)")
        return out

    def take_ram_counters(self) -> dict[str, int]:
        return self.inner.take_ram_counters()

    def ram_counters(self) -> dict[str, int]:
        return self.inner.ram_counters()

    def take_worker_cpu_ns(self) -> int:
        return self.inner.take_worker_cpu_ns()

    def counters(self, wire_bytes: Mapping[str, int], wire_records: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        return self.inner.counters(wire_bytes, wire_records)


class TracedDecoder(RecordDecoder):
    """A codec's decoder with every call from the receiver logged (stream offsets, payload bytes)."""

    flag = 0  # replaced per instance by the wrapped decoder's

    def __init__(self, inner: RecordDecoder, tracer: PluginTracer, codec: str, plugin: str | None) -> None:
        self.inner = inner
        self.tracer = tracer
        self.who = _who(codec, plugin)
        self.flag = inner.flag  # type: ignore[misc]
        self.fixed_payload = inner.fixed_payload  # type: ignore[misc]
        self.loads_many = inner.loads_many  # type: ignore[misc]

    def __getattr__(self, name: str) -> Any:  # a decoder's own counters (the importer reads XBZRLE's)
        return getattr(self.inner, name)

    def _call(self, what: str, fn: Any) -> Any:
        t0 = time.thread_time_ns()
        try:
            out = fn()
        except BaseException as e:
            self.tracer.log(f"{self.who} {what} raised {type(e).__name__}: {e}")
            raise
        self.tracer.log(f"{self.who} {what}, {(time.thread_time_ns() - t0) / 1e3:.0f} us")
        return out

    def load(self, r: "StreamReader", page: np.ndarray) -> None:
        self._call(f"load(offset {r.base + r.pos}, {r.remaining:,} byte(s))", lambda: self.inner.load(r, page))

    def load_batch(self, payloads: np.ndarray, pages: np.ndarray, index: np.ndarray) -> None:
        self._call(f"load_batch({len(index)} record(s))", lambda: self.inner.load_batch(payloads, pages, index))

    def payload_length(self, buf: np.ndarray, pos: int) -> int | None:
        return self.inner.payload_length(buf, pos)

    def load_many(self, payloads: list[memoryview], pages: np.ndarray, index: np.ndarray, at: np.ndarray,
                  source: str | None) -> None:
        span = f"offsets {int(at[0])}..{int(at[-1])}" if len(at) else "nothing"
        self._call(f"load_many({len(payloads)} record(s) at {span}, {sum(len(p) for p in payloads):,} bytes)",
                   lambda: self.inner.load_many(payloads, pages, index, at, source))

    def take_worker_cpu_ns(self) -> int:
        return self.inner.take_worker_cpu_ns()

    def end_of_section(self, at: int, source: str | None) -> None:
        self._call(f"end_of_section(offset {at})", lambda: self.inner.end_of_section(at, source))

"""The load side (QEMU's ram_load_precopy): parse the stream, rebuild each RAM block in memory.

Each RAM block lives in a numpy array. Records are dispatched on their flag to the decoder a codec
plugin registered for it; runs of fixed-size records (raw pages, zero pages) of one block are parsed
and applied as one batch. Everything malformed raises :class:`WireError` with the byte offset:
unknown flags, a CONTINUE with no previous block, an unknown block, an offset outside its block, a
MEM_SIZE list that disagrees with the expected blocks, a truncated record, a missing footer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ..codecs.base import CodecContext, RecordDecoder
from ..errors import PageCodecError, PluginError
from ..plugins import PluginManager
from ..trace.format import RAMBlockInfo
from ..wire import qevm
from ..wire.flags import (
    PAGE_RECORD_FLAGS,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_HOOK,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SECTION_IDSTR,
    SectionType,
)
from ..wire.reader import StreamReader
from .config import MigrationConfig
from .ramstate import block_addresses

__all__ = ["Receiver", "LoadStats"]

#: Longest run of fixed-size records parsed in one vectorised step.
_RUN = 4096


@dataclass
class LoadStats:
    records: dict[str, int] = field(default_factory=dict)
    sections: int = 0
    eos: int = 0


_KIND_OF_FLAG = {0x02: "zero", 0x08: "page", 0x40: "xbzrle", 0x100: "compress"}


class Receiver:
    """Destination RAM plus the state ram_load keeps between records (the last block seen)."""

    def __init__(
        self,
        page_size: int,
        plugins: PluginManager,
        config: MigrationConfig | None = None,
        expected_blocks: Iterable[RAMBlockInfo] | None = None,
        source: str | None = None,
    ) -> None:
        self.page_size = page_size
        self.expected = {b.name: b for b in expected_blocks} if expected_blocks is not None else None
        self.memory: dict[str, np.ndarray] = {}
        self.block_order: list[str] = []
        self.last_block: str | None = None
        self.source = source
        self.stats = LoadStats()
        self.header: qevm.FileHeader | None = None
        self.ram_section_id: int | None = None
        self.finished = False
        blocks = tuple(self.expected.values()) if self.expected else ()
        ctx = CodecContext(config or MigrationConfig(), page_size, blocks, block_addresses([b.used_length for b in blocks]))
        self.decoders: dict[int, RecordDecoder] = {}
        self._decoder_codec: dict[int, str] = {}
        for name, codec in plugins.codecs.items():
            try:
                decs = codec.decoders(ctx)
            except Exception as e:
                raise PluginError(f"codec {name!r} (plugin {plugins.plugin_of(name)!r}) failed to build its decoder: {e}") from e
            for d in decs:
                if d.flag in self.decoders:
                    raise PluginError(
                        f"codecs {self._decoder_codec[d.flag]!r} and {name!r} both decode flag {d.flag:#x}"
                    )
                self.decoders[d.flag] = d
                self._decoder_codec[d.flag] = name

    # -- stream level ---------------------------------------------------------------------------
    def load_stream(self, r: StreamReader, on_section: Callable[[qevm.SectionHeader], None] | None = None) -> None:
        """A whole QEVM stream: header, then sections until EOF (RAM sections only)."""
        self.load_header(r)
        while not self.finished:
            hdr = self.load_section(r)
            if on_section is not None and hdr.type != SectionType.EOF:
                on_section(hdr)

    def load_header(self, r: StreamReader) -> None:
        self.header = qevm.read_file_header(r)

    def load_section(self, r: StreamReader) -> qevm.SectionHeader:
        """One section (START/PART/END of "ram", or EOF); returns its header."""
        hdr = qevm.read_section_header(r)
        if hdr.type == SectionType.EOF:
            self.finished = True
            if r.peek_byte() == SectionType.VMDESCRIPTION:
                r.get_byte()
                qevm.read_vmdesc(r)
            return hdr
        if hdr.type == SectionType.VMDESCRIPTION:
            raise r.error("vmdesc before EOF", hdr.offset)
        if hdr.type in (SectionType.SECTION_START, SectionType.SECTION_FULL):
            if hdr.idstr != RAM_SECTION_IDSTR:
                raise r.error(f"section {hdr.idstr!r} is not RAM; device state is not loaded here", hdr.offset)
            if hdr.type == SectionType.SECTION_FULL:
                raise r.error("RAM sent as a FULL section is not supported", hdr.offset)
            if hdr.version_id != 4:
                raise r.error(f"RAM section version {hdr.version_id} (expected 4)", hdr.offset)
            self.ram_section_id = hdr.section_id
        elif hdr.section_id != self.ram_section_id:
            raise r.error(f"section id {hdr.section_id} is unknown (RAM is {self.ram_section_id})", hdr.offset)
        self.load_ram(r)
        qevm.read_section_footer(r, hdr.section_id)
        self.stats.sections += 1
        return hdr

    # -- ram_load_precopy -----------------------------------------------------------------------
    def load_ram(self, r: StreamReader) -> None:
        """Records until EOS."""
        ps = self.page_size
        mask = ps - 1
        count = self.stats.records
        while True:
            at = r.pos
            word = r.get_be64("RAM record header")
            flags = word & mask
            addr = word & ~mask
            if flags & PAGE_RECORD_FLAGS:
                name = self._block_from_stream(r, flags, at)
                mem = self.memory[name]
                if addr + ps > mem.shape[0]:
                    raise r.error(f"page offset {addr:#x} outside block {name!r} of {mem.shape[0]:#x} bytes", at)
            kind = flags & ~RAM_SAVE_FLAG_CONTINUE
            if kind == RAM_SAVE_FLAG_EOS:
                self.stats.eos += 1
                return
            if kind == RAM_SAVE_FLAG_MEM_SIZE:
                self._load_mem_size(r, addr, at)
                continue
            dec = self.decoders.get(kind)
            if dec is None:
                if kind & RAM_SAVE_FLAG_HOOK:
                    raise r.error("RAM control hook records (RDMA) are not supported", at)
                raise r.error(f"unknown combination of migration flags {flags:#x}", at)
            if dec.fixed_payload is not None and flags & RAM_SAVE_FLAG_CONTINUE:
                n = self._load_run(r, word, dec, name)
                if n:
                    count[_KIND_OF_FLAG.get(kind, hex(kind))] = count.get(_KIND_OF_FLAG.get(kind, hex(kind)), 0) + n
                    continue
            try:
                dec.load(r, mem[addr : addr + ps])
            except PageCodecError:
                raise
            except Exception as e:
                raise PluginError(
                    f"{r.source or 'stream'}: offset {at}: decoder of codec {self._decoder_codec[kind]!r} raised "
                    f"on block {name!r} offset {addr:#x}: {type(e).__name__}: {e}"
                ) from e
            k = _KIND_OF_FLAG.get(kind, hex(kind))
            count[k] = count.get(k, 0) + 1

    def _load_run(self, r: StreamReader, word: int, dec: RecordDecoder, name: str) -> int:
        """Vectorised: a run of records with the same flags (CONTINUE) and a fixed payload size.

        The cursor stands after the first header. Returns how many records it applied (0: take the
        record-by-record path)."""
        L = dec.fixed_payload
        assert L is not None
        stride = 8 + L
        start = r.pos - 8
        avail = (len(r) - start) // stride
        k = min(_RUN, avail)
        if k < 2:
            return 0
        buf = r.view_np()
        heads = np.lib.stride_tricks.as_strided(buf[start:], shape=(k, 8), strides=(stride, 1)).copy().view(">u8").ravel()
        ps = self.page_size
        flags = word & (ps - 1)
        mem = self.memory[name]
        ok = ((heads & np.uint64(ps - 1)) == flags) & ((heads & ~np.uint64(ps - 1)) <= np.uint64(mem.shape[0] - ps))
        bad = np.flatnonzero(~ok)
        k = int(bad[0]) if len(bad) else k
        if k < 2:
            return 0
        offs = (heads[:k] & ~np.uint64(ps - 1)).astype(np.int64)
        payloads = np.lib.stride_tricks.as_strided(buf[start + 8 :], shape=(k, L), strides=(stride, 1))
        dec.load_batch(payloads, mem.reshape(-1, ps), offs // ps)
        r.pos = start + k * stride
        return k

    def _block_from_stream(self, r: StreamReader, flags: int, at: int) -> str:
        """ram_block_from_stream: CONTINUE reuses the last block, else u8 len + idstr follows."""
        if flags & RAM_SAVE_FLAG_CONTINUE:
            if self.last_block is None:
                raise r.error("CONTINUE flag with no previous block", at)
            return self.last_block
        name = r.get_counted_string("block idstr")
        if name not in self.memory:
            raise r.error(f"unknown RAM block {name!r}", at)
        self.last_block = name
        return name

    def _load_mem_size(self, r: StreamReader, total: int, at: int) -> None:
        """The setup list: each block's idstr and used_length; the lengths must add up to ``total``."""
        remaining = total
        while remaining > 0:
            bat = r.pos
            name = r.get_counted_string("block idstr")
            length = r.get_be64("block used_length")
            if self.expected is not None:
                exp = self.expected.get(name)
                if exp is None:
                    raise r.error(f"unknown RAM block {name!r} in MEM_SIZE", bat)
                if exp.used_length != length:
                    raise r.error(f"block {name!r}: length {length:#x} in stream, {exp.used_length:#x} expected", bat)
            if length % self.page_size or length > remaining:
                raise r.error(f"block {name!r}: bad used_length {length:#x}", bat)
            if name in self.memory:
                raise r.error(f"block {name!r} listed twice in MEM_SIZE", bat)
            self.memory[name] = np.zeros(length, dtype=np.uint8)
            self.block_order.append(name)
            remaining -= length
        if self.expected is not None and set(self.expected) - set(self.memory):
            missing = ", ".join(sorted(set(self.expected) - set(self.memory)))
            raise r.error(f"MEM_SIZE does not list block(s) {missing}", at)

    def block(self, name: str) -> np.ndarray:
        return self.memory[name]

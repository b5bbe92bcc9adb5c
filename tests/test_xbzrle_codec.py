"""The XBZRLE codec's own contracts beyond the stream (mutation testing found these unpinned): the
decoder's counters and error offsets, and which pages the delta slot may take."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_trace
from pagecodec.chain.config import parse_spec
from pagecodec.codecs.base import Codec, Slot, SlotEncoder
from pagecodec.codecs.xbzrle import XbzrleDecoder
from pagecodec.errors import DecodeError
from pagecodec.harness.replay import replay
from pagecodec.plugins import PluginManager
from pagecodec.trace.format import TraceReader
from pagecodec.wire.flags import RAM_SAVE_FLAG_PAGE
from pagecodec.wire.reader import StreamReader
from pagecodec.wire.records import RecordSet

PS = 4096


def test_decoder_counts_the_encoded_bytes_it_loaded():
    dec = XbzrleDecoder()
    assert dec.data_bytes == 0
    page = np.zeros(PS, np.uint8)
    dec.load(StreamReader(b"\x01\x00\x03" + b"\x05\x01\x07", "s"), page)  # zrun 5, nzrun 1, byte 7
    assert dec.data_bytes == 3 and page[5] == 7 and page.sum() == 7


def test_decoder_error_names_the_faulty_byte_in_the_stream():
    """A rejected record's offset is where its bad run header sits in the stream, base included."""
    dec = XbzrleDecoder()
    page = np.zeros(PS, np.uint8)
    data = b"\xaa" * 10 + b"\x01\x00\x04" + b"\x05\x01\x07" + b"\x00"  # second zrun 0: only the first may be
    r = StreamReader(data, "s", base=1000)
    r.pos = 10
    with pytest.raises(DecodeError) as ei:
        dec.load(r, page)
    assert ei.value.offset == 1000 + 10 + 3 + 3  # the zrun header after the first pair
    assert not page.any()


class _ControlAll(SlotEncoder):
    """A control-slot codec (an RDMA-like hook) that takes every page as a raw page record."""

    def encode(self, seg, stage):
        idx = seg.pending()
        seg.claim(Slot.CONTROL, idx, RecordSet("page", RAM_SAVE_FLAG_PAGE, idx, pages=seg.pages, rows=idx))


class _ControlCodec(Codec):
    name = "ctl"
    slots = (Slot.CONTROL,)
    qemu_format = True

    def encoder(self, slot, ctx):
        return _ControlAll()


def test_pages_an_earlier_slot_claimed_are_not_xbzrle_events(tmp_path):
    """The delta slot works on pending pages and the zero slot's pages only: a page the control slot
    (the first, index 0) took is neither encoded nor cached."""
    rng = np.random.default_rng(1)
    ram = rng.integers(0, 256, (8, PS), dtype=np.uint8)
    rounds = [{0: (np.arange(8) * PS, ram.copy())}]
    for _ in range(3):
        ram[:, 9] ^= 1
        rounds.append({0: (np.arange(8) * PS, ram.copy())})
    path = tmp_path / "t.parquet"
    write_trace(path, [("pc.ram", 8 * PS)], rounds)
    pm = PluginManager(entry_points=False)
    pm._add_codec(_ControlCodec(), pm.infos["pagecodec.codecs.raw"])
    res = replay(TraceReader(path), parse_spec("xbzrle,control-codec=ctl", pm.presets), pm)
    assert res["records"] == {"page": 32}
    assert res["xbzrle-cache"]["pages"] == 0 and res["xbzrle-cache"]["cache-miss"] == 0

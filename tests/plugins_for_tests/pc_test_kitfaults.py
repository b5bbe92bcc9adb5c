"""Codecs that each break one rule of the plugin contract, so the tests can show that the conformance
kit (pagecodec.testing) catches it. Each fills the raw slot with extension records holding the page
(``WholePage``), and differs from a correct codec in one way:

* ``batchy``: the payload depends on how many pages the chain offered at once (batches must not matter);
* ``moody``: the payload carries a count of the encoders made in this process (not deterministic);
* ``sharer``: the decoder reads the page from the encoder's memory, not from the stream (decodes only
  in the process that encoded);
* ``eager``: the decoder writes the page before it checks the record's length (must validate first);
* ``crashy``: the decoder raises ValueError on a short record instead of DecodeError;
* ``lax``: the decoder accepts any record, padding or cutting it to a page (checks nothing).
"""

from __future__ import annotations

import itertools

import numpy as np

from pagecodec.codecs.base import Codec, RecordDecoder, Slot, SlotEncoder
from pagecodec.errors import DecodeError
from pagecodec.hookspecs import hookimpl
from pagecodec.wire.extension import RAM_SAVE_FLAG_EXTENSION, extension_records

_MADE = itertools.count()
_SHARED: dict[bytes, bytes] = {}  # sharer: key -> page, the encoder's memory the decoder peeks at
_KEYS = itertools.count()


class WholePage(SlotEncoder):
    """Payload: one byte of ``tag(segment)`` + the page."""

    def __init__(self, name, cid, tag=lambda seg: 0):
        self.name, self.cid, self.tag = name, cid, tag

    def encode(self, seg, stage):
        idx = seg.pending()
        k = len(idx)
        if not k:
            return
        ps = seg.pages.shape[1]
        if self.name == "sharer":  # the payload is only a key into this process's memory
            keys = [next(_KEYS).to_bytes(8, "big") for _ in range(k)]
            for key, i in zip(keys, idx.tolist()):
                _SHARED[key] = seg.pages[i].tobytes()
            data = np.frombuffer(b"".join(keys), np.uint8)
            seg.claim(Slot.RAW, idx, extension_records(self.name, self.cid, idx, data, np.arange(k) * 8,
                                                       np.full(k, 8, np.int64)))
            return
        data = np.zeros((k, ps + 1), np.uint8)
        data[:, 0] = self.tag(seg) & 0xFF
        data[:, 1:] = seg.pages[idx]
        seg.claim(Slot.RAW, idx, extension_records(self.name, self.cid, idx, data.reshape(-1),
                                                   np.arange(k, dtype=np.int64) * (ps + 1), np.full(k, ps + 1, np.int64)))


class Strict(RecordDecoder):
    flag = RAM_SAVE_FLAG_EXTENSION

    def __init__(self, name):
        self.name = name

    def load(self, r, page):
        at = r.base + r.pos
        n = r.remaining
        ps = page.shape[0]
        if self.name == "eager":
            page[: min(ps, max(0, n - 1))] = np.frombuffer(r.get_bytes(n), np.uint8)[1:][:ps]
            if n != ps + 1:
                raise DecodeError("not a page", at, r.source)
            return
        if self.name == "sharer":
            if n != 8:
                raise DecodeError("not a key", at, r.source)
            page[:] = np.frombuffer(_SHARED[bytes(r.get_bytes(8))], np.uint8)
            return
        if self.name == "lax":
            body = bytes(r.get_bytes(n))[1:][:ps]
            page[:] = np.frombuffer(body.ljust(ps, b"\0"), np.uint8)
            return
        if n != ps + 1:
            if self.name == "crashy":
                raise ValueError("short record")
            raise DecodeError("not a page", at, r.source)
        page[:] = np.frombuffer(bytes(r.get_bytes(n))[1:], np.uint8)


def _codec(name, tag=None):
    class C(Codec):
        slots = (Slot.RAW,)
        qemu_format = False
        description = f"breaks one rule of the plugin contract: {name} (test plugin)"

        def encoder(self, slot, ctx):
            if name == "moody":
                return WholePage(name, self.wire_id, lambda seg, n=next(_MADE): n)
            return WholePage(name, self.wire_id, tag or (lambda seg: 0))

        def decoders(self, ctx):
            return [Strict(name)]

    C.name = name
    return C()


@hookimpl
def register_codecs(register):
    register(_codec("batchy", lambda seg: len(seg)))
    for name in ("moody", "sharer", "eager", "crashy", "lax"):
        register(_codec(name))

"""The plugin's tests: pagecodec's conformance kit (one test per check), with the default table and a
table of 16 entries (collisions on every segment), and what is this codec's own: references."""

import numpy as np

from pagecodec.chain.config import parse_spec
from pagecodec.codecs.base import CodecContext, Segment, Stage
from pagecodec.testing import conformance_tests

from pagecodec_dedup import DedupCodec, DedupDecoder

test_conformance = conformance_tests("dedup", plugin="pagecodec_dedup", configs=("", "xbzrle-cache-size=64K"))


def _encode(pages: np.ndarray, spec: str = "") -> Segment:
    ctx = CodecContext(parse_spec(spec), 4096, (), ())
    seg = Segment(0, 0, np.arange(len(pages)) * 4096, pages)
    DedupCodec().encoder(None, ctx).encode(seg, Stage(0, 1, True, False))
    return seg


def test_a_repeated_page_is_a_reference():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 256, (2, 4096), dtype=np.uint8)
    seg = _encode(np.stack([a, b, a, a]))
    (rs,) = seg.records
    assert rs.lengths.tolist() == [5 + 4096, 5 + 4096, 5, 5]
    assert rs.data[rs.starts].tolist() == [0, 0, 1, 1]


def test_a_one_entry_table_sends_what_it_must():
    """With one entry every page competes for it: only a page equal to the one just sent is a reference."""
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 256, (2, 4096), dtype=np.uint8)
    seg = _encode(np.stack([a, b, b, a]), "xbzrle-cache-size=4K")
    (rs,) = seg.records
    assert rs.data[rs.starts].tolist() == [0, 0, 1, 0]


def test_a_reference_to_an_empty_entry_is_refused_and_the_page_kept():
    from pagecodec.errors import DecodeError
    from pagecodec.wire.reader import StreamReader

    dec = DedupDecoder(8, 4096)
    page = np.full(4096, 7, np.uint8)
    try:
        dec.load(StreamReader(bytes([1, 0, 0, 0, 3])), page)
        raise AssertionError("accepted")
    except DecodeError as e:
        assert "entry 3, which holds no page yet" in str(e)
    assert (page == 7).all()

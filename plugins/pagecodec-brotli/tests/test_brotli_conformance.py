"""The plugin's tests: pagecodec's conformance kit (one test per check), in the raw slot on its own and
behind XBZRLE, and what is this codec's own: incompressible pages go as QEMU PAGE records."""

import numpy as np

from pagecodec.testing import conformance_tests

test_conformance = conformance_tests("brotli", plugin="pagecodec_brotli", configs=("", "xbzrle"))


def test_an_incompressible_page_goes_whole():
    from pagecodec.codecs.base import Segment, Stage

    from pagecodec_brotli import BrotliPageCodec

    pages = np.zeros((2, 4096), np.uint8)
    pages[0] = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)  # random: no smaller in Brotli
    pages[1, ::2] = 7  # compresses well
    seg = Segment(0, 0, np.array([0, 4096]), pages)
    BrotliPageCodec().encoder(None, None).encode(seg, Stage(0, 1, True, False))
    kinds = {rs.kind: rs.index.tolist() for rs in seg.records if len(rs)}
    assert kinds == {"brotli": [1], "page": [0]}

"""Atheris (libFuzzer) harness for the XBZRLE decoder.

Run: ``python tests/fuzz_xbzrle.py -max_total_time=60`` (needs ``pip install atheris``; optional).
Each input is split into a page size choice, a page and a record. Every decoding strategy must either
produce QEMU's result (tests/xbzrle_reference.py) or raise DecodeError with the same reason and
offset, leaving the page untouched; any other exception, or a disagreement, is a crash. Inputs that
decode are also re-encoded: encode(old page, decoded page) must decode back to the same page.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["pagecodec"]):
    from pagecodec.codecs.xbzrle_kernel import decode_batch, decode_page, encode_page
    from pagecodec.errors import DecodeError

import numpy as np  # noqa: E402

import xbzrle_reference as ref  # noqa: E402

PAGE_PATHS = (None, "py")  # the compiled kernel and its source run by the interpreter must agree
BATCH_PATHS = (None, "py")


def _outcome(fn, page: np.ndarray):
    p = page.copy()
    try:
        fn(p)
    except DecodeError as e:
        if not np.array_equal(p, page):
            raise AssertionError("a rejected record changed the page") from e
        return ("error", e.reason, e.offset)
    return ("ok", p.tobytes())


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    ps = fdp.PickValueInList([8, 16, 64, 4096])
    page = np.frombuffer(fdp.ConsumeBytes(min(ps, 64)).ljust(ps, b"\x5a"), np.uint8).copy()
    record = fdp.ConsumeBytes(fdp.remaining_bytes())
    want = ref.decode(record, page.tobytes())
    results = [_outcome(lambda p, path=path: decode_page(record, p, force_path=path), page) for path in PAGE_PATHS]
    results += [
        _outcome(lambda p, path=path: decode_batch(record, [0], [len(record)], p.reshape(1, -1), force_path=path), page)
        for path in BATCH_PATHS
    ]
    if want is None:
        if any(r[0] != "error" for r in results) or len(set(results)) != 1:
            raise AssertionError(f"decoders disagree on a rejected record: {results}")
        return
    if any(r != ("ok", want) for r in results):
        raise AssertionError(f"decoders disagree with QEMU's result: {results}")
    new = np.frombuffer(want, np.uint8)
    enc = encode_page(page, new)
    if enc != ref.encode(page.tobytes(), want):
        raise AssertionError("encoder disagrees with the reference")
    if isinstance(enc, bytes):
        p = page.copy()
        decode_page(enc, p)
        if not np.array_equal(p, new):
            raise AssertionError("encode/decode round trip failed")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

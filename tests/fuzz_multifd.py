"""Atheris (libFuzzer) harness for the multifd channel readers: the capture importer's
(``read_channel`` and the per-channel inflate of every packet) and the destination's
(``MultifdReceiver``: packets applied at each sync point), on any bytes.

Run: ``python tests/fuzz_multifd.py SEEDS -max_total_time=60`` (seeds: ``python tests/fuzz_seeds.py
multifd SEEDS``). The input's first byte picks the compression and the QEMU version (7.2 or 10.2's
packet layout, :data:`fuzz_targets.MULTIFD_SELECT`), the second the channel number; the rest is the
channel file, read against one RAM block pc.ram of 64 pages. It must end in pages or a
PageCodecError; anything else (another exception, a hang, memory past -rss_limit_mb) is a crash.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["pagecodec"]):
    import fuzz_targets
    from pagecodec.errors import PageCodecError

    import pagecodec.sources.qemu_stream  # noqa: F401
    import pagecodec.trace.info  # noqa: F401
    import pagecodec.codecs.multifd  # noqa: F401

TARGET = fuzz_targets.TARGETS["multifd"]


def TestOneInput(data: bytes) -> None:
    try:
        TARGET(data)
    except PageCodecError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

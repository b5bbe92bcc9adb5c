"""Atheris (libFuzzer) harness for the QEVM stream reader: ``trace import-qemu`` on any bytes.

Run: ``python tests/fuzz_stream.py SEEDS -max_total_time=60`` (seeds: ``python tests/fuzz_seeds.py
stream SEEDS``). Each input is written to a file and imported (find_vmdesc, the file header and
configuration, the Receiver's walk of every section and record with QEMU's decoders, the importer's
rounds, the trace written). It must end in a trace or a PageCodecError; anything else (an exception
of another class, a hang, memory past -rss_limit_mb) is a crash. The destination RAM a stream may
claim is bounded (max_ram 256 MiB) so that a claim that passes costs little here as well.
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

TARGET = fuzz_targets.TARGETS["stream"]


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

"""Atheris (libFuzzer) harness for the trace reader: ``TraceReader`` on any bytes.

Run: ``python tests/fuzz_trace.py SEEDS -max_total_time=60`` (seeds: ``python tests/fuzz_seeds.py
trace SEEDS``). Each input is written to a file, opened (Parquet footer, metadata JSON, schema, the
index columns validated) and read to the end (every page batch, round by round), and ``trace info``
is computed from it. It must end in pages or a PageCodecError; anything else (another exception, a
hang, memory past -rss_limit_mb) is a crash.
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

TARGET = fuzz_targets.TARGETS["trace"]


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

"""Atheris (libFuzzer) harness for one of the readers in :data:`fuzz_targets.TARGETS`, on any bytes.

Run: ``python tests/fuzz_reader.py READER SEEDS -max_total_time=60`` where READER is

- ``stream``: ``trace import-qemu`` of the input (find_vmdesc, the file header and configuration,
  the Receiver's walk of every section and record with QEMU's decoders, the importer's rounds, the
  trace written); the destination RAM a stream may claim is bounded (max_ram 256 MiB) so that a
  claim that passes costs little here as well;
- ``trace``: ``TraceReader`` on the input (Parquet footer, metadata JSON, schema, the index columns
  validated), read to the end round by round, and ``trace info`` computed from it;
- ``multifd``: the multifd channel readers, the capture importer's (``read_channel`` and the
  per-channel inflate of every packet) and the destination's (``MultifdReceiver``); the input's
  first byte picks the compression and the QEMU version (:data:`fuzz_targets.MULTIFD_SELECT`), the
  second the channel number, the rest is the channel file, read against one block of 64 pages.

Seeds: ``python tests/fuzz_seeds.py READER SEEDS``. Each input must end in a result or a
PageCodecError; anything else (an exception of another class, a hang, memory past -rss_limit_mb)
is a crash. The arguments after READER are libFuzzer's.
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


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in fuzz_targets.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(fuzz_targets.TARGETS)}}} SEEDS [libFuzzer options]")
    target = fuzz_targets.TARGETS[sys.argv.pop(1)]

    def test_one_input(data: bytes) -> None:
        try:
            target(data)
        except PageCodecError:
            pass

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

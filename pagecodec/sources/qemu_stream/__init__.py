"""QEMU migration stream files as traces: a single QEVM stream (``migrate "exec:cat > FILE"``) or a
multifd capture (the main stream plus one file per channel).

* :mod:`.importer` — :func:`import_qemu_stream`: the Receiver walks the stream, passes become rounds;
* :mod:`.layout` — the RAM layout (MEM_SIZE block list → global page indices);
* :mod:`.main_stream` — the structure of a multifd capture's main stream (from the Receiver's walk);
* :mod:`.channel` — channel files against the layout: packet-number rules, payload inflation;
* :mod:`.multifd` — main stream + channels merged into the single stream QEMU would have sent, and
  :func:`import_multifd`;
* :mod:`.split` — :func:`split_stream`, the reverse: a single stream as a QEMU 7.2 multifd capture.
"""

from __future__ import annotations

from .channel import ChannelFile, read_channel
from .importer import ImportReport, import_qemu_stream
from .main_stream import MainStream, read_main_stream
from .multifd import MultifdImportReport, import_multifd, multifd_command
from .split import split_stream

__all__ = [
    "ImportReport", "import_qemu_stream", "ChannelFile", "read_channel", "MainStream", "read_main_stream",
    "MultifdImportReport", "import_multifd", "multifd_command", "split_stream",
]

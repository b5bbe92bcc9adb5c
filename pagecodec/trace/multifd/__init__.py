"""Multifd captures (QEMU 7.2): record them over TCP, read the channel files, import them as traces.

With the ``multifd`` capability QEMU opens a main connection and N channel connections (socket URIs
only: ``exec:`` cannot carry multifd). The modules, one job each:

* :mod:`.layout` — the RAM layout (MEM_SIZE block list → global page indices);
* :mod:`.channel` — the channel file format: wire constants, packet encoding, the bounds-checked packet
  reader, the payloads (none/zlib/zstd) and the packet-number rules;
* :mod:`.main_stream` — the main stream (``main.mig``): its structure and RAM records;
* :mod:`.merge` — rebuilding the single stream from main stream + channels (syncs, the round rule) and
  :func:`import_multifd`;
* :mod:`.split` — :func:`split_stream`, the reverse: a single stream as a 7.2 multifd capture;
* :mod:`.recorder` — :class:`StreamRecorder`, the loopback TCP recorder / tee proxy;
* :mod:`.capture` — :func:`capture_multifd` over QMP and :func:`listen_multifd_incoming`.
"""

from __future__ import annotations

from .capture import capture_multifd, listen_multifd_incoming, multifd_parameters
from .channel import (
    COMPRESSED_BUFFER,
    COMPRESSION_FLAGS,
    INIT_PACKET_SIZE,
    MULTIFD_FLAG_COMPRESSION_MASK,
    MULTIFD_FLAG_SYNC,
    MULTIFD_MAGIC,
    MULTIFD_PACKET_SIZE,
    MULTIFD_VERSION,
    PACKET_HEADER_SIZE,
    ChannelFile,
    encode_initial_packet,
    encode_packet,
    packet_size,
    packet_slots,
    read_channel,
)
from .main_stream import MainStream, read_main_stream
from .merge import MultifdImportReport, import_multifd, multifd_command
from .recorder import RecordedCapture, StreamRecorder
from .split import split_stream

__all__ = [
    "MULTIFD_MAGIC", "MULTIFD_VERSION", "MULTIFD_FLAG_SYNC", "MULTIFD_PACKET_SIZE", "COMPRESSION_FLAGS",
    "INIT_PACKET_SIZE", "PACKET_HEADER_SIZE", "packet_slots", "encode_initial_packet", "encode_packet",
    "ChannelFile", "MainStream", "read_channel", "read_main_stream", "MultifdImportReport", "import_multifd",
    "split_stream", "StreamRecorder", "RecordedCapture", "listen_multifd_incoming", "capture_multifd",
    "multifd_command",
]

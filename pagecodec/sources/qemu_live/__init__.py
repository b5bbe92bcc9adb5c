"""Traces from a running QEMU over QMP (``pagecodec capture qemu``).

* :mod:`.session` — what every capture shares: the QMP session, the provenance command, the result;
* :mod:`.capture` — :func:`capture_qemu`: migrate to a temporary file, import it;
* :mod:`.multifd` — :func:`capture_multifd`: migrate with multifd channels to a loopback recorder;
  :class:`MultifdPlayer`: play main stream + channel files into a listening destination;
* :mod:`.recorder` — :class:`StreamRecorder`, the loopback TCP recorder / tee proxy;
* :mod:`.timed` — :func:`capture_dirty_log`: a timed dirty log (``--interval``), without migrating.
"""

from __future__ import annotations

from .capture import capture_qemu, import_stream
from .multifd import MultifdPlayer, capture_multifd, listen_multifd_incoming, multifd_parameters
from .recorder import RecordedCapture, StreamRecorder
from .session import CaptureResult, capture_command, open_session
from .timed import DirtyLogCapture, SliceProgress, capture_dirty_log

__all__ = [
    "capture_qemu", "import_stream", "capture_multifd", "listen_multifd_incoming", "multifd_parameters", "MultifdPlayer",
    "StreamRecorder", "RecordedCapture", "CaptureResult", "capture_command", "open_session",
    "capture_dirty_log", "DirtyLogCapture", "SliceProgress",
]

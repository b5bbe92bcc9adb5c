"""The errors of a process capture."""

from __future__ import annotations

from pagecodec.errors import PageCodecError

__all__ = ["CaptureError", "ProcessGoneError"]


class CaptureError(PageCodecError):
    """A process capture failed (no such process, permission, unreadable memory, bad arguments)."""


class ProcessGoneError(CaptureError):
    """The target process exited (or exec'd) while being captured."""


class _Gone(Exception):
    """Internal: the target's memory or /proc entries vanished."""
